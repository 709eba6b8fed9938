"""The report run of a chain in W&B; under `wandb agent` it is the agent's run, which the sweep reads its metric from.

The run opens when the chain starts (`open_report`), gets one history step per finished stage (`log_stage`:
step = the stage's index, teacher 0; `<stage>/val_mrr`, `<stage>/test_mrr`, `<stage>/params_total`, the same
figures as `stage/...` with `stage/index`, so one line chart spans the chain, and as `last/...`; a sweep's grade
metric is in the history as soon as the grade is done), and ends with the stage table (numeric columns besides the stage's name),
an interactive scatter of test MRR against parameters, the static plot and every stage's figures in the summary
(`finish_report`). It is created with `reinit="create_new"`: the stage runs (chain/tracking.py) open and finish
beside it, and it never becomes wandb's global run.

`wandb agent` starts `python -m kgc_kd.fit ...` with its sweep's run id, sweep id and parameter file in the
environment. A chain writes one run per stage: those must not take the agent's id (each would resume the same
run) nor see the sweep (wandb would ignore their project), so `detach_agent` sets the agent's variables aside
before wandb reads them, and the report run alone gets them back: the agent's id and sweep, the agent's project
and entity (`WANDB_PROJECT`, `WANDB_ENTITY` win over `run.wandb_project`/`run.wandb_entity`), and in its config
every sweep parameter under its flat key (`distill.alpha`) with the agent's value, read from the agent's
parameter file (wandb merges that file into a run's config only from its global settings, which the detach
removes), besides the nested config. W&B's engines (bayes, hyperband) read exactly those keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kgc_kd.chain.tracking import init_kwargs

if TYPE_CHECKING:
    from kgc_kd.chain.plan import RunPlan


AGENT_ENV = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH")
_agent: dict[str, str] = {}
_run: Any = None  # the open report run
_run_id: str | None = None  # the open report run's id, or the last one's once it finished
_destination: dict[str, str] = {}  # under `wandb agent`: the agent's project/entity, for the stage runs too


def detach_agent() -> None:
    for k in AGENT_ENV:
        if k in os.environ:
            _agent[k] = os.environ.pop(k)


def under_agent() -> bool:
    return "WANDB_SWEEP_ID" in _agent or "WANDB_SWEEP_ID" in os.environ


def current_run_id() -> str | None:
    """The report run's W&B id: the open one's, or after it finished the last one's (a sweep trial records it)."""
    return _run_id


def agent_destination() -> dict[str, str]:
    """Under `wandb agent`, the agent's project and entity (`WANDB_PROJECT`, `WANDB_ENTITY`, as set) for every run of
    the chain (the stage runs beside the agent's); {} otherwise. Known once the report run is open."""
    return dict(_destination)


def is_open() -> bool:
    return _run is not None


def sweep_parameters(path: str | Path) -> dict[str, Any]:
    """The agent's parameter file (wandb's config-file format: `wandb_version: 1`, then `key: {value: v}` per
    parameter) as {flat key: value}."""
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise RuntimeError(f"WANDB_SWEEP_PARAM_PATH={path}: cannot read the agent's parameter file ({err})") from None
    loaded.pop("wandb_version", None)
    bad = [k for k, v in loaded.items() if not isinstance(v, dict) or "value" not in v]
    if bad:
        raise RuntimeError(f"WANDB_SWEEP_PARAM_PATH={path}: parameter {bad[0]!r} has no 'value'")
    return {str(k): v["value"] for k, v in loaded.items()}


def _agent_kwargs(kw: dict) -> dict:
    """`wandb.init`'s arguments as the agent's run: its id, sweep, project, entity and parameters."""
    import wandb

    _destination.clear()
    _destination.update({k: v for k, v in (("project", os.environ.get("WANDB_PROJECT")),
                                            ("entity", os.environ.get("WANDB_ENTITY"))) if v})
    kw.update(_destination)
    kw["id"] = _agent.get("WANDB_RUN_ID")
    path = _agent.get("WANDB_SWEEP_PARAM_PATH")
    kw["settings"] = wandb.Settings(sweep_id=_agent.get("WANDB_SWEEP_ID"), sweep_param_path=path)
    if path:
        kw["config"] = {**kw["config"], **sweep_parameters(path)}
    return kw


