"""Run a Python module or script as `python -m` / `python` would, and at its exit (normal, error, SystemExit, or
the SIGTERM of `timeout`) write this process's CUDA peak memory to a JSON file: torch.cuda.max_memory_allocated
and max_memory_reserved of every device it initialised. What a step of experiments/gpu_evidence.sh costs on the
card, without touching the code it runs. Child processes (DDP ranks spawned by a test) are not counted.

Usage: python experiments/gpu_evidence_peak.py PEAK_JSON -m MODULE [ARGS...]
       python experiments/gpu_evidence_peak.py PEAK_JSON SCRIPT.py [ARGS...]
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import signal
import sys
import time


def peak(started: float) -> dict:
    out: dict = {"seconds": round(time.time() - started, 1), "devices": {}}
    torch = sys.modules.get("torch")  # only what the run itself imported: no CUDA initialised here
    if torch is None:
        out["note"] = "torch was never imported"
        return out
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        out["note"] = "CUDA was not used by this process"
        return out
    for i in range(torch.cuda.device_count()):
        out["devices"][str(i)] = {"max_memory_allocated_mib": round(torch.cuda.max_memory_allocated(i) / 2**20, 1),
                                  "max_memory_reserved_mib": round(torch.cuda.max_memory_reserved(i) / 2**20, 1)}
    out["max_memory_allocated_mib"] = max(d["max_memory_allocated_mib"] for d in out["devices"].values())
    return out


def main(argv: list[str]) -> None:
    if len(argv) < 2 or (argv[1] == "-m" and len(argv) < 3):
        print(__doc__.strip().split("Usage: ")[-1], file=sys.stderr)
        raise SystemExit(2)
    path, started, written = argv[0], time.time(), []

    def write() -> None:
        if written:
            return
        written.append(True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(peak(started), f, indent=2)
        os.replace(tmp, path)

    atexit.register(write)
    # `timeout` sends SIGTERM: turn it into SystemExit so that atexit runs (exit status 124 as timeout's own)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    if argv[1] == "-m":
        sys.argv = [argv[2], *argv[3:]]
        sys.path[0] = os.getcwd()  # as `python -m` puts it
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv[1:]
        sys.path[0] = os.path.dirname(os.path.abspath(argv[1]))  # as `python SCRIPT` puts it
        runpy.run_path(argv[1], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
