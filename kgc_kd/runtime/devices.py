"""What differs between devices, written once: waiting for a device's queued work, the one name of a device
that caches are keyed by, and where AdamW runs fused. These are the only places outside Lightning that branch
on a CUDA device (docs/gpu.md lists every CUDA-only branch and the `gpu` test that executes it)."""

from __future__ import annotations

from typing import Iterable

import torch

#: Device types on which AdamW runs torch's fused kernel (every parameter updated in a few launches instead of
#: a loop of small ones). The seam of the CPU tests that build a CUDA run's configuration: torch has a fused
#: CPU AdamW too, so a test that adds "cpu" here makes the chain's own Trainer build, on the CPU, the
#: optimizer a GPU run builds (with its `_step_supports_amp_scaling`, which Lightning's clipping checks).
FUSED_ADAMW_DEVICE_TYPES: set[str] = {"cuda"}


def fused_adamw(params: Iterable[torch.Tensor]) -> bool:
    """Whether AdamW over `params` runs fused: all of them live on a device type of FUSED_ADAMW_DEVICE_TYPES."""
    types = {p.device.type for p in params}
    return bool(types) and types <= FUSED_ADAMW_DEVICE_TYPES


def synchronize(device: torch.device | str) -> None:
    """Wait until `device` has finished its queued kernels (a timer must not stop before they ran); on the
    CPU work is synchronous and there is nothing to wait for."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def canonical(device: torch.device | str) -> torch.device:
    """`cuda` -> `cuda:<current device>`: tensors report the indexed name, so a cache keyed by device finds
    one entry per GPU whichever spelling asked for it."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device
