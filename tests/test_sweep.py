import json
from pathlib import Path

import pytest
import yaml

from kgc_kd import sweep

SWEEPS = sorted((Path(__file__).resolve().parents[1] / "experiments" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweep_files_parse_and_expand_to_config_keys(path):
    from kgc_kd.config import load_config

    spec = sweep.load_sweep(path)
    for trial in sweep.trials(spec, count=3):
        load_config([f"{k}={v}" for k, v in trial.items()])  # every parameter is a real config key


def test_grid_and_random_expansion():
    spec = {"method": "grid", "metric": {"name": "last/mrr"},
            "parameters": {"a": {"values": [1, 2]}, "b": {"values": ["x", "y"]}, "c": {"value": 0}}}
    assert sweep.trials(spec, None) == [{"a": 1, "b": "x", "c": 0}, {"a": 1, "b": "y", "c": 0},
                                        {"a": 2, "b": "x", "c": 0}, {"a": 2, "b": "y", "c": 0}]
    assert len(sweep.trials(spec, 3)) == 3
    rnd = {**spec, "method": "random", "parameters": {"lr": {"min": 0.1, "max": 0.2}, "k": {"min": 1, "max": 3}}}
    draws = sweep.trials(rnd, 20, seed=1)
    assert len(draws) == 20 and all(0.1 <= d["lr"] <= 0.2 and d["k"] in (1, 2, 3) for d in draws)
    assert draws == sweep.trials(rnd, 20, seed=1)


def test_bad_sweep_files_are_clear_errors(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("parameters: {}\n")
    with pytest.raises(sweep.SweepError, match="parameters"):
        sweep.load_sweep(bad)
    bad.write_text("parameters: {a: {values: [1]}}\nmetric: {name: x, goal: up}\n")
    with pytest.raises(sweep.SweepError, match="goal"):
        sweep.load_sweep(bad)


def test_metric_lookup_and_ranking(tmp_path):
    report = {"stages": [{"name": "teacher", "test": {"mrr": 0.5}}, {"name": "s2", "test": {"mrr": 0.4}}]}
    assert sweep.metric_value(report, "teacher/mrr") == 0.5 and sweep.metric_value(report, "last/mrr") == 0.4
    with pytest.raises(sweep.SweepError, match="nope"):
        sweep.metric_value(report, "nope/mrr")


def test_local_sweep_runs_four_trials_and_ranks_them(tmp_path, tiny_plm_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    spec = {"name": "tiny", "method": "grid", "metric": {"name": "teacher/mrr", "goal": "maximize"},
            "parameters": {"optim.lr": {"values": [1e-4, 3e-3]}, "model.temperature": {"values": [0.05, 0.1]}},
            "fixed": ["data=synthetic", f"model.plm={tiny_plm_dir}", "trainer.accelerator=cpu", "teacher.only=true",
                      "teacher.epochs=1", "data.batch_size=8", "data.max_length=24", "run.logger=none",
                      "eval.untrained_baseline=false", "trainer.enable_progress_bar=false"]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    ranked = sweep.main([str(path), "--count", "4", "--root", str(tmp_path / "sweeps")])
    assert len(ranked) == 4 and all(r["returncode"] == 0 for r in ranked)
    values = [r["value"] for r in ranked]
    assert values == sorted(values, reverse=True)
    for r in ranked:  # each trial is a normal run whose report holds the ranked value
        report = json.loads((Path(r["run"]) / "report.json").read_text())
        assert report["stages"][0]["test"]["mrr"] == r["value"]
    table = (tmp_path / "sweeps" / "tiny" / "trials.md").read_text()
    assert table.count("\n| ") == 4 and "teacher/mrr" in table


# ---- the command line ---------------------------------------------------------------------------------------
def test_help_shows_the_file_the_items_the_groups_and_the_docs(capsys):
    from test_cli import check_help

    check_help(capsys, sweep.main, "--help", "python -m kgc_kd.sweep ",
               ("FILE [ITEM ...]", "--count", "--local", "--root", "config=PATH", "GROUP=PRESET", "key=value",
                "docs/sweeps.md"))


def test_unknown_option_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        sweep.main([str(SWEEPS[0]), "--bogus"])
    assert exc.value.code == 2 and "error: unrecognized arguments: --bogus" in capsys.readouterr().err


def test_bad_item_parameter_or_file_exits_2_before_any_trial(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(sweep, "run_trial", lambda *a, **k: pytest.fail("a trial ran"))
    spec = {"method": "grid", "metric": {"name": "last/mrr"}, "parameters": {"distill.alpha": {"values": [0.1]}}}
    cases = [({}, ["trainer.max_epoch=3"], "trainer.max_epoch"),  # an item for every trial
             ({"parameters": {"distill.alphx": {"values": [0.1, 0.2]}}}, [], "distill.alphx"),  # a parameter name
             ({"metric": {"name": "last/mrr", "goal": "up"}}, [], "goal")]  # the file itself
    path = tmp_path / "s.yaml"
    for change, items, named in cases:
        path.write_text(yaml.safe_dump({**spec, **change}))
        with pytest.raises(SystemExit) as exc:
            sweep.main([str(path), *items, "--root", str(tmp_path / "sweeps")])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and named in err
    assert not (tmp_path / "sweeps").exists()
