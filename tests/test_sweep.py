"""`python -m kgc_kd.sweep`: a tiny study end to end (the teacher trained once, pruning, validation-only selection,
trials.md/json, best.yaml, plots, a rerun that adds nothing, a killed sweep completed by its rerun) and every
bad input exiting 2 before anything trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from kgc_kd.config import load_config
from kgc_kd.sweep import __main__ as sweep
from kgc_kd.sweep.study import open_storage

STAGES = "stages=[{name: a, layers: 2}, {name: b, layers: 1}]"


def _items(plm, root) -> list[str]:
    return ["data=synthetic", f"model.plm={plm}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            "data.batch_size=8", "data.max_length=24", "teacher.epochs=1", "eval.untrained_baseline=false",
            "run.logger=csv", f"run.root={root}", STAGES]


def _file(tmp_path, **spec) -> Path:
    spec = {"name": "tiny", "method": "grid", "metric": {"name": "last/val_mrr", "goal": "maximize"},
            # stage a's learning rate: two sane values and one that wrecks the grade (the pruner's case)
            "parameters": {"stages.0.lr": {"values": [1e-3, 2e-3, 30.0]}}, **spec}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    from conftest import save_tiny_plm

    tmp = tmp_path_factory.mktemp("sweep")
    plm = save_tiny_plm(tmp / "plm", num_layers=4)
    path = _file(tmp)
    argv = [str(path), "--seed", "3", *_items(plm, tmp / "runs")]
    summary = sweep.main(argv)
    return {"tmp": tmp, "plm": plm, "argv": argv, "summary": summary, "out": tmp / "runs" / "sweeps" / "tiny"}


def test_a_sweep_trains_the_teacher_once_and_every_trial_reuses_it(swept):
    store = swept["tmp"] / "runs" / "stage-store"
    assert len([p for p in store.glob("teacher-*") if p.is_dir()]) == 1
    trials = swept["summary"]["trials"]
    assert len(trials) == 3
    reused = [t["stages"][0]["reused"] for t in sorted(trials, key=lambda t: t["number"])]
    assert reused == [False, True, True]


def test_the_bad_trial_is_pruned_at_the_grade_it_falls_behind(swept):
    trials = {t["params"]["stages.0.lr"]: t for t in swept["summary"]["trials"]}
    bad = trials[30.0]
    order = sorted(t["number"] for t in trials.values())
    if bad["number"] != order[-1]:
        pytest.fail(f"the grid's order (seed 3) changed: the wrecked trial is not the last, {order}")
    assert bad["state"] == "pruned" and bad["pruned_at"] == 1 and [s["name"] for s in bad["stages"]] == ["teacher", "a"]
    med = swept["summary"]["grade_medians"]["a"]
    assert bad["stages"][1]["val_mrr"] < med
    assert swept["summary"]["counts"] == {"complete": 2, "pruned": 1, "fail": 0}


def test_selection_uses_validation_only_and_the_table_reports_test_beside_it(swept):
    complete = [t for t in swept["summary"]["trials"] if t["state"] == "complete"]
    for t in complete:  # the study's value is the last grade's best validation MRR, as its report has it
        report = json.loads((Path(t["run_dir"]) / "report.json").read_text())
        assert t["values"] == [report["stages"][-1]["best_val_mrr"]]
        assert t["stages"][-1]["test_mrr"] == report["stages"][-1]["test"]["mrr"]
    best = max(complete, key=lambda t: t["values"][0])
    assert swept["summary"]["best"]["number"] == best["number"] and swept["summary"]["trials"][0] == {**best, "best": True}
    table = (swept["out"] / "trials.md").read_text()
    assert "| b val | b test |" in table and "complete (best)" in table and "pruned at a" in table
    assert "never searched on" in table


def test_best_yaml_is_a_config_fit_accepts_with_the_best_parameters(swept):
    cfg = load_config([f"config={swept['out'] / 'best.yaml'}"])
    best = swept["summary"]["best"]["params"]
    assert cfg.stages[0].lr == best["stages.0.lr"] and cfg.data.source == "synthetic"


def test_the_plots_are_written(swept):
    assert swept["summary"]["plots"] == {"history.png": "written", "importances.png": "written"}
    for name in ("history.png", "importances.png"):
        assert (swept["out"] / name).stat().st_size > 1000


def test_the_same_command_again_adds_no_trials(swept):
    again = sweep.main(swept["argv"])
    assert len(again["trials"]) == 3 and again["counts"] == swept["summary"]["counts"]


@pytest.mark.slow  # a child process killed mid-trial
def test_a_sweep_killed_mid_trial_is_completed_by_its_rerun_without_retraining_finished_stages(tmp_path, tiny_plm_dir):
    from conftest import save_tiny_plm

    plm = save_tiny_plm(tmp_path / "plm4", num_layers=4)
    path = _file(tmp_path, method="random", parameters={"distill.alpha": {"min": 0.0, "max": 0.5}})
    items = [*_items(plm, tmp_path / "runs")[:-1], "stages=[{name: a, layers: 2, epochs: 4}]"]
    argv = [str(path), "--trials", "2", "--heartbeat", "1", *items]
    proc = subprocess.Popen([sys.executable, "-m", "kgc_kd.sweep", *argv], start_new_session=True,
                            env={**os.environ, "WANDB_MODE": "disabled"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = tmp_path / "runs" / "stage-store"
    deadline = time.time() + 240
    while time.time() < deadline and not list(store.glob("a-*/checkpoints/last.ckpt")):
        time.sleep(0.5)  # the teacher is done and stage a has saved an epoch
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (teacher,) = [p for p in store.glob("teacher-*") if p.is_dir()]
    stamp = (teacher / "stage.json").stat().st_mtime_ns
    summary = sweep.main(argv)
    assert summary["counts"] == {"complete": 2, "pruned": 0, "fail": 0}
    assert any(t["retry_of"] == 0 for t in summary["trials"])  # the killed trial, retried with its parameters
    assert (teacher / "stage.json").stat().st_mtime_ns == stamp  # the teacher was not trained again
    study = optuna.load_study(study_name="tiny", storage=open_storage(f"sqlite:///{tmp_path / 'runs/sweeps/tiny/study.db'}"))
    assert [t.state.name for t in study.trials].count("FAIL") == 1


def test_a_trials_items_tag_its_wandb_runs_with_the_study_and_the_trial_beside_their_own_tags(tmp_path):
    from kgc_kd.config import config_hash, load
    from kgc_kd.sweep.space import load_space
    from kgc_kd.sweep.trial import trial_items, trial_plan

    space = load_space(_file(tmp_path))
    items = ["data=synthetic", STAGES, "run.wandb_tags=[mine, study:old]"]
    tagged = trial_items(space, items, {"stages.0.lr": 0.001}, "tiny", 7)
    assert tagged[-1] == "run.wandb_tags=[mine, 'study:tiny', 'trial:7']"
    cfg = load(tagged)[0]
    assert list(cfg.run.wandb_tags) == ["mine", "study:tiny", "trial:7"] and cfg.run.wandb_group == "tiny"
    plan = trial_plan(space, items, {"stages.0.lr": 0.001}, "tiny", 7)
    assert list(plan.cfg.run.wandb_tags) == ["mine", "study:tiny", "trial:7"]
    # the tags are not what a stage trains: the run name (and every stage key) is the trial number's own
    assert plan.run_name == trial_plan(space, items, {"stages.0.lr": 0.001}, "tiny", 8).run_name
    assert config_hash(cfg) == config_hash(load(tagged[:-1])[0])


def _records(run_dir: Path) -> list[dict]:
    """An offline run's records as wandb's own reader prints them (`wandb leet inspect --json`)."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _tags(run_dir: Path) -> set[str]:
    """A run's tags as its last run record has them (a run marked later is recorded again)."""
    return set([r for r in _records(run_dir) if r.get("type") == "run"][-1]["run"].get("tags", []))


