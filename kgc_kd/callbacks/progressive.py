"""`ProgressiveDistillation`: the callback that carries a distillation chain from one stage to the next.

Each stage is its own LightningModule fitted by its own Trainer (a second `fit` on one Trainer silently
does nothing). This callback is attached to every stage's Trainer: when the stage's best checkpoint
(by val MRR) has been tested it records the stage's row, exports the stage as Hugging Face
directories, and hands the trained bi-encoder over, frozen, as the next stage's teacher. Its state
(finished stages and their rows) is a JSON file in the run directory, so rerunning the same command
skips finished stages with their metrics untouched.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from kgc_kd.callbacks.timing import PhaseTimer
from kgc_kd.data.kg import kg_to_json
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.size import parameter_counts, throughput
from kgc_kd.reporting import write_json_atomic, write_predictions

TEST_KEYS = ("mrr", "mr", "hits@1", "hits@3", "hits@10", "tail/mrr", "head/mrr")


def freeze(net: BiEncoder) -> BiEncoder:
    return net.requires_grad_(False).eval()


class ProgressiveDistillation(Callback):
    def __init__(self, run_dir: str | Path, tokenizer=None, *, measure_latency: bool = True,
                 save_predictions: bool = True):
        self.run_dir = Path(run_dir)
        self.tokenizer = tokenizer
        self.measure_latency = measure_latency
        self.save_predictions = save_predictions
        self.state_path = self.run_dir / "chain_state.json"
        self.state: dict[str, Any] = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        self.state.setdefault("stages", {})
        self.teacher: BiEncoder | None = None
        self.current: dict[str, Any] | None = None
        self._fit: dict[str, Any] = {}

    # ---- what the driver asks -------------------------------------------------------------------------
    def stage_dir(self, name: str) -> Path:
        return self.run_dir / "stages" / name

    def export_dir(self, name: str) -> Path:
        return self.stage_dir(name) / "export"

    def is_done(self, name: str) -> bool:
        return name in self.state["stages"] and (self.export_dir(name) / "biencoder.json").is_file()

    def begin(self, info: dict[str, Any]) -> None:
        """Describe the stage about to run (name, kind, layers, losses...): it becomes the stage's row."""
        self.current = dict(info)
        self._fit = {}

    def resume_from(self, name: str) -> None:
        """A finished stage is skipped: its exported model becomes the next teacher."""
        self.teacher = freeze(BiEncoder.from_pretrained(self.export_dir(name), source_ids=True))

    def rows(self) -> list[dict[str, Any]]:
        return [self.state["stages"][n] for n in self.state.get("order", []) if n in self.state["stages"]]

    # ---- Lightning hooks ------------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_started = time.time()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        self._fit = {
            "best_checkpoint": ckpt.best_model_path if ckpt else None,
            "best_val_mrr": float(ckpt.best_model_score) if ckpt and ckpt.best_model_score is not None else None,
            "epochs": trainer.current_epoch, "steps": trainer.global_step, "world_size": trainer.world_size,
            "fit_time_s": round(time.time() - getattr(self, "_fit_started", time.time()), 1),
        }

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.current is None:
            return  # a test outside the chain (e.g. the untrained baseline)
        info, self.current = self.current, None
        name = info["name"]
        net: BiEncoder = pl_module.net  # the best checkpoint's weights: the driver tests with ckpt_path="best"
        ev = pl_module.last_eval["test"]
        row = {**info, **self._fit, **parameter_counts(net),
               "temperature": float(1.0 / net.inv_t.detach()),
               "test": {k: float(ev["metrics"][k]) for k in TEST_KEYS if k in ev["metrics"]}}
        timer = next((c for c in trainer.callbacks if isinstance(c, PhaseTimer)), None)
        phases = timer.phases() if timer is not None else {}
        if self.measure_latency:
            start = time.perf_counter()
            row.update(self._latency(trainer, net))
            phases["latency"] = round(time.perf_counter() - start, 2)
        if trainer.is_global_zero:
            start = time.perf_counter()
            self._export(name, net, trainer.datamodule)
            if self.save_predictions:
                write_predictions(self.stage_dir(name) / "predictions_test.jsonl", trainer.datamodule.kg, ev)
            phases["export"] = round(time.perf_counter() - start, 2)
            row["phases_s"] = phases
            self.state["stages"][name] = row
            order = self.state.setdefault("order", [])
            if name not in order:
                order.append(name)
            write_json_atomic(self.state_path, self.state)
        self.teacher = freeze(copy.deepcopy(net))

    # ---- helpers --------------------------------------------------------------------------------------
    def _latency(self, trainer: L.Trainer, net: BiEncoder) -> dict[str, float]:
        dm = trainer.datamodule
        device = next(net.parameters()).device
        was_training = net.training
        net.eval()
        try:
            q = throughput(net.encode_query, dm.query_dataloader("valid"), device, "hr")
            e = throughput(net.encode_entity, dm.entity_dataloader(), device, "entity")
        finally:
            net.train(was_training)
        return {"queries_per_s": round(q, 1), "entities_per_s": round(e, 1), "latency_device": device.type}

    def _export(self, name: str, net: BiEncoder, dm) -> None:
        """Write to a temporary directory and rename, so a half-written export is never mistaken for one."""
        final = self.export_dir(name)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with torch.no_grad():
            net_cpu = copy.deepcopy(net).cpu()
        net_cpu.save_pretrained(tmp, self.tokenizer)
        meta = {"max_length": dm.max_length, "link_graph": dm.link_graph}  # predict builds the same inputs
        (tmp / "kg.json").write_text(json.dumps(kg_to_json(dm.kg, **meta)))
        old = final.with_name(final.name + ".old")  # a kill between the renames leaves the old export whole
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
