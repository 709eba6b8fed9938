"""A sweep's trials table in W&B (kgc_kd/sweep/wandb_table.py)."""

import json
import os
import subprocess
import sys


def test_the_sweep_table_run_is_in_the_studys_group_with_numeric_columns(tmp_path):
    """A fresh process (wandb's process-wide state): log_sweep writes one run named <study>/trials in group <study>,
    tagged with the study, whose trials table W&B can plot: one number per metric and per stage figure, the state a
    word, the trial an int; a pruned trial's row says pruned and where."""
    code = f"""
import sys
from kgc_kd.config import load_config
from kgc_kd.sweep.wandb_table import log_sweep
summary = {{"metrics": [{{"name": "last/val_mrr", "goal": "maximize"}}], "method": "grid", "counts": {{"complete": 1}},
           "stage_names": ["teacher", "g"], "best": {{"number": 0}},
           "trials": [{{"number": 0, "state": "complete", "params": {{"distill.alpha": 0.1}}, "values": [0.5],
                        "seconds": 3.0, "pruned_at": None, "retry_of": None, "run_dir": "runs/x", "best": True,
                        "wandb_group": "study-x", "wandb_report_run": "rep0",
                        "wandb_runs": {{"g": "run0g"}},
                        "stages": [{{"name": "teacher", "val_mrr": 0.6, "test_mrr": 0.55, "params_total": 900}},
                                   {{"name": "g", "val_mrr": 0.5, "test_mrr": 0.4, "params_total": 300}}]}},
                      {{"number": 1, "state": "pruned", "params": {{"distill.alpha": 0.4}}, "values": None,
                        "seconds": 2.0, "pruned_at": 1, "retry_of": None, "run_dir": "runs/y",
                        "stages": [{{"name": "teacher", "val_mrr": 0.6, "test_mrr": 0.55, "params_total": 900}},
                                   {{"name": "g", "val_mrr": 0.1, "test_mrr": 0.1, "params_total": 300}}]}}]}}
log_sweep(load_config([]), __import__("pathlib").Path(sys.argv[1]), "study-x", summary)
"""
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], env={**os.environ, "WANDB_MODE": "offline"},
                   check=True, capture_output=True, timeout=120)
    (run,) = list((tmp_path / "wandb").glob("offline-run-*"))
    record = next(run.glob("run-*.wandb")).read_bytes()
    assert b"study-x/trials" in record and b"study:study-x" in record
    (table,) = list((run / "files" / "media").rglob("*.table.json"))
    table = json.loads(table.read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert rows[0]["trial"] == 0 and rows[0]["state"] == "complete" and rows[0]["distill.alpha"] == 0.1
    assert rows[0]["value/last/val_mrr"] == 0.5 and rows[0]["g/val_mrr"] == 0.5 and rows[0]["g/test_mrr"] == 0.4
    assert rows[0]["teacher/params_total"] == 900 and rows[0]["wandb_report_run"] == "rep0"
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in rows[0].items()
               if k.startswith("value/") or k.endswith(("/val_mrr", "/test_mrr", "/params_total"))
               or k in ("trial", "rank", "seconds"))
    assert rows[0]["g/wandb_run"] == "run0g" and rows[0]["teacher/wandb_run"] is None
    assert (rows[1]["state"], rows[1]["pruned_at"], rows[1]["value/last/val_mrr"], rows[1]["g/val_mrr"]) == (
        "pruned", "g", None, 0.1)
