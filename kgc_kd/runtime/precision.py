"""Numeric precision of a run: an explicit `trainer.precision` wins; unset, the device decides.

On a CUDA device with bf16 support (Ampere and newer) an unset precision becomes `bf16-mixed`, as SimKGC's
`--use-amp` and PMD's recipes train; elsewhere `32-true`. Float32 matmuls on CUDA use TF32 (PyTorch's
`set_float32_matmul_precision("high")`), which Lightning otherwise warns about leaving off.
"""

from __future__ import annotations

import torch

CUDA_ACCELERATORS = ("auto", "gpu", "cuda")


def uses_cuda(accelerator: str) -> bool:
    """Whether Lightning will put this run on a CUDA device (`auto` picks CUDA when one is visible)."""
    return str(accelerator).lower() in CUDA_ACCELERATORS and torch.cuda.is_available()


def resolve_precision(precision: str | None, accelerator: str) -> tuple[str, str]:
    """(precision, why): the Lightning precision string the run trains with, and the reason, for the log."""
    if precision is not None:
        return str(precision), "set by trainer.precision"
    if uses_cuda(accelerator) and torch.cuda.is_bf16_supported():
        return "bf16-mixed", "trainer.precision unset: CUDA device with bf16 support"
    if uses_cuda(accelerator):
        return "32-true", "trainer.precision unset: CUDA device without bf16 support (TF32 matmuls)"
    return "32-true", "trainer.precision unset: no CUDA device"


def configure_matmul(accelerator: str) -> str | None:
    """TF32 for float32 matmuls on CUDA; returns the setting made (None: left as it was, e.g. on CPU)."""
    if not uses_cuda(accelerator):
        return None
    torch.set_float32_matmul_precision("high")
    return "high"
