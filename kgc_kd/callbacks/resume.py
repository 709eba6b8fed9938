"""What makes a stage safe to kill: a resume point written often, atomically, with the RNG state inside it.

A chain on a shared cluster is killed (pre-emption, time limit, OOM killer, a user's Ctrl-C). Rerunning
the same command resumes from the stage's newest checkpoint, so that file must be recent, must never be
half-written, and a run resumed from an epoch's end should see the same data order and dropout as an
uninterrupted one:

- `LastCheckpoint` writes the resume point `checkpoints/last.ckpt` at every epoch's end (after that epoch's
  validation, so the best-model tracking is inside it) and every `run.checkpoint_every_n_steps` training
  steps. Lightning's `ModelCheckpoint(save_last=True, monitor=...)` refreshes last.ckpt only when a top-k
  checkpoint was saved in the same step, i.e. at improving epochs only: a job killed after ten epochs
  without a better validation MRR would redo all ten. The best-by-validation checkpoint stays
  ModelCheckpoint's (`best-epochNNN.ckpt`, `save_last=False`).
- `AtomicCheckpointIO` writes to a temporary file in the same directory, fsyncs and renames. Lightning's
  own save goes through an fsspec transaction whose temporary file lives in the system temp directory;
  when that is another filesystem the final "move" is a copy, and a kill during it leaves a truncated file.
  Every save goes through it: `LastCheckpoint`'s, ModelCheckpoint's, the interrupt checkpoint below and
  Lightning's SLURM `hpc_ckpt_N.ckpt`.
- `RngState` stores the Python/NumPy/torch (and CUDA) generator states in every checkpoint and restores
  them on resume. Lightning does not: a resumed run would shuffle its next epoch differently.
- `CheckpointOnInterrupt` saves `last.ckpt` when the stage stops on SIGTERM (Lightning raises its
  SIGTERMException at the next batch boundary) or Ctrl-C, so at most one batch of work is lost. Other
  exceptions (a non-finite loss, a bug) save nothing: the last good checkpoint stays what it was.
- `newest_checkpoint` picks what a rerun (or a requeued SLURM job) resumes from: `last.ckpt` or one of
  Lightning's `hpc_ckpt_N.ckpt` (written on SLURM's requeue signal in the trainer's default_root_dir,
  the stage directory), whichever holds the larger global step.

Resuming from a mid-epoch checkpoint (a step checkpoint, SIGTERM, Ctrl-C, SLURM's signal) continues the
step count, the LR schedule and the epoch's batch index, but the train loader is not resumable: the rest
of that epoch is the first batches of a new pass over the loader (a new shuffle on one device; under DDP
the DistributedSampler's permutation of that epoch again, so it repeats the epoch's first batches and
skips its last ones). Lightning warns about it ("...your dataloader is not resumable..."). Training is
still correct, only not bit-identical to an uninterrupted run; resuming from an epoch's end is.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from kgc_kd.runtime.files import replace_atomically


class UnreadableCheckpoint(RuntimeError):
    """A checkpoint that cannot be loaded with torch's weights-only unpickler (damaged, or holding pickled objects:
    never run); the message names the file."""


def refused(path, err: BaseException) -> UnreadableCheckpoint:
    """The error for checkpoint `path` that `torch.load(..., weights_only=True)` refused with `err`."""
    lines = str(err).strip().splitlines()
    why = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return UnreadableCheckpoint(
        f"cannot load checkpoint {path} with weights_only=True ({why}); nothing in it was run. A kgc-kd checkpoint "
        "holds tensors and plain containers only: move the file away (the stage then resumes from its other "
        "checkpoints, or starts afresh)")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic saves (see the module's docstring) and weights-only loads: every
    checkpoint Lightning loads through it (`trainer.fit(ckpt_path=...)`, `trainer.test(ckpt_path=...)`) is read
    by torch's weights-only unpickler, which builds tensors and plain containers and refuses anything else.
    `weights_only=True` is passed explicitly, so it stands even where TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 is set
    (torch's `load` lets that variable override only a weights_only that was not passed)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        replace_atomically(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """`path` loaded with `weights_only=True`, whatever the caller (Lightning passes the trainer's
        `weights_only` argument, None by default) or the environment asks; False is refused."""
        if weights_only is False:
            raise ValueError(f"checkpoint {path}: weights_only=False refused; {type(self).__name__} loads "
                             "tensors and plain containers only (nothing loaded may run code)")
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - say which file, whatever torch or the pickle says
            raise refused(path, err) from err


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
        """Keep the file: the parent class deletes it after a clean run, and here it is `LastCheckpoint`'s
        last.ckpt, the resume point of the chain."""


LAST = "last.ckpt"
HPC_GLOB = "hpc_ckpt_*.ckpt"  # Lightning's SLURM checkpoints, hpc_ckpt_<N>.ckpt in the trainer's default_root_dir


class LastCheckpoint(Checkpoint):
    """The stage's resume point, `<dirpath>/last.ckpt`: written at every training epoch's end and every
    `every_n_steps` training steps (0: at epoch ends only), through `trainer.save_checkpoint`, i.e. the
    trainer's checkpoint IO (`AtomicCheckpointIO` in the chain) and, under DDP, by rank 0 with every rank
    calling (the decision depends only on the global step and the batch index, the same on every rank).

    - Epoch end: `on_train_epoch_end` runs after the epoch's validation, and a `Checkpoint` callback's hook
      runs after the other callbacks' and the module's, with ModelCheckpoint's before this one when it is
      listed first: the file holds the epoch's best-model bookkeeping, whether or not the epoch improved.
    - Every N steps: `on_train_batch_end` of the batch whose optimizer step made `global_step` a multiple of
      N (with gradient accumulation, the batch that stepped: the step count does not move in between), the
      place Lightning's fit loop restarts from (`restarted_on_train_batch_end`). Not on an epoch's last
      batch: the epoch-end checkpoint follows it.
    - A resumed fit does not rewrite the file it started from before it has trained a step.

    It also sets `last_model_path` of the trainer's ModelCheckpoint (whose `save_last` is off) to the file,
    so `trainer.checkpoint_callback.last_model_path` still names the resume point (the non-finite-loss
    message reads it), also inside the checkpoint and after a resume.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int = 0) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps={every_n_steps}: expected >= 0 (0: at epoch ends only)")
        self.path = Path(dirpath) / LAST
        self.every_n_steps = int(every_n_steps)
        self.saved_at: int | None = None  # the global step of this callback's last save
        self._step_seen: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step_seen = trainer.global_step  # resumed at a multiple of N: that step is already on disk

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step, n = trainer.global_step, self.every_n_steps
        if step == self._step_seen:
            return  # no optimizer step since the last look (gradient accumulation), or just resumed
        self._step_seen = step
        if n and step % n == 0 and batch_idx + 1 < trainer.num_training_batches:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.fast_dev_run:
            return  # like ModelCheckpoint: a fast_dev_run writes no checkpoint
        best = trainer.checkpoint_callback
        if isinstance(best, ModelCheckpoint) and not best.save_last:
            best.last_model_path = str(self.path)  # before the save: the file names itself
        trainer.save_checkpoint(self.path)
        self.saved_at = self._step_seen = trainer.global_step


