"""What makes a stage safe to kill: atomic checkpoints, the RNG state inside them, a checkpoint on SIGTERM/Ctrl-C.

A chain on a shared cluster is killed (pre-emption, time limit, OOM killer, a user's Ctrl-C). Rerunning
the same command resumes from the stage's `last.ckpt`, so that file must never be half-written, and a
run resumed from an epoch's end should see the same data order and dropout as an uninterrupted one:

- `AtomicCheckpointIO` writes to a temporary file in the same directory, fsyncs and renames. Lightning's
  own save goes through an fsspec transaction whose temporary file lives in the system temp directory;
  when that is another filesystem the final "move" is a copy, and a kill during it leaves a truncated file.
- `RngState` stores the Python/NumPy/torch (and CUDA) generator states in every checkpoint and restores
  them on resume. Lightning does not: a resumed run would shuffle its next epoch differently.
- `CheckpointOnInterrupt` saves `last.ckpt` when the stage stops on SIGTERM (Lightning raises its
  SIGTERMException at the next batch boundary) or Ctrl-C, so at most one batch of work is lost. Other
  exceptions (a non-finite loss, a bug) save nothing: the last good checkpoint stays what it was.
  Resuming from such a mid-epoch checkpoint continues the step count, but the rest of that epoch draws a
  new shuffle (the data loader is not resumable), so it is not bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, OnExceptionCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from kgc_kd.reporting import replace_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        replace_atomically(path, lambda f: torch.save(checkpoint, f))


class RngState(Callback):
    """The generators' state as of the checkpoint, restored before the resumed epoch draws its shuffle.
    Stored as tensors and plain lists, so checkpoints still load with torch's weights_only=True."""

    def state_dict(self) -> dict[str, Any]:
        version, mt, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state = {"torch": torch.get_rng_state(), "python": [version, list(mt), gauss],
                 "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        version, mt, gauss = state_dict["python"]
        random.setstate((version, tuple(mt), gauss))
        name, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        if "cuda" in state_dict and torch.cuda.is_available() and len(state_dict["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class CheckpointOnInterrupt(OnExceptionCheckpoint):
    """Lightning's OnExceptionCheckpoint, limited to interruptions of training and written as last.ckpt."""

    def __init__(self, dirpath: str | Path) -> None:
        super().__init__(dirpath=str(dirpath), filename="last")
        self.saved_at: int | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # FITTING covers the validation inside a fit too (trainer.training does not): an epoch's work is saved
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)) or trainer.state.fn != TrainerFn.FITTING:
            return
        super().on_exception(trainer, pl_module, exception)
        self.saved_at = trainer.global_step
        if trainer.is_global_zero:
            kind = "SIGTERM" if isinstance(exception, SIGTERMException) else "Ctrl-C"
            print(f"\n{kind}: saved {self.ckpt_path} at step {trainer.global_step}; "
                  "rerun the same command to resume", flush=True)

    def teardown(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        """Keep the file: the parent class deletes it after a clean run, and here it is ModelCheckpoint's
        last.ckpt, the resume point of the chain."""
