import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kgc_kd.chain import tracking


def test_offline_wandb_writes_one_run_per_stage_and_a_report(tmp_path, plm4):
    """As a new user runs it: no WANDB_MODE and no API key (HOME and NETRC without one), so the runs are offline by
    kgc-kd's default (`tracking.wandb_mode`), not by the environment. A fresh process: wandb keeps process-wide
    state from the disabled-mode runs of other tests."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}, "HOME": str(tmp_path),
           "NETRC": str(tmp_path / ".netrc")}
    subprocess.run([sys.executable, "-m", "kgc_kd.fit", "data=synthetic", f"model.plm={plm4}", "trainer.max_epochs=1", "trainer.accelerator=cpu",
              "data.batch_size=8", "data.max_length=24", f"run.root={tmp_path / 'runs'}", "run.name=wb",
              "run.logger=wandb", "trainer.enable_progress_bar=false", "eval.untrained_baseline=false",
              "stages=[{name: s2, layers: 2}]", "teacher.epochs=1"], env=env, check=True, capture_output=True, timeout=300)
    # each stage is its own run in group "wb", named `<run name>/<stage>`, read back with wandb's own reader
    runs = runs_by_name(tmp_path / "runs" / "wb" / "wandb")
    assert set(runs) == {"wb/teacher", "wb/s2", "wb/report"}
    logged = {}
    for name in ("wb/teacher", "wb/s2"):
        assert runs[name]["summary"]["state"] == "finished"
        logged[name] = {k for r in runs[name]["records"] if r["type"] == "history" for k in r["history"]["item"]}
        assert {"train/loss", "val/mrr", "test/mrr"} <= logged[name]
    assert "train/score" in logged["wb/s2"] and "train/score" not in logged["wb/teacher"]
    report = Path(runs["wb/report"]["summary"]["file"]).parent / "files" / "media"
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


# ---- issue 29: stage runs read back with wandb's own reader (`wandb leet inspect --json`) -------------------
def leet(path, summary: bool = False):
    """An offline run's .wandb log as wandb's own reader prints it: its records (one JSON object a line) or, with
    `summary`, one object (state, tags, summary, ...)."""
    flags = ["--summary"] if summary else []
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(path)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return json.loads(out) if summary else [json.loads(line) for line in out.splitlines() if line.strip()]


def runs_by_name(wandb_dir) -> dict[str, dict]:
    """Every offline run under `wandb_dir` by its W&B name: its `--summary` object and its records."""
    out = {}
    for d in wandb_dir.glob("offline-run-*"):
        summary = leet(d, summary=True)
        out[summary["name"]] = {"summary": summary, "records": leet(d)}
    return out


@pytest.fixture(scope="module")
def logged_chain(tmp_path_factory):
    """A 2-batch chain teacher -> s2 logged offline with `run.wandb_log_model=true` and a sweep trial's tags."""
    from conftest import save_tiny_plm

    tmp = tmp_path_factory.mktemp("wb")
    plm = save_tiny_plm(tmp / "plm4", num_layers=4)
    env = {**os.environ, "WANDB_MODE": "offline"}
    subprocess.run([sys.executable, "-m", "kgc_kd.fit", "data=synthetic", f"model.plm={plm}", "trainer.max_epochs=1",
                    "teacher.epochs=1", "trainer.accelerator=cpu", "data.batch_size=8", "data.max_length=24",
                    "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", f"run.root={tmp / 'runs'}",
                    "run.name=wbc", "run.logger=wandb", "trainer.enable_progress_bar=false", "run.seed=7",
                    "eval.untrained_baseline=false", "stages=[{name: s2, layers: 2}]", "distill=mgd",
                    "run.wandb_log_model=true", "run.wandb_tags=[study:st, trial:3]"],
                   env=env, check=True, capture_output=True, timeout=300)
    run_dir = tmp / "runs" / "wbc"
    rows = {r["name"]: r for r in json.loads((run_dir / "report.json").read_text())["stages"]}
    return runs_by_name(run_dir / "wandb"), rows


SUMMARY_KEYS = ("params/total", "params/no_embeddings", "model/layers", "model/vocab_size",
                "compression/params_total", "compression/params_no_embeddings", "time/fit_s", "time/data_s",
                "time/train_s", "time/eval_s", "time/export_s", "memory/peak_rss_mib", "best/val_mrr", "best/test_mrr")