@pytest.mark.slow  # a 3-trial sweep with W&B offline, in a process of its own
def test_a_sweep_with_wandb_names_its_metric_and_each_trials_runs(tmp_path):
    """`python -m kgc_kd.sweep FILE --trials 3` with run.logger=wandb (offline): the study's metric names are
    Optuna's (load_study, the optuna CLI); each trial's user attributes name its W&B group and runs, which are the
    offline runs under its run directory, tagged with the study and the trial; the trials table W&B holds has
    a number per stage figure; the pruned trial's row says so."""
    from conftest import save_tiny_plm

    plm = save_tiny_plm(tmp_path / "plm", num_layers=4)
    root = tmp_path / "runs"
    items = [i for i in _items(plm, root) if i != "run.logger=csv"] + ["run.logger=wandb"]
    proc = subprocess.run([sys.executable, "-m", "kgc_kd.sweep", str(_file(tmp_path)), "--trials", "3", "--seed", "3",
                           *items], env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    url = f"sqlite:///{root / 'sweeps' / 'tiny' / 'study.db'}"
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.metric_names == ["last/val_mrr"]
    cli = subprocess.run([str(Path(sys.executable).with_name("optuna")), "trials", "--study-name", "tiny", "--storage",
                          url, "-f", "json"], capture_output=True, text=True, timeout=120, check=True)
    assert all(set(row["value"]) == {"last/val_mrr"} for row in json.loads(cli.stdout))

    offline = {p.name.rsplit("-", 1)[1]: p for p in root.glob("*/wandb/offline-run-*")}
    for t in study.trials:
        assert t.user_attrs["wandb_group"] == "tiny" and t.user_attrs["wandb_project"] == "kgc-kd"
        runs, run_dir = t.user_attrs["wandb_runs"], Path(t.user_attrs["run_dir"])
        trained = [s["name"] for s in t.user_attrs["stages"] if not s["reused"]]
        assert trained and set(trained) <= set(runs), (t.number, runs)
        assert set(runs.values()) <= set(offline)  # every id is an offline run of the sweep
        for stage in trained:  # this trial's own runs: under its run directory, tagged with the study and trial
            assert offline[runs[stage]].parent.parent == run_dir
            assert {"study:tiny", f"trial:{t.number}"} <= _tags(offline[runs[stage]])
        assert offline[t.user_attrs["wandb_report_run"]].parent.parent == run_dir  # the chain's report run
        assert {"study:tiny", f"trial:{t.number}"} <= _tags(offline[t.user_attrs["wandb_report_run"]])
    (pruned,) = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    runs = pruned.user_attrs["wandb_runs"]
    assert "a" in runs and "b" not in runs  # its last stage's run, named before the pruner stopped it; no other's
    for run in (runs["a"], pruned.user_attrs["wandb_report_run"]):  # marked pruned (the driver, on TrialPruned)
        assert "pruned" in _tags(offline[run])
        assert any(r.get("summary", {}).get("update", {}).get("outcome") == "pruned" for r in _records(offline[run]))

    (table,) = (root / "sweeps" / "tiny" / "wandb").glob("offline-run-*/files/media/**/*.table.json")
    table = json.loads(table.read_text())
    rows = {r["trial"]: r for r in (dict(zip(table["columns"], row)) for row in table["data"])}
    assert rows[pruned.number]["state"] == "pruned" and rows[pruned.number]["pruned_at"] == "a"
    assert isinstance(rows[pruned.number]["a/val_mrr"], float) and rows[pruned.number]["b/val_mrr"] is None
    best = study.best_trial
    assert rows[best.number]["value/last/val_mrr"] == best.value == rows[best.number]["b/val_mrr"]
    assert rows[best.number]["wandb_group"] == "tiny" and rows[best.number]["b/wandb_run"] == best.user_attrs[
        "wandb_runs"]["b"]


# ---- the command line ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, options, named", [
    ({"name": "../../x"}, [], "name='../../x'"),  # the file's name: the study's directory would leave run.root
    ({}, ["--study", "a/b"], "--study='a/b'"),
    ({}, ["--study", ".."], "--study='..'"),
    ({"name": "x y"}, [], "name='x y'"),
])
def test_a_study_name_that_is_not_one_name_exits_2_and_writes_nothing_inside_or_outside_the_root(
        tmp_path, monkeypatch, capsys, change, options, named):
    import kgc_kd.chain.driver

    monkeypatch.setattr(kgc_kd.chain.driver, "run_chain", lambda *a, **k: pytest.fail("a trial ran"))
    (tmp_path / "home" / "runs").mkdir(parents=True)
    path = _file(tmp_path, **change)
    with pytest.raises(SystemExit) as exc:
        sweep.main([str(path), *options, "data=synthetic", STAGES, f"run.root={tmp_path / 'home' / 'runs'}"])
    assert exc.value.code == 2
    assert named in capsys.readouterr().err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["home", "home/runs", "tiny.yaml"]


