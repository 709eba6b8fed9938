"""`StageRecorder`: the callback on a chain stage's Trainer that turns the stage's Lightning events into its row.

Each stage of the chain is its own LightningModule fitted by its own Trainer (a second `fit` on one Trainer
silently does nothing); chain.py gives every stage's Trainer one recorder, built with what the driver knows of
the stage (name, kind, layers, losses...). The recorder only reacts to events: it times the fit, takes the fit's
facts at its end (best checkpoint, best val MRR, epochs, steps, processes), and when the stage's best checkpoint
has been tested it adds the test metrics, parameter counts and measured throughput, then has the chain's store
(`kgc_kd.chain.store.ChainStore`) export the stage, write its predictions and record the row. Handing the
trained bi-encoder to the next stage is the driver's step, after `trainer.test` (`driver.CurrentTeacher.hand_over`).
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from kgc_kd.callbacks.timing import PhaseTimer
from kgc_kd.chain import tracking
from kgc_kd.chain.store import ChainStore
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.size import parameter_counts, throughput
from kgc_kd.runtime.memory import peak_rss_mib

TEST_KEYS = ("mrr", "mr", "hits@1", "hits@3", "hits@10", "tail/mrr", "head/mrr")


def test_metrics(evaluation: dict) -> dict[str, float]:
    """A stage row's `test`: the `TEST_KEYS` of a module's `last_eval["test"]` (a stage tested after its fit, or
    a reused one tested again on another test split by the driver)."""
    return {k: float(evaluation["metrics"][k]) for k in TEST_KEYS if k in evaluation["metrics"]}


test_metrics.__test__ = False  # a library function, not a test, where a test module imports it


def vocab_size(net: BiEncoder) -> int:
    """The word-pieces the stage's encoders embed (a pruned vocabulary: those kept)."""
    return len(net.kept_ids or []) or int(net.query_encoder.config.vocab_size)


def compression(teacher: dict | None, row: dict) -> dict[str, float | None]:
    """How many times smaller than the teacher a stage is: the teacher's parameters over the stage's, in total
    and without embeddings (the teacher: 1)."""
    teacher = teacher if teacher is not None else row
    return {k: (round(teacher[k] / row[k], 4) if teacher.get(k) and row.get(k) else None)
            for k in ("params_total", "params_no_embeddings")}


def peak_memory(device: torch.device) -> dict[str, float]:
    """The process's peaks up to now: resident memory and, on CUDA, memory allocated by torch (neither is
    reset per stage: other readers, the GPU evidence script among them, take the process's peak)."""
    out = {"peak_rss_mib": peak_rss_mib()}
    if device.type == "cuda":
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


class StageRecorder(Callback):
    def __init__(self, store: ChainStore, info: dict[str, Any], *, measure_latency: bool = True,
                 save_predictions: bool = True):
        """`info` describes the stage (its `name` first): it becomes the start of the stage's row."""
        self.store = store
        self.info = dict(info)
        self.measure_latency = measure_latency
        self.save_predictions = save_predictions
        self._fit: dict[str, Any] = {}
        self._fit_started: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_started = time.time()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        started = self._fit_started if self._fit_started is not None else time.time()
        self._fit = {
            "best_checkpoint": ckpt.best_model_path if ckpt else None,
            "best_val_mrr": float(ckpt.best_model_score) if ckpt and ckpt.best_model_score is not None else None,
            "epochs": trainer.current_epoch, "steps": trainer.global_step, "world_size": trainer.world_size,
            "fit_time_s": round(time.time() - started, 1),
        }

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        name = self.info["name"]
        net: BiEncoder = pl_module.net  # the best checkpoint's weights: the driver tests with ckpt_path="best"
        ev = pl_module.last_eval["test"]
        row = {"vocab_size": vocab_size(net), **self.info, **self._fit, **parameter_counts(net),
               "temperature": float(1.0 / net.inv_t.detach()),
               "test": test_metrics(ev)}
        row["compression"] = compression(None if name == "teacher" else self.store.row("teacher"), row)
        timer = next((c for c in trainer.callbacks if isinstance(c, PhaseTimer)), None)
        phases = timer.phases() if timer is not None else {}
        if self.measure_latency:
            start = time.perf_counter()
            row.update(self._latency(trainer, net))
            phases["latency"] = round(time.perf_counter() - start, 2)
        if trainer.is_global_zero:
            start = time.perf_counter()
            dm = trainer.datamodule
            self.store.export(name, net, dm.kg, max_length=dm.max_length, link_graph=dm.link_graph, tokens=dm.tokens)
            if self.save_predictions:
                self.store.write_predictions(name, dm.kg, ev)
            phases["export"] = round(time.perf_counter() - start, 2)
            row["phases_s"] = phases
            row.update(peak_memory(next(net.parameters()).device))
            # the open stage run (W&B): its id, and the export as a model artifact (run.wandb_log_model)
            run = tracking.stage_recorded(name, row, self.store.export_dir(name), self.info.get("teacher"))
            if run is not None:
                row["wandb_run"] = run
            self.store.record(name, row)

    def _latency(self, trainer: L.Trainer, net: BiEncoder) -> dict[str, float]:
        dm = trainer.datamodule
        device = next(net.parameters()).device
        was_training = net.training
        net.eval()
        try:
            precision = str(trainer.precision)  # the stage's own: latency in the precision it runs in
            q = throughput(net.encode_query, dm.query_dataloader("valid"), device, "hr", precision=precision)
            e = throughput(net.encode_entity, dm.entity_dataloader(), device, "entity", precision=precision)
        finally:
            net.train(was_training)
        return {"queries_per_s": round(q, 1), "entities_per_s": round(e, 1), "latency_device": device.type}
