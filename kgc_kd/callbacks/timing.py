"""`PhaseTimer`: where a stage's wall time goes (waiting for data, training steps, evaluation), and
optionally the model FLOPs of one training step.

Lightning's profilers answer "which hook is slow" in a text dump; a distillation chain needs a few
numbers per stage that land in its report and the benchmark's JSON, so this callback keeps just those:
- `data`: time between the end of one training batch (or the epoch start) and the start of the next,
  i.e. the loader fetching and collating;
- `train`: training_step + backward + optimizer step. On CUDA the work is queued, so host time would
  measure the queueing; the step is timed on the device instead, by CUDA events recorded at batch start and
  end (no synchronisation per step: the events are read at epoch end, or when `totals`, `phases()` or
  `step_times` are read). On the CPU, host wall time (`perf_counter`), which is the work itself;
- `eval`: validation and test loops, ranking included (host wall time; CUDA synchronised once at the end
  of each loop).
`data` stays host wall time on every device: the host's time between batches (fetching, collating, the
copy to the device), while on CUDA the previous step may still be running.
`step_times` keeps every batch's train time, so a benchmark can take a median after warm-up.

With `count_flops_at=k`, batch k runs under torch's `FlopCounterMode` (what Lightning's
`measure_flops` uses) from batch start until just before the optimizer step: forward and backward of
everything the step runs, a frozen teacher included. That batch is left out of `step_times`.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from kgc_kd.runtime.devices import synchronize

#: device types whose training steps are timed by device events instead of the host clock
EVENT_TIMED_DEVICE_TYPES: set[str] = {"cuda"}
#: pending steps after which those already finished on the device are read (bounds the list in long epochs)
PENDING_LIMIT = 1024


def _sync(module: L.LightningModule) -> None:
    synchronize(module.device)


def _event() -> Any:
    """A timing event on the current CUDA stream (a seam: CPU tests put a host-clock stand-in here)."""
    return torch.cuda.Event(enable_timing=True)


class PhaseTimer(Callback):
    def __init__(self, count_flops_at: int | None = None):
        self._totals: dict[str, float] = {"data": 0.0, "train": 0.0, "eval": 0.0}
        self._step_times: list[float] = []
        self.count_flops_at = count_flops_at
        self.step_flops: int | None = None
        self._mark: float | None = None
        self._batch_start = 0.0
        self._start_event: Any = None
        self._pending: list[tuple[Any, Any, bool]] = []  # (start, end, in step_times) not yet read
        self._eval_start = 0.0
        self._counter: Any = None
        self._flop_batch = False

    # Reading any figure first reads the events still pending (one wait for the last of them).
    @property
    def totals(self) -> dict[str, float]:
        self._resolve()
        return self._totals

    @property
    def step_times(self) -> list[float]:
        self._resolve()
        return self._step_times

    def phases(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in self.totals.items()}

    def _drain_finished(self) -> None:
        """Read the leading pending steps whose end event has completed (`query()` does not wait)."""
        done = 0
        while done < len(self._pending) and self._pending[done][1].query():
            done += 1
        pending, self._pending = self._pending[done:], self._pending[:done]
        self._resolve()
        self._pending = pending

    def _resolve(self) -> None:
        """Add the pending device-timed steps to `train` and `step_times`, in batch order."""
        if not self._pending:
            return
        self._pending[-1][1].synchronize()  # events complete in stream order: the last one waits for all
        for start, end, keep in self._pending:
            seconds = start.elapsed_time(end) / 1000.0
            self._totals["train"] += seconds
            if keep:
                self._step_times.append(seconds)
        self._pending.clear()

    # ---- training ---------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark = time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._mark is not None:
            self._totals["data"] += now - self._mark
        self._batch_start = now
        if pl_module.device.type in EVENT_TIMED_DEVICE_TYPES:
            self._start_event = _event()
            self._start_event.record()
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
        end = None
        if self._start_event is not None:
            end = _event()
            end.record()
        now = time.perf_counter()
        if self._counter is not None:  # no optimizer step ran (e.g. accumulation): stop counting here
            self.on_before_optimizer_step(trainer, pl_module, None)
        keep = not self._flop_batch  # the FLOP-counted batch is timed as train but kept out of step_times
        self._flop_batch = False
        if end is not None:
            self._pending.append((self._start_event, end, keep))
            self._start_event = None
            if len(self._pending) >= PENDING_LIMIT:  # a long epoch: read the steps already done, without waiting
                self._drain_finished()
        else:
            self._totals["train"] += now - self._batch_start
            if keep:
                self._step_times.append(now - self._batch_start)
        self._mark = now

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark = None
        self._resolve()

    # ---- evaluation -------------------------------------------------------------------------------------
    def _eval_begin(self) -> None:
        self._eval_start = time.perf_counter()

    def _eval_end(self, pl_module: L.LightningModule) -> None:
        _sync(pl_module)
        self._totals["eval"] += time.perf_counter() - self._eval_start

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_begin()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end(pl_module)
        self._mark = time.perf_counter()  # validation inside an epoch is not data time

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_begin()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end(pl_module)
