"""Timing and memory primitives for the benchmark: medians after warm-up, and peak memory of a block.

A median over repeats (after warm-up runs that are thrown away) resists one slow repeat (a busy core,
a page fault storm) better than a mean, and unlike a best-of it does not flatter. Peak memory on CPU is
the process's resident high-water mark: Linux lets a process reset it (`/proc/self/clear_refs`), so a
block's peak is measured in-process; on CUDA it is the allocator's peak.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kgc_kd.runtime.devices import synchronize
from kgc_kd.runtime.memory import rss_mib, status_mib


def timed(fn: Callable[[], object], *, warmup: int, repeats: int, device: torch.device | str = "cpu") -> dict:
    """Run `fn` warmup + repeats times; the median (and spread) of the timed repeats, in seconds."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return summarize(times)


def summarize(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": len(times)}


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then `m.peak_mib` (absolute high-water mark: process RSS on
    CPU, allocated tensors on CUDA) and `m.delta_mib` (the block's own growth over what was resident at
    entry). `m.method` says how it was measured; None values mean this platform cannot tell."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.peak_mib: float | None = None
        self.delta_mib: float | None = None
        self.method = "unavailable"

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
            self.method = "torch.cuda.max_memory_allocated"
            return self
        self._start = rss_mib()
        try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM after reset"
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._start is not None:
            self.peak_mib = status_mib("VmHWM")
        if self.peak_mib is not None and self._start is not None:
            self.delta_mib = max(0.0, self.peak_mib - self._start)
