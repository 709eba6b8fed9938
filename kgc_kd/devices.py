"""What differs between devices, written once: waiting for a device's queued work, and the one name of a
device that caches are keyed by. Both are the only places outside Lightning that branch on a CUDA device
(docs/gpu.md lists every CUDA-only branch and the `gpu` test that executes it)."""

from __future__ import annotations

import torch


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
