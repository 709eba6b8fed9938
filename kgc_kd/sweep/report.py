"""What a sweep leaves in `<run.root>/sweeps/<study>/`: trials.json, trials.md and trials.csv (every trial:
parameters, each stage's validation and test MRR, state, seconds, its W&B runs; ranked by the sweep's metric,
which is validation only; trials.csv and the W&B table one typed column per figure, `flat_table`), best.yaml
(the best trial's resolved config, which `python -m kgc_kd.fit config=best.yaml` runs), the plots (optimisation
history, parameter importances; the Pareto front of a multi-objective study) and the W&B table run of the
study's group."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from kgc_kd.config import load_config
from kgc_kd.runtime.files import replace_atomically, write_json_atomic, write_text_atomic
from kgc_kd.sweep.space import SweepSpace
from kgc_kd.sweep.study import metric_names, retried_numbers


WANDB_ATTRS = ("wandb_project", "wandb_group", "wandb_runs", "wandb_report_run")  # a trial's W&B runs (trial.py)
STAGE_FIGURES = ("val_mrr", "test_mrr", "params_total")  # a stage's figures in the flat table, one column each


def trial_record(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A trial as trials.json holds it; `values` only for a complete trial (Optuna gives a pruned one its last
    reported grade's value, which is not the sweep's metric)."""
    pruned = t.state == TrialState.PRUNED and t.intermediate_values
    return {"number": t.number, "state": t.state.name.lower(), "params": t.params,
            "values": t.values if t.state == TrialState.COMPLETE else None, "stages": t.user_attrs.get("stages", []),
            "seconds": t.user_attrs.get("seconds"), "pruned_at": max(t.intermediate_values) if pruned else None,
            "retry_of": t.system_attrs.get("failed_trial"), "run_dir": t.user_attrs.get("run_dir"),
            "items": t.user_attrs.get("items", []),
            **{k: t.user_attrs[k] for k in WANDB_ATTRS if k in t.user_attrs}}


def best_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The best trial (one metric) or the Pareto front (several), by the validation metrics."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return []
    return study.best_trials if len(study.directions) > 1 else [study.best_trial]


def ranked(study: optuna.Study) -> list[dict[str, Any]]:
    """Complete trials by the first metric (its goal), then pruned ones (latest grade first), then failed; a
    failed trial that was retried is left out (its retry is in the list)."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: sign * t.values[0])
    pruned = sorted((t for t in trials if t.state == TrialState.PRUNED),
                    key=lambda t: (-max(t.intermediate_values or [0]), -(list(t.intermediate_values.values()) or [0])[-1]))
    failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
    front = {t.number for t in best_trials(study)}
    return [{**trial_record(t), "best": t.number in front} for t in complete + pruned + failed]


def grade_medians(records: list[dict[str, Any]]) -> dict[str, float]:
    """The median validation MRR per stage over the trials that reached it: what the median pruner compares with."""
    by: dict[str, list[float]] = {}
    for r in records:
        for s in r["stages"]:
            if s.get("val_mrr") is not None:
                by.setdefault(s["name"], []).append(float(s["val_mrr"]))
    out = {}
    for name, v in by.items():
        v = sorted(v)
        out[name] = v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
    return out


def _f(x: Any) -> str:
    return "" if x is None else (f"{x:.4f}" if isinstance(x, float) and not math.isnan(x) else str(x))


def trials_table(space: SweepSpace, records: list[dict[str, Any]], stage_names: list[str]) -> str:
    params = list(space.distributions)
    metrics = [m.name for m in space.metrics]
    head = (["rank", "trial", "state", *params, *metrics, *(f"{s} val" for s in stage_names),
             f"{stage_names[-1]} test", "s", "run"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(records, 1):
        st = {s["name"]: s for s in r["stages"]}
        state = r["state"] + (" (best)" if r.get("best") else "") + \
            (f" at {stage_names[r['pruned_at']]}" if r["pruned_at"] is not None else "") + \
            (f", retry of {r['retry_of']}" if r["retry_of"] is not None else "")
        vals = r["values"] or [None] * len(metrics)
        cells = [str(i), str(r["number"]), state, *(_f(r["params"].get(p)) for p in params), *map(_f, vals),
                 *(_f(st.get(s, {}).get("val_mrr")) for s in stage_names), _f(st.get(stage_names[-1], {}).get("test_mrr")),
                 "" if r["seconds"] is None else f"{r['seconds']:.0f}", str(r["run_dir"] or "")]
        lines.append("| " + " | ".join(cells) + " |")
    med = grade_medians(records)
    lines += ["", "Median validation MRR per grade over the trials that reached it (the median pruner stops a "
              "trial below the median of the trials before it at the same grade): " +
              ", ".join(f"{s} {med[s]:.4f}" for s in stage_names if s in med) + ".",
              "", "Selection is on validation metrics only; test MRR is reported, never searched on."]
    return "\n".join(lines)


def flat_table(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The trials as one row each with typed columns, for trials.csv and the W&B trials table: `rank`, `trial`
    (int), `state` (complete | pruned | fail), `best`, `pruned_at` (the stage), `retry_of`, one column per
    parameter, `value/<metric>` per metric (a complete trial's), `<stage>/<figure>` per stage and figure
    (val_mrr, test_mrr, params_total: numbers, empty where the trial did not reach the stage), `seconds`,
    `run_dir`, its W&B group and report run, and `<stage>/wandb_run` (the id of the run that trained the stage)."""
    stage_names = summary["stage_names"]
    metrics = [m["name"] for m in summary["metrics"]]
    params = list(dict.fromkeys(k for t in summary["trials"] for k in t["params"]))
    columns = ["rank", "trial", "state", "best", "pruned_at", "retry_of", *params, *(f"value/{m}" for m in metrics),
               *(f"{s}/{f}" for s in stage_names for f in STAGE_FIGURES), "seconds", "run_dir", "wandb_group",
               "wandb_report_run", *(f"{s}/wandb_run" for s in stage_names)]
    rows = []
    for rank, t in enumerate(summary["trials"], 1):
        st = {s["name"]: s for s in t["stages"]}
        values = t["values"] or [None] * len(metrics)
        rows.append([rank, t["number"], t["state"], bool(t.get("best")),
                     None if t["pruned_at"] is None else stage_names[t["pruned_at"]], t["retry_of"],
                     *(t["params"].get(p) for p in params), *values,
                     *(st.get(s, {}).get(f) for s in stage_names for f in STAGE_FIGURES), t["seconds"],
                     t["run_dir"], t.get("wandb_group"), t.get("wandb_report_run"),
                     *((t.get("wandb_runs") or {}).get(s) for s in stage_names)])
    return columns, rows


