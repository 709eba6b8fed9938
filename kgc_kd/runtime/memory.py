"""This process's resident memory, now and at its peak, as the chain's report and the benchmark read it."""

from __future__ import annotations

import resource
import sys


def status_mib(field: str) -> float | None:
    """A memory line of /proc/self/status (`VmRSS`, `VmHWM`, ...) in MiB; None where there is no such file."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rss_mib() -> float | None:
    """Resident memory now (VmRSS)."""
    return status_mib("VmRSS")


def peak_rss_mib() -> float:
    """This process's own peak resident memory. On Linux that is VmHWM of its address space: getrusage's
    ru_maxrss would also count the parent's resident memory at fork time (kept across exec), so a chain
    started from a big process would report that process's size. Elsewhere ru_maxrss is all there is."""
    hwm = status_mib("VmHWM")
    if hwm is not None:
        return round(hwm, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
