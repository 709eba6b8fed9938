"""`python -m kgc_kd.fit [config=PATH] [GROUP=PRESET] [key=value ...]`: train and evaluate a SimKGC teacher.

Reads top to bottom as the run goes: config -> run directory -> data -> model -> (untrained baseline)
-> fit with checkpointing on val MRR -> test the best checkpoint -> metrics.json and a summary.
Lightning re-runs this module on every DDP rank, so everything before `fit` must be deterministic
(the run directory comes from the config, never from the clock).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from kgc_kd.config import ConfigError, load_config, run_name, to_plain
from kgc_kd.data.datamodule import KGDataModule
from kgc_kd.data.io import DataFormatError
from kgc_kd.lit.kgc_module import KGCModule
from kgc_kd.models.plm import load_tokenizer
from kgc_kd.reporting import format_summary, write_json_atomic, write_predictions, write_text_atomic


def build_datamodule(cfg: DictConfig, tokenizer) -> KGDataModule:
    d = cfg.data
    return KGDataModule(
        d.source, max_length=d.max_length, batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
        num_workers=d.num_workers, use_long_text=d.use_long_text, dedup_entities=d.dedup_entities, name_separator=d.name_separator,
        synthetic=to_plain(d.synthetic), tokenizer=tokenizer,
    )


def build_module(cfg: DictConfig, encoder=None) -> KGCModule:
    return KGCModule(model=to_plain(cfg.model), optim=to_plain(cfg.optim), eval=to_plain(cfg.eval),
                     batch_size=cfg.data.batch_size, encoder=encoder)


def trainer_kwargs(cfg: DictConfig) -> dict:
    t = to_plain(cfg.trainer)
    return {k: v for k, v in t.items() if v is not None}


def evaluate_untrained(cfg: DictConfig, module: KGCModule, dm: KGDataModule) -> dict[str, float]:
    """Test split metrics of the encoder before any training: the bar training has to clear."""
    t = L.Trainer(**{**trainer_kwargs(cfg), "logger": False, "enable_checkpointing": False,
                     "enable_progress_bar": False, "enable_model_summary": False})
    t.test(module, datamodule=dm, verbose=False)
    return dict(module.last_eval["test"]["metrics"])


def run(cfg: DictConfig, *, encoder=None, tokenizer=None) -> dict:
    start = time.time()
    L.seed_everything(cfg.run.seed, workers=True)
    # Data and model first: a bad path or file fails before anything is written.
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model.plm)
    dm = build_datamodule(cfg, tokenizer)
    print(dm.kg.summary(), flush=True)
    module = build_module(cfg, encoder)

    run_dir = Path(cfg.run.root) / run_name(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if L.fabric.utilities.rank_zero.rank_zero_only.rank == 0:
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    untrained = evaluate_untrained(cfg, module, dm) if cfg.eval.untrained_baseline else None

    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best-epoch{epoch:03d}", monitor="val/mrr",
                           mode="max", save_top_k=1, save_last=True, auto_insert_metric_name=False)
    callbacks = [ckpt]
    logger = False
    if cfg.run.logger == "csv":
        logger = CSVLogger(save_dir=str(run_dir), name="logs", version="")
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = L.Trainer(**trainer_kwargs(cfg), default_root_dir=str(run_dir), logger=logger, callbacks=callbacks)
    trainer.fit(module, datamodule=dm)
    best = ckpt.best_model_path or None
    trainer.test(module, datamodule=dm, ckpt_path="best" if best else None, verbose=False)

    result = {
        "run_dir": str(run_dir),
        "data": dm.kg.summary(),
        "test": module.last_eval["test"]["metrics"],
        "best_val_mrr": float(ckpt.best_model_score) if ckpt.best_model_score is not None else None,
        "best_checkpoint": best,
        "untrained_test": untrained,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "temperature": float(1.0 / module.net.inv_t.detach()),
        "wall_time_s": round(time.time() - start, 1),
    }
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "metrics.json", result)
        if cfg.eval.save_predictions:
            write_predictions(run_dir / "predictions_test.jsonl", dm.kg, module.last_eval["test"])
        summary = format_summary(result)
        write_text_atomic(run_dir / "summary.txt", summary)
        print(summary, flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = load_config(argv)
        return run(cfg)
    except (ConfigError, DataFormatError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