def trials_csv(summary: dict[str, Any]) -> str:
    import csv
    import io

    columns, rows = flat_table(summary)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buf.getvalue()


def best_yaml(trial: dict[str, Any]) -> str:
    """The best trial's resolved config (as `fit --print-config` prints it), without the trial's run name."""
    from omegaconf import OmegaConf

    cfg = load_config(trial["items"])
    return OmegaConf.to_yaml(cfg, resolve=True)


def plots(study: optuna.Study, out: Path) -> dict[str, str]:
    """PNG plots; a plot Optuna cannot draw yet (too few trials) is named with the reason instead."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    names = list(metric_names(study) or [])
    multi = len(study.directions) > 1
    first = names[0] if names else "value"
    # several metrics: history and importances of the first; PED-ANOVA ranks parameters for low targets
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    wanted = {"history.png": lambda: vis.plot_optimization_history(
                  study, target=(lambda t: t.values[0]) if multi else None, target_name=first),
              "importances.png": lambda: vis.plot_param_importances(
                  study, target=(lambda t: sign * t.values[0]) if multi else None, target_name=first)}
    if len(study.directions) > 1:
        wanted["pareto.png"] = lambda: vis.plot_pareto_front(study, target_names=names)
    notes = {}
    for file, draw in wanted.items():
        try:
            ax = draw()
            fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
            replace_atomically(out / file, lambda f: fig.savefig(f, dpi=110, bbox_inches="tight", format="png"))
            plt.close(fig)
            notes[file] = "written"
        except Exception as err:  # noqa: BLE001 - e.g. importances need two complete trials
            notes[file] = f"not drawn: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return notes


def write_outputs(study: optuna.Study, space: SweepSpace, out: Path, stage_names: list[str]) -> dict[str, Any]:
    records = ranked(study)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"study": study.study_name, "metrics": [m.__dict__ for m in space.metrics], "method": space.method,
               "stage_names": list(stage_names),
               "counts": {s: sum(r["state"] == s for r in records) for s in ("complete", "pruned", "fail")},
               "grade_medians": grade_medians(records), "trials": records}
    best = [r for r in records if r.get("best")]
    if best:
        write_text_atomic(out / "best.yaml", best_yaml(best[0]))
        summary["best"] = {"number": best[0]["number"], "params": best[0]["params"], "values": best[0]["values"],
                           "config": str(out / "best.yaml")}
    summary["plots"] = plots(study, out)
    write_json_atomic(out / "trials.json", summary)
    write_text_atomic(out / "trials.csv", trials_csv(summary))
    table = trials_table(space, records, stage_names)
    write_text_atomic(out / "trials.md", f"# Sweep {study.study_name}\n\n{table}\n")
    return summary
