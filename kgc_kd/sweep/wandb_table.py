"""A sweep's trials as a W&B table (and its plots) in a run of the study's W&B group, beside the trials' stage runs."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from kgc_kd.chain.tracking import wandb_mode


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
