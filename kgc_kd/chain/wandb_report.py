"""The report run of a chain in W&B (the stage table, MRR against parameters, every stage's figures in the summary);
under `wandb agent` it is the agent's run, which the sweep reads its metric from."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from kgc_kd.chain.tracking import init_kwargs, wandb_mode

if TYPE_CHECKING:
    from kgc_kd.chain.plan import RunPlan


# `wandb agent` starts `python -m kgc_kd.fit ...` with the sweep's run id in the environment and reads the
# sweep's metric from that one run. A chain writes one run per stage: those must not take the agent's id
# (each would resume the same run), so the chain sets the agent's variables aside (`detach_agent`) and gives
# them back to the report run alone, whose summary holds every stage's figures (`pmd2/val_mrr`, ...).
AGENT_ENV = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH")
_agent: dict[str, str] = {}


def detach_agent() -> None:
    for k in AGENT_ENV:
        if k in os.environ:
            _agent[k] = os.environ.pop(k)


def under_agent() -> bool:
    return "WANDB_SWEEP_ID" in _agent or "WANDB_SWEEP_ID" in os.environ


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


def log_report(plan: RunPlan, result: dict) -> None:
    """The stage table as a wandb.Table and the MRR-vs-parameters plot, in a run of its own."""
    import wandb

    rows = result["stages"]
    if not rows:
        return
    run_dir = plan.run_dir
    kw = init_kwargs(plan, "report", "report", {})
    if _agent:  # under `wandb agent`: this is the sweep's run (W&B read its environment once, before we set it aside)
        kw["id"] = _agent.get("WANDB_RUN_ID")
        kw["settings"] = wandb.Settings(sweep_id=_agent.get("WANDB_SWEEP_ID"),
                                        sweep_param_path=_agent.get("WANDB_SWEEP_PARAM_PATH"))
        _agent.clear()
    run = wandb.init(**kw)
    cols = ["stage", "layers", "params_total", "params_no_embeddings", "best_val_mrr", "test_mrr", "test_mr",
            "test_hits@1", "test_hits@3", "test_hits@10", "queries_per_s", "entities_per_s"]
    table = wandb.Table(columns=cols)
    for r in rows:
        t = r["test"]
        table.add_data(r["name"], r.get("layers"), r["params_total"], r["params_no_embeddings"], r.get("best_val_mrr"),
                       t["mrr"], t["mr"], t["hits@1"], t["hits@3"], t["hits@10"], r.get("queries_per_s"),
                       r.get("entities_per_s"))
    payload = {"report/stages": table}
    png = run_dir / "report.png"
    if png.is_file():
        payload["report/mrr_vs_params"] = wandb.Image(str(png))
    run.log(payload)
    run.summary.update(summary_figures(rows))
    run.finish()
