"""A sweep's trials table in W&B (kgc_kd/sweep/wandb_table.py)."""

import json
import os
import subprocess
import sys


def test_the_sweep_table_run_is_in_the_studys_group(tmp_path):
    """A fresh process (wandb's process-wide state): log_sweep writes one run named <study>/trials in group <study>
    with the trials table."""
    code = f"""
import sys
from kgc_kd.config import load_config
from kgc_kd.sweep.wandb_table import log_sweep
summary = {{"metrics": [{{"name": "last/val_mrr", "goal": "maximize"}}], "method": "grid", "counts": {{"complete": 1}},
           "best": {{"number": 0}}, "trials": [{{"number": 0, "state": "complete", "params": {{"distill.alpha": 0.1}},
           "values": [0.5], "seconds": 3.0, "stages": [{{"name": "g", "val_mrr": 0.5, "test_mrr": 0.4}}]}}]}}
log_sweep(load_config([]), __import__("pathlib").Path(sys.argv[1]), "study-x", summary)
"""
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], env={**os.environ, "WANDB_MODE": "offline"},
                   check=True, capture_output=True, timeout=120)
    (run,) = list((tmp_path / "wandb").glob("offline-run-*"))
    record = next(run.glob("run-*.wandb")).read_bytes()
    assert b"study-x/trials" in record and b"study-x" in record
    (table,) = list((run / "files" / "media").rglob("*.table.json"))
    assert json.loads(table.read_text())["data"][0][:3] == [0, "complete", 0.1]
