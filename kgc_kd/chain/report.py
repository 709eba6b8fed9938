"""What a run leaves behind for people: metrics.json, per-query predictions, a printed summary.

Every file is written to a temporary name and renamed into place (`kgc_kd.runtime.files`), so an interrupted
run never leaves a half-written report that a later tool would trust.
"""

from __future__ import annotations

import json
from pathlib import Path

from kgc_kd.runtime.files import replace_atomically, write_json_atomic, write_text_atomic


def write_predictions(path: Path, kg, evaluation: dict) -> None:
    """One JSON line per test query: the query, gold, its realistic rank and the filtered top-k."""
    triples = evaluation["triples"].tolist()
    out = evaluation["output"]
    ranks = out.ranks
    lines = []
    for i, (h, r, t) in enumerate(triples):
        row = {
            "head": kg.entity_ids[h], "relation": kg.relation_text(r), "tail": kg.entity_ids[t],
            "direction": "head" if r >= kg.num_relations else "tail",
            "rank": float(ranks.realistic[i]), "rank_optimistic": float(ranks.optimistic[i]),
            "rank_pessimistic": float(ranks.pessimistic[i]),
        }
        if out.topk_ids is not None:
            # slots past the candidates left after filtering come back as id -1: not an entity
            row["topk"] = [[kg.entity_ids[e], round(float(s), 5)]
                           for e, s in zip(out.topk_ids[i].tolist(), out.topk_scores[i].tolist()) if e >= 0]
        lines.append(json.dumps(row))
    write_text_atomic(path, "\n".join(lines) + "\n")


METRICS = (("mrr", "MRR", "{:.4f}"), ("mr", "MR", "{:.1f}"), ("hits@1", "H@1", "{:.4f}"), ("hits@3", "H@3", "{:.4f}"),
           ("hits@10", "H@10", "{:.4f}"))


def _pct(value: float | None, ref: float | None) -> str:
    if value is None or not ref:
        return ""
    return f" ({100.0 * (value - ref) / ref:+.1f}%)"


def describe_terms(row: dict) -> str:
    """A stage's objective as its row records it: `0.8*ce + 0.1*score(loss=mse, temperature=1.0) + ...`."""
    parts = []
    for t in row.get("terms") or []:
        params = ", ".join(f"{k}={v}" for k, v in (t.get("params") or {}).items())
        parts.append(f"{t.get('weight', 1.0):g}*{t['name']}" + (f"({params})" if params else ""))
    return " + ".join(parts) or "not recorded"


def describe_negatives(row: dict) -> str:
    """The negatives a stage trained with, as its row records them (`negatives`, `world_size`)."""
    n = row.get("negatives")
    if not n:
        return "negatives not recorded"
    world = row.get("world_size") or 1
    parts = ["in-batch" + (f" (global batch over {world} processes)" if world > 1 else "")]
    if n.get("pre_batch"):
        parts.append(f"pre-batch x{n['pre_batch']} (weight {n.get('pre_batch_weight')})")
    if n.get("self_negative"):
        parts.append("self")
    return "negatives " + " + ".join(parts)


def describe_test_split(rows: list[dict]) -> str:
    """The test split every row's metrics are on (`test_data`, recorded by the chain's store), and the stages
    reused from a run on another test split and evaluated again on this one; "" where rows do not record it."""
    splits = {(r["test_data"]["sha256"], r["test_data"]["triples"]) for r in rows if r.get("test_data")}
    if not splits:
        return ""
    text = "; ".join(f"{n:,} triples, sha256 {digest[:12]}" for digest, n in sorted(splits))
    again = [r["name"] for r in rows if "retested_from" in r]
    return (f"Every row's test split: {text}" + (" (rows on different test splits!)" if len(splits) > 1 else "")
            + (f"; evaluated again on it, not trained (reused from a run on another test split): {', '.join(again)}"
               if again else ""))


def report_rows(result: dict) -> list[dict]:
    """Stage rows with the % change of every number against the teacher (the first row)."""
    rows = result["stages"]
    if not rows:
        return []
    ref = rows[0]
    out = []
    for r in rows:
        row = {k: v for k, v in r.items() if k not in ("test",)}
        row.update({f"test/{k}": v for k, v in r["test"].items()})
        for key in ("params_total", "params_no_embeddings", "queries_per_s", "entities_per_s", "best_val_mrr"):
            if r.get(key) is not None and ref.get(key):
                row[f"{key}_change_pct"] = round(100.0 * (r[key] - ref[key]) / ref[key], 2)
        for key in r["test"]:
            if ref["test"].get(key):
                row[f"test/{key}_change_pct"] = round(100.0 * (r["test"][key] - ref["test"][key]) / ref["test"][key], 2)
        out.append(row)
    return out


