import json
import os
import subprocess
import sys

import pytest

from kgc_kd.chain import tracking


def test_offline_wandb_writes_one_run_per_stage_and_a_report(tmp_path, plm4):
    # a fresh process: wandb keeps process-wide state from the disabled-mode runs of other tests
    env = {**os.environ, "WANDB_MODE": "offline"}
    subprocess.run([sys.executable, "-m", "kgc_kd.fit", "data=synthetic", f"model.plm={plm4}", "trainer.max_epochs=1", "trainer.accelerator=cpu",
              "data.batch_size=8", "data.max_length=24", f"run.root={tmp_path / 'runs'}", "run.name=wb",
              "run.logger=wandb", "trainer.enable_progress_bar=false", "eval.untrained_baseline=false",
              "stages=[{name: s2, layers: 2}]"], env=env, check=True, capture_output=True, timeout=300)
    # Directory names hold a timestamp to the second and a random id: runs started within one second sort in
    # random order, so each run is found by its name inside its records.
    runs = list((tmp_path / "runs" / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 3  # teacher, s2, report
    records = {r: next(r.glob("run-*.wandb")).read_bytes() for r in runs}
    by_name = {}
    for name in ("wb/teacher", "wb/s2"):  # the run's name; each stage is its own run in group "wb"
        (by_name[name],) = [r for r, data in records.items() if name.encode() in data]
        for key in (b"train/loss", b"val/mrr", b"test/mrr"):
            assert key in records[by_name[name]]
    assert b"train/score" in records[by_name["wb/s2"]] and b"train/score" not in records[by_name["wb/teacher"]]
    (report_run,) = set(runs) - set(by_name.values())
    report = report_run / "files" / "media"
    (table,) = list(report.rglob("*.table.json"))
    rows = json.loads(table.read_text())["data"]
    assert [r[0] for r in rows] == ["teacher", "s2"]
    assert list(report.rglob("*.png"))


def test_under_a_wandb_agent_the_agents_run_is_the_report_and_holds_the_sweep_metric(tmp_path, plm4):
    """`wandb agent` starts fit with its sweep's run id in the environment and reads the sweep's metric from that
    run: the stage runs get their own ids, the report run takes the agent's id and sweep and its summary holds
    every stage's validation figure (`s2/val_mrr`, `last/val_mrr`), even with run.logger=csv."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SWEEP_ID": "swp12345", "WANDB_RUN_ID": "agentrun1"}
    subprocess.run([sys.executable, "-m", "kgc_kd.fit", "data=synthetic", f"model.plm={plm4}", "trainer.max_epochs=1",
                    "trainer.accelerator=cpu", "data.batch_size=8", "data.max_length=24", f"run.root={tmp_path / 'runs'}",
                    "run.name=wb", "run.logger=csv", "trainer.enable_progress_bar=false", "eval.untrained_baseline=false",
                    "stages=[{name: s2, layers: 2}]"], env=env, check=True, capture_output=True, timeout=300)
    runs = list((tmp_path / "runs" / "wb" / "wandb").glob("offline-run-*"))
    (agent_run,) = [r for r in runs if r.name.endswith("-agentrun1")]
    assert len(runs) == 1  # run.logger=csv: no stage runs, but the agent's run is still written
    record = next(agent_run.glob("run-*.wandb")).read_bytes()
    for key in (b"swp12345", b"last/val_mrr", b"s2/val_mrr", b"teacher/val_mrr", b"s2/test_mrr", b"s2/params_total"):
        assert key in record, key


def test_summary_figures_name_every_stage_and_the_last():
    rows = [{"name": "teacher", "best_val_mrr": 0.5, "test": {"mrr": 0.4}, "params_total": 10},
            {"name": "g", "best_val_mrr": 0.3, "test": {"mrr": 0.2}, "params_total": 4}]
    figs = tracking.summary_figures(rows)
    assert figs["teacher/val_mrr"] == 0.5 and figs["g/test_mrr"] == 0.2 and figs["last/val_mrr"] == 0.3
    assert figs["last/params_total"] == 4 and "teacher/queries_per_s" not in figs


def test_wandb_mode_is_offline_without_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert tracking.wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking.wandb_mode() == "disabled"


def test_the_sweep_table_run_is_in_the_studys_group(tmp_path):
    """A fresh process (wandb's process-wide state): log_sweep writes one run named <study>/trials in group <study>
    with the trials table."""
    code = f"""
import sys
from kgc_kd.config import load_config
from kgc_kd.chain import tracking
summary = {{"metrics": [{{"name": "last/val_mrr", "goal": "maximize"}}], "method": "grid", "counts": {{"complete": 1}},
           "best": {{"number": 0}}, "trials": [{{"number": 0, "state": "complete", "params": {{"distill.alpha": 0.1}},
           "values": [0.5], "seconds": 3.0, "stages": [{{"name": "g", "val_mrr": 0.5, "test_mrr": 0.4}}]}}]}}
tracking.log_sweep(load_config([]), __import__("pathlib").Path(sys.argv[1]), "study-x", summary)
"""
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], env={**os.environ, "WANDB_MODE": "offline"},
                   check=True, capture_output=True, timeout=120)
    (run,) = list((tmp_path / "wandb").glob("offline-run-*"))
    record = next(run.glob("run-*.wandb")).read_bytes()
    assert b"study-x/trials" in record and b"study-x" in record
    (table,) = list((run / "files" / "media").rglob("*.table.json"))
    assert json.loads(table.read_text())["data"][0][:3] == [0, "complete", 0.1]