def test_stage_runs_hold_tags_sizes_timings_and_the_best_val_mrr(logged_chain):
    runs, rows = logged_chain
    for stage in ("teacher", "s2"):
        run, row = runs[f"wbc/{stage}"], rows[stage]
        s = run["summary"]
        assert s["state"] == "finished"
        assert set(s["tags"]) == {"data:synthetic", "objective:mgd", "seed:7", f"stage:{stage}", "study:st", "trial:3"}
        summary = s["summary"]
        assert all(k in summary for k in SUMMARY_KEYS), [k for k in SUMMARY_KEYS if k not in summary]
        assert summary["params/total"] == row["params_total"] and summary["model/layers"] == row["layers"]
        assert summary["model/vocab_size"] == row["vocab_size"]
        # val/mrr summarised as its max over the stage, on Lightning's step axis
        assert summary["val/mrr"] == {"max": pytest.approx(row["best_val_mrr"])}
        metrics = [r["metric"] for r in run["records"] if r["type"] == "metric"]
        assert {"name": "val/mrr", "step_metric": "trainer/global_step", "summary": {"max": True}} in [
            {k: m.get(k) for k in ("name", "step_metric", "summary")} for m in metrics]
        # the row names its W&B run (a sweep's trial reads it)
        assert row["wandb_run"]["id"] == s["run_id"] and row["wandb_run"]["group"] == "wbc"
    teacher, student = rows["teacher"], rows["s2"]
    assert runs["wbc/teacher"]["summary"]["summary"]["compression/params_total"] == 1
    assert runs["wbc/s2"]["summary"]["summary"]["compression/params_total"] == pytest.approx(
        teacher["params_total"] / student["params_total"], rel=1e-3)
    assert set(runs["wbc/report"]["summary"]["tags"]) == {"data:synthetic", "objective:mgd", "seed:7", "study:st",
                                                          "trial:3"}


def test_each_stage_export_is_a_model_artifact_naming_its_teacher(logged_chain):
    runs, rows = logged_chain
    arts = {}
    for stage in ("teacher", "s2"):
        (art,) = [r["artifact"] for r in runs[f"wbc/{stage}"]["records"]
                  if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
        arts[stage] = art
        assert {stage, "wbc"} <= set(art["aliases"]) and art["name"] == f"synthetic-{stage}"
        files = {e["path"] for e in art["manifest"]["contents"]}
        assert "biencoder.json" in files and any(f.startswith("query/") for f in files)  # the export, not a .ckpt
        assert not any(f.endswith(".ckpt") or f.startswith("token-cache/") for f in files)  # nor the token table
    assert json.loads(arts["teacher"]["metadata"])["teacher_artifact"] is None
    assert json.loads(arts["s2"]["metadata"])["teacher_artifact"] == "synthetic-teacher:wbc"
    assert rows["s2"]["wandb_run"]["artifact"]["teacher_artifact"] == "synthetic-teacher:wbc"


FINISH_SCRIPT = r"""
import sys, wandb
from kgc_kd.chain import tracking
from kgc_kd.chain.plan import plan_config
from kgc_kd.config import load_config

items = ["data=synthetic", f"run.root={sys.argv[1]}", "run.name=fin", "run.wandb_tags=[trial:1]"]
plan = plan_config(load_config(items))
report = wandb.init(**tracking.init_kwargs(plan, "report", "report", {}))  # open beside the stage runs
tracking.stage_logger(plan, "teacher", {})
tracking.finish_open_stage({"name": "teacher", "params_total": 10, "layers": 4, "phases_s": {"train": 1.5}})
tracking.finish_open_stage()  # nothing open: nothing happens
tracking.stage_logger(plan, "pmd6", {})
assert tracking.open_stage_run("pmd6")["name"] == "fin/pmd6"
tracking.finish_open_stage({"name": "pmd6", "params_total": 5}, outcome="pruned")
tracking.stage_logger(plan, "pmd4", {})  # left open: the process's exit finishes it
report.log({"after": 1})  # the report run is still open
report.finish()
print(sorted(tracking.stage_runs()))
"""


def test_finish_open_stage_finishes_its_own_run_once_and_marks_the_outcome(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    out = subprocess.run([sys.executable, "-c", FINISH_SCRIPT, str(tmp_path)], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    assert "['pmd4', 'pmd6', 'teacher']" in out
    runs = runs_by_name(tmp_path / "fin" / "wandb")
    assert set(runs) == {"fin/report", "fin/teacher", "fin/pmd6", "fin/pmd4"}
    teacher = runs["fin/teacher"]["summary"]
    assert teacher["state"] == "finished" and teacher["summary"]["params/total"] == 10
    assert teacher["summary"]["time/train_s"] == 1.5 and "outcome" not in teacher["summary"]
    assert "stage:teacher" in teacher["tags"] and "trial:1" in teacher["tags"]
    pruned = runs["fin/pmd6"]["summary"]
    assert "pruned" in pruned["tags"] and pruned["summary"]["outcome"] == "pruned"
    assert [r for r in runs["fin/pmd6"]["records"] if r["type"] == "exit"][0]["exit"].get("exit_code", 0) == 0
    left = runs["fin/pmd4"]["summary"]
    assert "interrupted" in left["tags"] and left["summary"]["outcome"] == "interrupted"
    assert runs["fin/report"]["summary"]["summary"]["after"] == 1
