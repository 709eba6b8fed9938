"""The default chain end to end: wall time by stage and phase, and the peak memory of the whole run.

The chain runs as `python -m kgc_kd.fit` in a child process (so its peak resident memory is its own,
recorded by the chain itself as VmHWM, see kgc_kd.runtime.memory.peak_rss_mib) with the CSV logger, in a fresh run
directory under the benchmark's output. Phase times come from the run's report (PhaseTimer and each
stage's StageRecorder record data / train / eval / latency / export). `--chain-run DIR` reads an
existing run's report instead of training (its own recorded peak memory is used).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run_chain_subprocess(overrides: list[str], out_dir: Path, *, name: str = "bench-chain") -> dict:
    run_root = out_dir / "chain-runs"
    shutil.rmtree(run_root / name, ignore_errors=True)  # a fresh run: an old state would skip stages
    cmd = [sys.executable, "-m", "kgc_kd.fit", *overrides, "run.logger=csv", f"run.root={run_root}",
           f"run.name={name}", "trainer.enable_progress_bar=false"]
    log = out_dir / f"{name}.log"
    start = time.perf_counter()
    with open(log, "w") as fh:
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "WANDB_MODE": "disabled"})
    wall = time.perf_counter() - start
    if code != 0:
        tail = log.read_text().splitlines()[-20:]
        raise RuntimeError(f"the chain exited with {code}; see {log}:\n" + "\n".join(tail))
    out = read_chain_report(run_root / name)
    out.update(command=" ".join(cmd[1:]), process_wall_s=round(wall, 1))
    return out


def read_chain_report(run_dir: Path) -> dict:
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no report; is {run_dir} a finished run directory?")
    rep = json.loads(path.read_text())
    stages = [{"stage": r["name"], "layers": r.get("layers"), "steps": r.get("steps"), "fit_s": r.get("fit_time_s"),
               "phases_s": r.get("phases_s", {}), "test_mrr": r["test"].get("mrr"),
               "params_total": r.get("params_total")} for r in rep["stages"]]
    return {"run_dir": str(run_dir), "wall_time_s": rep.get("wall_time_s"), "setup_s": rep.get("setup_s"),
            "untrained_eval_s": rep.get("untrained_eval_s"), "peak_rss_mib": rep.get("peak_rss_mib"),
            "peak_rss_source": "VmHWM of the chain process, read at its end", "stages": stages}