def _hpc_number(path: Path) -> int:
    match = re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", path.name)
    return int(match.group(1)) if match else -1


def resume_candidates(stage_dir: str | Path) -> list[Path]:
    """The files a stage can resume from: `checkpoints/last.ckpt`, then Lightning's SLURM checkpoints
    `hpc_ckpt_N.ckpt` in the stage directory (its trainer's default_root_dir), newest number first."""
    stage_dir = Path(stage_dir)
    hpc = sorted((p for p in stage_dir.glob(HPC_GLOB) if _hpc_number(p) >= 0), key=_hpc_number, reverse=True)
    return [p for p in [stage_dir / "checkpoints" / LAST, *hpc] if p.is_file()]


def checkpoint_step(path: str | Path) -> int:
    """The global step a Lightning checkpoint was saved at. The tensors are memory-mapped, not read, so
    this costs about the size of the pickled structure, not of the weights."""
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        return int(ckpt["global_step"])
    except Exception as err:  # noqa: BLE001 - say which file, whatever torch or the pickle says
        raise UnreadableCheckpoint(f"cannot read the global step of checkpoint {path} ({type(err).__name__}: "
                                   f"{err}); move it away to resume from the stage's other checkpoints") from err


def newest_checkpoint(stage_dir: str | Path) -> Path | None:
    """What a stage resumes from: the candidate (`resume_candidates`) with the largest global step;
    `last.ckpt` wins a tie, then the higher hpc number. None: start the stage afresh.

    By the step stored in each file, not by modification time: a requeued job can run on another node,
    the times of the two files then come from different clocks, and copying a run directory (cp, rsync
    without -t) resets them, while a stage's step count only grows. On a tie last.ckpt is the better file:
    Lightning writes hpc_ckpt_N.ckpt from inside its signal handler, wherever the process was (in a
    validation, or in the test after fit, with the best checkpoint's weights loaded), whereas last.ckpt
    is written at a step or epoch boundary (or on SIGTERM/Ctrl-C, at the end of the step under way)."""
    best, best_step = None, None
    for path in resume_candidates(stage_dir):
        step = checkpoint_step(path)
        if best_step is None or step > best_step:
            best, best_step = path, step
    return best


def remove_hpc_checkpoints(stage_dir: str | Path) -> list[Path]:
    """Delete the stage's `hpc_ckpt_N.ckpt` files (call once its fit has finished: last.ckpt supersedes
    them). Besides the disk space, Lightning's `trainer.test(ckpt_path=None)` on SLURM would load the newest
    of them instead of the weights in memory."""
    removed = [p for p in Path(stage_dir).glob(HPC_GLOB) if _hpc_number(p) >= 0]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