def open_report(plan: RunPlan) -> None:
    """Start the chain's report run (under `wandb agent`: the agent's run)."""
    global _run, _run_id
    import wandb

    kw = init_kwargs(plan, "report", "report", {})
    kw["reinit"] = "create_new"
    _destination.clear()
    if _agent:
        kw = _agent_kwargs(kw)
        _agent.clear()  # one chain, one agent run
    _run = wandb.init(**kw)
    _run_id = _run.id
    _run.define_metric("stage/index")
    _run.define_metric("stage/*", step_metric="stage/index")


def stage_figures(index: int, row: dict) -> dict[str, float | int]:
    """A finished stage's step of the report run: its figures under its name, under `stage/` (one series over
    the chain, with `stage/index`) and under `last/` (the chain's last finished stage so far: a sweep whose
    metric is `last/val_mrr` has a value per grade in the history, so hyperband can stop between grades, and
    the last stage's in the summary)."""
    figs = {"val_mrr": row.get("best_val_mrr"), "test_mrr": (row.get("test") or {}).get("mrr"),
            "params_total": row.get("params_total")}
    figs = {k: v for k, v in figs.items() if v is not None}
    return {f"{prefix}/{k}": v for prefix in (row["name"], "stage", "last") for k, v in figs.items()} | \
        {"stage/index": index}


def log_stage(index: int, row: dict | None) -> None:
    """Stage `index` (0: the teacher) is done: its figures are the report run's step `index`."""
    if row is None or _run is None:
        return
    _run.log(stage_figures(index, row), step=index)


def summary_figures(rows: list[dict]) -> dict[str, float]:
    """`<stage>/val_mrr`, `<stage>/test_mrr` and sizes of every stage, and the same as `last/...` for the last: the
    keys a sweep file's metric names."""
    out: dict[str, float] = {}
    for i, r in enumerate(rows):
        figs = {"val_mrr": r.get("best_val_mrr"), "test_mrr": r["test"]["mrr"], "params_total": r.get("params_total"),
                "params_no_embeddings": r.get("params_no_embeddings"), "queries_per_s": r.get("queries_per_s"),
                "entities_per_s": r.get("entities_per_s")}
        for prefix in [r["name"]] + (["last"] if i == len(rows) - 1 else []):
            out.update({f"{prefix}/{k}": v for k, v in figs.items() if v is not None})
    return out


TABLE_COLUMNS = ["stage", "index", "layers", "params_total", "params_no_embeddings", "vocab_size", "best_val_mrr",
                 "test_mrr", "test_mr", "test_hits@1", "test_hits@3", "test_hits@10", "queries_per_s",
                 "entities_per_s", "fit_time_s"]


def _number(v: Any) -> float | int | None:
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def stage_table_rows(rows: list[dict]) -> list[list]:
    """The stage table: the stage's name, then numbers only (None where a stage has no such figure)."""
    out = []
    for i, r in enumerate(rows):
        t = r.get("test") or {}
        out.append([r["name"]] + [_number(v) for v in (
            i, r.get("layers"), r.get("params_total"), r.get("params_no_embeddings"), r.get("vocab_size"),
            r.get("best_val_mrr"), t.get("mrr"), t.get("mr"), t.get("hits@1"), t.get("hits@3"), t.get("hits@10"),
            r.get("queries_per_s"), r.get("entities_per_s"), r.get("fit_time_s"))])
    return out


def finish_report(plan: RunPlan, rows: list[dict], outcome: str | None = None) -> None:
    """End the report run: the stage table, the scatter of test MRR against parameters, the static plot and
    every stage's figures in the summary. `outcome` (a chain stopped before its end: `pruned`, `stopped`,
    `failed`): a tag and the summary's `outcome`; a run that failed or was stopped exits non-zero."""
    global _run
    if _run is None:
        return
    import wandb

    run = _run
    try:
        if rows:
            table = wandb.Table(columns=TABLE_COLUMNS, data=stage_table_rows(rows))
            payload = {"report/stages": table,
                       "report/test_mrr_vs_params": wandb.plot.scatter(table, "params_total", "test_mrr",
                                                                       title="test MRR against parameters")}
            png = plan.run_dir / "report.png"
            if outcome is None and png.is_file():
                payload["report/mrr_vs_params"] = wandb.Image(str(png))
            run.log(payload)
            run.summary.update(summary_figures(rows))
        if outcome is not None:
            run.summary["outcome"] = outcome
            run.tags = tuple(run.tags or ()) + (outcome,)
    finally:
        _run = None
        run.finish(exit_code=1 if outcome not in (None, "pruned") else 0)

