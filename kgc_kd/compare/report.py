"""compare.json, compare.md and compare.png of a comparison, and its W&B run.

Files are written atomically (runtime/files.py's helpers): a reader sees the previous comparison or this
one, never a part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from kgc_kd.compare.aggregate import BASELINE, beats_baseline
from kgc_kd.runtime.files import replace_atomically, write_json_atomic, write_text_atomic


def _pm(mean: float, std: Optional[float], fmt: str = "{:.4f}") -> str:
    return fmt.format(mean) + (f" ± {std:.4f}" if std is not None else " ± -")


def _same(flag: Optional[bool]) -> str:
    """The teacher check runs once every chain is done: an interrupted comparison has not made it yet."""
    return "checked when every chain is done" if flag is None else ("yes" if flag else "NO")


def verdict_lines(comparison: dict[str, Any]) -> list[str]:
    """For every objective other than `none`: the grades where it beats `none` by more than the seed spread."""
    if BASELINE not in comparison["objectives"]:
        return []
    lines: list[str] = []
    for obj in comparison["objectives"]:
        if obj != BASELINE:
            lines += _verdict(comparison, obj)
    return lines


def _verdict(comparison: dict[str, Any], obj: str) -> list[str]:
    beats = beats_baseline(comparison["grades"], obj)
    yes = [g for g, b in beats.items() if b is True]
    no = [g for g, b in beats.items() if b is False]
    unknown = [g for g, b in beats.items() if b is None]

    def cell(g: str) -> str:
        d = comparison["grades"][g][obj]["vs_none"]
        return f"{g} ({d['mean']:+.4f} vs spread {d['seed_spread']:.4f})"

    lines = [f"`{obj}` beats `{BASELINE}` by more than the seed spread (mean paired test MRR gain > the larger of the "
             f"two seed stds) at: {', '.join(cell(g) for g in yes) or 'no grade'}."]
    val_yes = [g for g, by in comparison["grades"].items() if ((by.get(obj) or {}).get("val_vs_none") or {}).get("beyond_spread")]
    if any("val_vs_none" in (by.get(obj) or {}) for by in comparison["grades"].values()):
        lines.append(f"On validation (what a choice may use), beyond the spread at: {', '.join(val_yes) or 'no grade'}.")
    if no:
        lines.append(f"Not beyond the spread at: {', '.join(cell(g) for g in no)}.")
    if unknown:
        lines.append(f"Cannot tell (a single seed, no spread) at: {', '.join(unknown)}.")
    return lines


def format_markdown(comparison: dict[str, Any]) -> str:
    t = comparison["teacher"]
    lines = [f"# Comparison `{comparison['name']}`", "", f"{comparison['date']}: `{comparison['command']}`", ""]
    if comparison.get("complete") is False:
        lines += [f"**In progress: {comparison['chains_done']} of {comparison['chains_planned']} chains done** "
                  "(rerun the same command to continue; finished chains are read, not retrained).", ""]
    t_test = t.get("test") or {}
    how = (f"trained once for this comparison ({t['run_dir']}, {t.get('trained_steps')} steps, seed {t.get('seed')})"
           if t.get("run_dir") else "given with --teacher")
    lines.append(f"Teacher: `{t['export']}`, {how}; test MRR {t_test.get('mrr', float('nan')):.4f}, "
                 f"H@1 {t_test.get('hits@1', float('nan')):.4f}, H@10 {t_test.get('hits@10', float('nan')):.4f}; "
                 f"loaded unchanged by every chain: {_same(t.get('same_in_every_chain'))}.")
    lines.append(f"Seeds: {', '.join(map(str, comparison['seeds']))} (students only: data order, dropout, masks, "
                 "new projections). Mean ± sample std (n - 1) over seeds; ± - where n = 1. Test split, filtered, "
                 "realistic ranks, mean of head and tail prediction. Paired difference: the objective's MRR minus "
                 f"`{BASELINE}`'s with the same seed; wins = seeds where it is positive.")
    for label, v in (comparison.get("variants") or {}).items():
        lines.append(f"Variant `{label}`: `distill={v['preset']}` " + " ".join(f"`{i}`" for i in v["items"]) + ".")
    for grade, by_obj in comparison["grades"].items():
        lines += ["", f"## {grade}", "", "| objective | val MRR | val - none (paired) | test MRR | n | H@1 | H@10 | "
                  "MRR - none (paired) | wins / n |", "|---|---|---|---|---|---|---|---|---|"]
        for obj, s in by_obj.items():
            d, dv = s.get("vs_none"), s.get("val_vs_none")
            diff = _pm(d["mean"], d["std"], "{:+.4f}") if d else ""
            vdiff = _pm(dv["mean"], dv["std"], "{:+.4f}") if dv else ""
            wins = f"{d['positive']}/{d['n']}" if d else ""
            val = _pm(s["val_mrr_mean"], s["val_mrr_std"]) if "val_mrr_mean" in s else ""
            lines.append(f"| {obj} | {val} | {vdiff} | {_pm(s['mrr_mean'], s['mrr_std'])} | {s['n']} | "
                         f"{_pm(s['hits@1_mean'], s['hits@1_std'])} | {_pm(s['hits@10_mean'], s['hits@10_std'])} | "
                         f"{diff} | {wins} |")
    verdict = verdict_lines(comparison)
    if verdict:
        lines += [""] + verdict
    lines += ["", "Runs (each a `python -m kgc_kd.fit` run directory, resumable):", ""]
    for c in comparison["chains"]:
        lines.append(f"- {c['objective']}, seed {c['seed']}: {c['run_dir']} ({c['status']}, {c['seconds']} s)")
    return "\n".join(lines)


def plot(path: Path, comparison: dict[str, Any]) -> None:
    """Test MRR per grade: each objective's mean with a std error bar, and its seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grades = list(comparison["grades"])
    objectives = comparison["objectives"]
    width = 0.6 / max(len(objectives), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(grades) + 2), 4))
    for j, obj in enumerate(objectives):
        if any(obj not in comparison["grades"][g] for g in grades):
            continue  # no chain of this objective has finished yet (a comparison in progress)
        xs = [i - 0.3 + width * (j + 0.5) for i in range(len(grades))]
        means = [comparison["grades"][g][obj]["mrr_mean"] for g in grades]
        stds = [comparison["grades"][g][obj]["mrr_std"] or 0.0 for g in grades]
        bars = ax.errorbar(xs, means, yerr=stds, fmt="o", capsize=4, label=obj)
        for x, g in zip(xs, grades):
            seeds = comparison["grades"][g][obj]["per_seed"]["mrr"]
            ax.scatter([x] * len(seeds), seeds, s=10, alpha=0.4, color=bars.lines[0].get_color())
    t_mrr = (comparison["teacher"].get("test") or {}).get("mrr")
    if t_mrr is not None:
        ax.axhline(t_mrr, color="gray", linestyle="--", linewidth=1, label="teacher")
    ax.set_xticks(range(len(grades)), grades)
    ax.set_ylabel("test MRR (filtered)")
    ax.set_title(f"{comparison['name']}\ntest MRR, mean ± std over {len(comparison['seeds'])} seeds", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    replace_atomically(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)


def write(out_dir: Path, comparison: dict[str, Any]) -> str:
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "compare.json", comparison)
    text = format_markdown(comparison)
    write_text_atomic(out_dir / "compare.md", text + "\n")
    plot(out_dir / "compare.png", comparison)
    return text


