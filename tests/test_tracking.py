import json
import os
import subprocess
import sys

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
