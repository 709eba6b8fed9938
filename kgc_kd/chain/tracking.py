"""Weights & Biases: one W&B run per stage, grouped under the pipeline, plus a report run.

One run per stage (not one run with stage-prefixed keys) because every stage restarts its step
counter and has its own model; W&B's grouping shows the chain as one experiment and each stage's
curves stay comparable across runs. Lightning reuses a live W&B run, so each stage ends with
`wandb.finish()`. Without an API key (or with WANDB_MODE=offline) runs are written offline under the
run directory and can be uploaded later with `wandb sync`.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from kgc_kd.config import to_plain

if TYPE_CHECKING:
    from kgc_kd.chain.plan import RunPlan


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_mode() -> str:
    """Explicit WANDB_MODE wins; otherwise online only with an API key."""
    return os.environ.get("WANDB_MODE") or ("online" if has_api_key() else "offline")


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


def _init_kwargs(plan: RunPlan, name: str, job_type: str, extra: dict) -> dict:
    cfg = plan.cfg
    group = cfg.run.wandb_group or plan.run_name  # a comparison (kgc_kd.compare) groups all its chains
    return {"project": cfg.run.wandb_project, "entity": cfg.run.wandb_entity, "group": group,
            "name": f"{plan.run_name}/{name}", "job_type": job_type, "dir": str(plan.run_dir),
            "config": {**to_plain(cfg), "stage": extra}, "mode": wandb_mode(), "reinit": "finish_previous"}


def stage_logger(plan: RunPlan, stage: str, info: dict):
    from lightning.pytorch.loggers import WandbLogger

    kw = _init_kwargs(plan, stage, stage, info)
    kw.pop("dir")
    return WandbLogger(save_dir=str(plan.run_dir), log_model=plan.cfg.run.wandb_log_model,
                       offline=kw.pop("mode") == "offline", **kw)


def finish_stage(trainer) -> None:
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()


def log_report(plan: RunPlan, result: dict) -> None:
    """The stage table as a wandb.Table and the MRR-vs-parameters plot, in a run of its own."""
    import wandb

    rows = result["stages"]
    if not rows:
        return
    run_dir = plan.run_dir
    kw = _init_kwargs(plan, "report", "report", {})
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


def log_sweep(cfg: DictConfig, out_dir: Path, study: str, summary: dict) -> None:
    """The study's trials as a table (and its plots) in a run of the study's W&B group, beside the trials' stage runs."""
    import wandb

    run = wandb.init(project=cfg.run.wandb_project, entity=cfg.run.wandb_entity, group=study, name=f"{study}/trials",
                     job_type="sweep", dir=str(out_dir), mode=wandb_mode(), reinit="finish_previous",
                     config={"study": study, "metrics": summary["metrics"], "method": summary["method"]})
    params = sorted({k for t in summary["trials"] for k in t["params"]})
    table = wandb.Table(columns=["trial", "state", *params, "values", "stages", "seconds"])
    for t in summary["trials"]:
        stages = "; ".join(f"{s['name']} val {s['val_mrr']:.4f} test {s['test_mrr']:.4f}" for s in t["stages"]
                           if s.get("val_mrr") is not None)
        table.add_data(t["number"], t["state"], *(t["params"].get(p) for p in params), str(t["values"]), stages,
                       t["seconds"])
    payload = {"sweep/trials": table}
    for png in sorted(out_dir.glob("*.png")):
        payload[f"sweep/{png.stem}"] = wandb.Image(str(png))
    run.log(payload)
    run.summary.update({"best": summary.get("best"), **summary["counts"]})
    run.finish()
