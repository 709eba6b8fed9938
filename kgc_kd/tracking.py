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

from omegaconf import DictConfig

from kgc_kd.config import run_name, to_plain


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


def _init_kwargs(cfg: DictConfig, run_dir: Path, name: str, job_type: str, extra: dict) -> dict:
    group = cfg.run.wandb_group or run_name(cfg)  # a comparison (kgc_kd.compare) groups all its chains
    return {"project": cfg.run.wandb_project, "entity": cfg.run.wandb_entity, "group": group,
            "name": f"{run_name(cfg)}/{name}", "job_type": job_type, "dir": str(run_dir),
            "config": {**to_plain(cfg), "stage": extra}, "mode": wandb_mode(), "reinit": "finish_previous"}


def stage_logger(cfg: DictConfig, run_dir: Path, stage: str, info: dict):
    from lightning.pytorch.loggers import WandbLogger

    kw = _init_kwargs(cfg, run_dir, stage, stage, info)
    kw.pop("dir")
    return WandbLogger(save_dir=str(run_dir), log_model=cfg.run.wandb_log_model,
                       offline=kw.pop("mode") == "offline", **kw)


def finish_stage(trainer) -> None:
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()


def log_report(cfg: DictConfig, run_dir: Path, result: dict) -> None:
    """The stage table as a wandb.Table and the MRR-vs-parameters plot, in a run of its own."""
    import wandb

    rows = result["stages"]
    if not rows:
        return
    run = wandb.init(**_init_kwargs(cfg, run_dir, "report", "report", {}))
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
    run.summary.update({f"{r['name']}/test_mrr": r["test"]["mrr"] for r in rows})
    run.finish()