def test_a_study_directory_that_leads_out_of_the_root_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import kgc_kd.chain.driver

    monkeypatch.setattr(kgc_kd.chain.driver, "run_chain", lambda *a, **k: pytest.fail("a trial ran"))
    (tmp_path / "runs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / "sweeps").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(SystemExit) as exc:
        sweep.main([str(_file(tmp_path)), "data=synthetic", STAGES, f"run.root={tmp_path / 'runs'}"])
    assert exc.value.code == 2 and "lies outside its root" in capsys.readouterr().err
    assert list((tmp_path / "elsewhere").iterdir()) == []

def test_help_shows_the_file_the_options_the_items_and_the_docs(capsys):
    from test_cli import check_help

    check_help(capsys, sweep.main, "--help", "python -m kgc_kd.sweep ",
               ("FILE [ITEM ...]", "--trials", "--study", "--storage", "--workers", "--pruner", "config=PATH",
                "GROUP=PRESET", "key=value", "docs/sweeps.md", "optuna-dashboard"))


def test_unknown_option_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        sweep.main([str(_file(tmp_path)), "--bogus"])
    assert exc.value.code == 2 and "error: unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize("change, items, options, named", [
    ({}, ["trainer.max_epoch=3"], [], "trainer.max_epoch"),  # an item for every trial
    ({"parameters": {"distill.alphx": {"values": [0.1, 0.2]}}}, [], [], "distill.alphx"),  # a parameter's key
    ({"parameters": {"distill.alpha": {"values": [0.1, 1.5]}}}, [], [], "distill.alpha=1.5"),  # a bad value
    ({"parameters": {"distill.alpha": {"min": 0.4, "max": 0.1}}, "method": "random"}, [], [], "inverted range"),
    ({"metric": {"name": "b/mrr"}}, [], [], "test metric"),
    ({"metric": {"name": "pmd9/val_mrr"}}, [], [], "no stage 'pmd9'"),
    ({}, [], ["--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open the study storage"),
    ({}, [], ["--trials", "0"], "--trials 0"),
])
def test_bad_input_exits_2_naming_it_before_anything_trains(tmp_path, monkeypatch, capsys, change, items, options,
                                                            named):
    import kgc_kd.chain.driver

    monkeypatch.setattr(kgc_kd.chain.driver, "run_chain", lambda *a, **k: pytest.fail("a trial ran"))
    path = _file(tmp_path, **change)
    root = tmp_path / "runs"
    with pytest.raises(SystemExit) as exc:
        sweep.main([str(path), *options, "data=synthetic", STAGES, f"run.root={root}", *items])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err, err
    assert not (root / "stage-store").exists()
