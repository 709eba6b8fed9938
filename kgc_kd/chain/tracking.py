"""Weights & Biases: one W&B run per stage, grouped under the pipeline (this module), plus a report run
(chain/wandb_report.py, which is also the `wandb agent`'s run) and a sweep's trials table (sweep/wandb_table.py).

One run per stage (not one run with stage-prefixed keys) because every stage restarts its step
counter and has its own model; W&B's grouping shows the chain as one experiment and each stage's
curves stay comparable across runs. Lightning reuses a live W&B run, so each stage ends with
`wandb.finish()`. Without an API key (or with WANDB_MODE=offline) runs are written offline under the
run directory and can be uploaded later with `wandb sync`.
"""

from __future__ import annotations

import netrc
import os
from typing import TYPE_CHECKING

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


def init_kwargs(plan: RunPlan, name: str, job_type: str, extra: dict) -> dict:
    cfg = plan.cfg
    group = cfg.run.wandb_group or plan.run_name  # a comparison (kgc_kd.compare) groups all its chains
    return {"project": cfg.run.wandb_project, "entity": cfg.run.wandb_entity, "group": group,
            "name": f"{plan.run_name}/{name}", "job_type": job_type, "dir": str(plan.run_dir),
            "config": {**to_plain(cfg), "stage": extra}, "mode": wandb_mode(), "reinit": "finish_previous"}


def stage_logger(plan: RunPlan, stage: str, info: dict):
    from lightning.pytorch.loggers import WandbLogger

    kw = init_kwargs(plan, stage, stage, info)
    kw.pop("dir")
    return WandbLogger(save_dir=str(plan.run_dir), log_model=plan.cfg.run.wandb_log_model,
                       offline=kw.pop("mode") == "offline", **kw)


def finish_stage(trainer) -> None:
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()
