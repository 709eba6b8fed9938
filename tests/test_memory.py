"""kgc_kd.runtime.memory: resident memory now and at its peak, read from /proc/self/status (ru_maxrss elsewhere)."""

from __future__ import annotations

import builtins
import resource
import sys

import pytest

from kgc_kd.runtime import memory


def _status_line(field: str) -> int | None:
    """The reference: the kB value of a /proc/self/status line, parsed independently."""
    try:
        text = open("/proc/self/status").read()
    except OSError:
        return None
    kib = {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines() if line.endswith(" kB")}
    return kib.get(field)


def test_status_fields_in_mib_and_the_peak_is_not_below_the_current_size():
    if _status_line("VmHWM") is None:
        pytest.skip("no /proc/self/status on this platform")
    block = bytearray(32 * 2**20)  # 32 MiB touched: resident now, so the high-water mark is at least this
    block[:: 4096] = b"\x01" * len(block[:: 4096])
    rss, peak = memory.rss_mib(), memory.peak_rss_mib()
    assert rss > 32 and peak >= round(rss, 1) - 0.1
    assert peak == pytest.approx(_status_line("VmHWM") / 1024, abs=1.0)  # a little may be allocated in between
    assert memory.status_mib("NoSuchField") is None
    del block


def test_without_procfs_the_peak_is_getrusages(monkeypatch):
    real_open = builtins.open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    assert memory.rss_mib() is None and memory.status_mib("VmHWM") is None
    unit = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    assert memory.peak_rss_mib() == round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit, 1)