def format_report(result: dict) -> str:
    """Markdown: one row per stage, each number with its change against the teacher."""
    rows = result["stages"]
    lines = [f"run: {result['run_dir']}", f"data: {result['data']}", ""]
    checks = result.get("data_checks")
    if checks:  # what loading changed in the data (see the warnings of the run)
        lines[-1:] = [f"data checks: {', '.join(f'{k} {v:,}' for k, v in checks.items())}", ""]
    head = ["stage", "layers", "params (total / w/o emb.)", "val MRR"] + [m[1] for m in METRICS] + ["queries/s",
                                                                                                   "entities/s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ut = result.get("untrained_test")
    if ut:
        cells = ["untrained PLM", "", "", ""] + [fmt.format(ut[k]) for k, _, fmt in METRICS] + ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    ref = rows[0] if rows else None
    for r in rows:
        t = r["test"]
        cells = [
            r["name"], str(r.get("layers", "")),
            f"{r['params_total'] / 1e6:.1f}M / {r['params_no_embeddings'] / 1e6:.1f}M"
            + _pct(r["params_total"], ref["params_total"]),
            "-" if r.get("best_val_mrr") is None else f"{r['best_val_mrr']:.4f}",
        ]
        cells += [fmt.format(t[k]) + _pct(t[k], ref["test"].get(k)) for k, _, fmt in METRICS]
        for key in ("queries_per_s", "entities_per_s"):
            cells.append("-" if r.get(key) is None else f"{r[key]:.0f}" + _pct(r[key], ref.get(key)))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Test split, filtered ranking over all entities, realistic ranks, mean of head and tail prediction; "
                 "(+x%) = change against the teacher; throughput measured on "
                 f"{rows[0].get('latency_device', '?') if rows else '?'} at the end of each stage.")
    split = describe_test_split(rows)
    if split:
        lines.append(split)
    for r in rows:
        if r["kind"] == "student":
            lines.append(f"- {r['name']}: {r['layers']} layers from the {r['teacher_layers']}-layer previous stage, "
                         f"init {r['init']}, layer map {r['layer_map']}, input mask rate "
                         f"{r['mask_rate'] if r.get('masks_inputs', True) else 'unused'}, loss {describe_terms(r)}; "
                         f"{describe_negatives(r)}; {r.get('steps')} steps in {r.get('fit_time_s')} s")
        elif r.get("loaded_from"):
            lines.append(f"- {r['name']}: loaded from {r['loaded_from']} (not trained in this run)")
        else:
            lines.append(f"- {r['name']}: {r.get('plm')}, {describe_negatives(r)}; {r.get('steps')} steps in "
                         f"{r.get('fit_time_s')} s")
    lines.append(f"\nwall time of this invocation: {result['wall_time_s']} s "
                 f"(setup {result.get('setup_s', '?')} s, untrained baseline {result.get('untrained_eval_s') or 0} s); "
                 f"peak resident memory {result.get('peak_rss_mib', '?')} MiB")
    if result.get("precision"):
        matmul = result.get("float32_matmul_precision")
        lines.append(f"precision: {result['precision']} ({result.get('precision_reason', '')})"
                     + (f"; float32 matmul precision {matmul} (TF32)" if matmul else ""))
    timed = [r for r in rows if r.get("phases_s")]
    if timed:
        names = ["data", "train", "eval", "latency", "export"]
        lines += ["", "| stage | " + " | ".join(f"{n} (s)" for n in names) + " |", "|" + "---|" * (len(names) + 1)]
        for r in timed:
            lines.append(f"| {r['name']} | " + " | ".join(str(r['phases_s'].get(n, '-')) for n in names) + " |")
    if result.get("deployment"):  # added by the serving benchmark (python -m kgc_kd.serve_bench)
        from kgc_kd.serve.deployment import format_deployment

        lines += ["", format_deployment(result["deployment"]),
                  "", "Measured by `python -m kgc_kd.serve_bench`: the table of every stage x variant is serve.md."]
    return "\n".join(lines)


def plot_report(path: Path, result: dict) -> None:
    """MRR against parameters: the compression trade-off at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["stages"]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["params_total"] / 1e6 for r in rows]
    ys = [r["test"]["mrr"] for r in rows]
    ax.plot(xs, ys, "o-", color="tab:blue")
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(f"{r['name']} ({r.get('layers')}L)", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("parameters (millions, both encoders)")
    ax.set_ylabel("test MRR (filtered)")
    ax.set_title(f"MRR vs size: {result['data'].split(':')[0]}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    replace_atomically(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)


def write_report(run_dir: Path, result: dict) -> str:
    run_dir = Path(run_dir)
    full = {**result, "rows": report_rows(result)}
    write_json_atomic(run_dir / "report.json", full)
    write_json_atomic(run_dir / "metrics.json", full)
    text = format_report(result)
    write_text_atomic(run_dir / "report.md", text + "\n")
    write_text_atomic(run_dir / "summary.txt", text + "\n")
    if result["stages"]:
        plot_report(run_dir / "report.png", result)
    return text


def add_deployment(run_dir: Path, deployment: dict) -> str:
    """The run's report (report.md/json, metrics.json, summary.txt) written again with the serving benchmark's
    deployment answer (`kgc_kd.serve.deployment`). The chain writing its report again drops it: the stages it
    measured may have changed."""
    run_dir = Path(run_dir)
    result = json.loads((run_dir / "report.json").read_text())
    result.pop("rows", None)  # derived: write_report computes it again
    result["deployment"] = deployment
    return write_report(run_dir, result)