def log_wandb(cfg, out_dir: Path, comparison: dict[str, Any]) -> None:
    """A final W&B run in the comparison's group: the table (one row per grade and objective) and the plot."""
    import wandb

    from kgc_kd.chain.tracking import wandb_mode

    name = comparison["name"]
    run = wandb.init(project=cfg.run.wandb_project, entity=cfg.run.wandb_entity, group=name, name=f"{name}/compare",
                     job_type="compare", dir=str(out_dir), mode=wandb_mode(), reinit="finish_previous",
                     config={k: comparison.get(k) for k in ("objectives", "variants", "seeds", "overrides", "command")})
    cols = ["grade", "objective", "n", "mrr_mean", "mrr_std", "hits@1_mean", "hits@1_std", "hits@10_mean",
            "hits@10_std", "mrr_vs_none_mean", "mrr_vs_none_std", "wins_vs_none"]
    table = wandb.Table(columns=cols)
    for grade, by_obj in comparison["grades"].items():
        for obj, s in by_obj.items():
            d = s.get("vs_none") or {}
            table.add_data(grade, obj, s["n"], s["mrr_mean"], s["mrr_std"], s["hits@1_mean"], s["hits@1_std"],
                           s["hits@10_mean"], s["hits@10_std"], d.get("mean"), d.get("std"), d.get("positive"))
    payload = {"compare/table": table}
    png = out_dir / "compare.png"
    if png.is_file():
        payload["compare/mrr"] = wandb.Image(str(png))
    run.log(payload)
    run.summary.update({f"{g}/{o}/mrr_mean": s["mrr_mean"] for g, by in comparison["grades"].items()
                        for o, s in by.items()})
    run.finish()
