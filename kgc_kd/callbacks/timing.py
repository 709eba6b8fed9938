"""`PhaseTimer`: where a stage's wall time goes (waiting for data, training steps, evaluation), and
optionally the model FLOPs of one training step.

Lightning's profilers answer "which hook is slow" in a text dump; a distillation chain needs a few
numbers per stage that land in its report and the benchmark's JSON, so this callback keeps just those:
- `data`: time between the end of one training batch (or the epoch start) and the start of the next,
  i.e. the loader fetching and collating;
- `train`: training_step + backward + optimizer step (on GPU only meaningful with synchronisation,
  so the timer synchronises CUDA at batch boundaries);
- `eval`: validation and test loops, ranking included.
`step_times` keeps every batch's train time, so a benchmark can take a median after warm-up.

With `count_flops_at=k`, batch k runs under torch's `FlopCounterMode` (what Lightning's
`measure_flops` uses) from batch start until just before the optimizer step: forward and backward of
everything the step runs, a frozen teacher included. That batch is left out of `step_times`.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from kgc_kd.devices import synchronize


def _sync(module: L.LightningModule) -> None:
    synchronize(module.device)


class PhaseTimer(Callback):
    def __init__(self, count_flops_at: int | None = None):
        self.totals: dict[str, float] = {"data": 0.0, "train": 0.0, "eval": 0.0}
        self.step_times: list[float] = []
        self.count_flops_at = count_flops_at
        self.step_flops: int | None = None
        self._mark: float | None = None
        self._batch_start = 0.0
        self._eval_start = 0.0
        self._counter: Any = None
        self._flop_batch = False

    def phases(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in self.totals.items()}

    # ---- training ---------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark = time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        _sync(pl_module)
        now = time.perf_counter()
        if self._mark is not None:
            self.totals["data"] += now - self._mark
        self._batch_start = now
        if self.count_flops_at is not None and batch_idx == self.count_flops_at and trainer.current_epoch == 0:
            from torch.utils.flop_counter import FlopCounterMode

            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.step_flops = int(self._counter.get_total_flops())
            self._counter = None
            self._flop_batch = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        _sync(pl_module)
        now = time.perf_counter()
        self.totals["train"] += now - self._batch_start
        if self._counter is not None:  # no optimizer step ran (e.g. accumulation): stop counting here
            self.on_before_optimizer_step(trainer, pl_module, None)
        if getattr(self, "_flop_batch", False):
            self._flop_batch = False
        else:
            self.step_times.append(now - self._batch_start)
        self._mark = now

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark = None

    # ---- evaluation -------------------------------------------------------------------------------------
    def _eval_begin(self) -> None:
        self._eval_start = time.perf_counter()

    def _eval_end(self, pl_module: L.LightningModule) -> None:
        _sync(pl_module)
        self.totals["eval"] += time.perf_counter() - self._eval_start

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_begin()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end(pl_module)
        self._mark = time.perf_counter()  # validation inside an epoch is not data time

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_begin()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end(pl_module)
