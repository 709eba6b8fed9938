"""Training throughput of a chain's stages: examples/s per optimiser step and the FLOP/s it achieves.

The step is the real one: the stage's LightningModule under a Lightning Trainer at the requested
precision (so `bf16-mixed` is Lightning's autocast plugin, exactly as `fit` runs it), fed one fixed
training batch again and again. A fixed batch makes every step the same work, so FLOPs counted on
one step (torch's FlopCounterMode, as Lightning's `measure_flops`) divide by the median step time.
Both encoders' forward and backward, the loss, a frozen teacher's forward (distillation) and the
AdamW step are inside the timed window; loading and collating the batch are not (see chain_run.py
for data time in a real run).
"""

from __future__ import annotations

import warnings

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from kgc_kd.callbacks.timing import PhaseTimer
from kgc_kd.chain.driver import build_stage
from kgc_kd.config import to_plain
from kgc_kd.data.datamodule import KGDataModule
from experiments.bench.measure import summarize
from kgc_kd.lit.distill_module import DistillModule
from kgc_kd.lit.kgc_module import KGCModule
from kgc_kd.models.biencoder import build_biencoder


def fixed_batch(dm: KGDataModule, seed: int) -> dict:
    torch.manual_seed(seed)
    return next(iter(dm.train_dataloader()))


def batch_tokens(batch: dict) -> int:
    """Non-padding tokens the encoders see in one step (queries + encoded entities)."""
    sides = [batch["hr"]] + [batch[k] for k in ("entities", "tail", "head") if k in batch]
    return int(sum(int(s["attention_mask"].sum()) for s in sides))


def build_module(cfg: DictConfig, kind: str, dm: KGDataModule, tokenizer, stage_index: int = 0) -> L.LightningModule:
    """The teacher stage's module, or student stage `stage_index` as the chain builds it (layers, shared
    encoder, pruned vocabulary, loss terms), taught by a frozen teacher cut the same way from the PLM:
    an untrained teacher costs the same FLOPs as a trained one."""
    model, optim, ev = to_plain(cfg.model), to_plain(cfg.optim), to_plain(cfg.eval)
    if kind == "teacher":
        return KGCModule(model, optim, ev, cfg.data.batch_size)
    teacher = build_biencoder(model)
    for i in range(stage_index):  # the grades before this one, untrained
        teacher = build_stage(cfg, i, teacher, dm, tokenizer).net
    return build_stage(cfg, stage_index, teacher.requires_grad_(False).eval(), dm, tokenizer)


def step_throughput(cfg: DictConfig, dm: KGDataModule, tokenizer, kind: str, precision: str, *, warmup: int,
                    repeats: int, stage_index: int = 0, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    module = build_module(cfg, kind, dm, tokenizer, stage_index)
    if isinstance(module, DistillModule):
        module.mask_id = dm.tokens.mask_id  # what the datamodule would hand it inside a chain
    batch = fixed_batch(dm, seed)
    steps = 1 + warmup + repeats  # step 0 runs under the FLOP counter and is not timed
    loader = DataLoader([batch] * steps, batch_size=None)
    timer = PhaseTimer(count_flops_at=0)
    trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, precision=precision, max_steps=steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        gradient_clip_val=cfg.trainer.gradient_clip_val, callbacks=[timer])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no validation loop", "few batches": expected here
        trainer.fit(module, train_dataloaders=loader)
    t = summarize(timer.step_times[warmup:])
    b = int(batch["triples"].shape[0])
    out = {"stage": kind if kind == "teacher" else cfg.stages[stage_index].name, "precision": precision,
           "batch_size": b, "tokens_per_step": batch_tokens(batch), **t,
           "examples_per_s": b / t["median_s"], "flops_per_step": timer.step_flops}
    out["flops_per_s"] = timer.step_flops / t["median_s"] if timer.step_flops else None
    return out
