"""A sweep's trials as a W&B table (and its plots) in a run of the study's W&B group, beside the trials' stage runs."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from kgc_kd.chain.tracking import wandb_mode
from kgc_kd.sweep.report import flat_table


def log_sweep(cfg: DictConfig, out_dir: Path, study: str, summary: dict) -> None:
    """The study's trials as a table (and its plots) in a run of the study's W&B group, beside the trials' stage runs."""
    import wandb

    run = wandb.init(project=cfg.run.wandb_project, entity=cfg.run.wandb_entity, group=study, name=f"{study}/trials",
                     job_type="sweep", dir=str(out_dir), mode=wandb_mode(), reinit="finish_previous",
                     tags=[*cfg.run.wandb_tags, f"study:{study}"],
                     config={"study": study, "metrics": summary["metrics"], "method": summary["method"]})
    columns, rows = flat_table(summary)  # numbers W&B can plot: one column per metric and per stage figure
    table = wandb.Table(columns=columns, data=rows)
    payload = {"sweep/trials": table}
    for png in sorted(out_dir.glob("*.png")):
        payload[f"sweep/{png.stem}"] = wandb.Image(str(png))
    run.log(payload)
    run.summary.update({"best": summary.get("best"), **summary["counts"]})
    run.finish()
