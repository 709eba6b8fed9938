"""The report run of a chain (kgc_kd/chain/wandb_report.py), read back with wandb's reader (`wandb leet inspect`):
open during the chain, a history step per stage, the stage table, the scatter, the summary; a pruned chain's run."""

import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from kgc_kd.chain import wandb_report
from wandb_records import offline_runs, read_run, table

TINY = ["data=synthetic", "trainer.max_epochs=1", "trainer.accelerator=cpu", "data.batch_size=8", "data.max_length=24",
        "trainer.enable_progress_bar=false", "eval.untrained_baseline=false", "eval.save_predictions=false"]


def _runs_by_name(wandb_dir) -> dict[str, dict]:
    runs = [read_run(d) for d in offline_runs(wandb_dir)]
    return {r["summary"]["name"]: r for r in runs}


def test_the_report_run_is_open_during_the_chain_with_a_step_per_stage_a_numeric_table_and_a_scatter(tmp_path,
                                                                                                     plm4):
    """run.logger=wandb: the report run starts before the teacher's run and ends after the last stage's; its
    history has one step per stage (step = the stage's index) with `<stage>/...`, `stage/...` and `last/...`;
    the table's columns besides the stage's name are numbers; the scatter of test MRR against parameters is an
    interactive W&B chart over that table; the summary has every stage's figures."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    for k in wandb_report.AGENT_ENV:
        env.pop(k, None)
    subprocess.run([sys.executable, "-m", "kgc_kd.fit", *TINY, f"model.plm={plm4}", f"run.root={tmp_path / 'runs'}",
                    "run.name=wb", "run.logger=wandb", "stages=[{name: s2, layers: 2}, {name: s1, layers: 1}]"],
                   env=env, check=True, capture_output=True, timeout=300)
    runs = _runs_by_name(tmp_path / "runs" / "wb" / "wandb")
    assert set(runs) == {"wb/report", "wb/teacher", "wb/s2", "wb/s1"}
    report = runs["wb/report"]
    assert report["summary"]["state"] == "finished" and report["run"]["job_type"] == "report"
    assert report["summary"]["start_time"] < runs["wb/teacher"]["summary"]["start_time"]  # open during the chain

    steps = {h["_step"]: h for h in report["history"] if "stage/index" in h}
    assert sorted(steps) == [0, 1, 2]
    result = yaml.safe_load((tmp_path / "runs" / "wb" / "report.json").read_text())
    for i, row in enumerate(result["stages"]):
        step, name = steps[i], row["name"]
        assert step["stage/index"] == i
        for key, value in (("val_mrr", row["best_val_mrr"]), ("test_mrr", row["test"]["mrr"]),
                           ("params_total", row["params_total"])):
            assert step[f"{name}/{key}"] == step[f"stage/{key}"] == step[f"last/{key}"] == pytest.approx(value)
    metrics = [r["metric"] for r in report["records"] if r["type"] == "metric"]
    assert {"glob_name": "stage/*", "step_metric": "stage/index"}.items() <= \
        {k: v for m in metrics for k, v in m.items() if k in ("glob_name", "step_metric")}.items()

    stages = table(report, "report/stages")
    assert [row[0] for row in stages["data"]] == ["teacher", "s2", "s1"]
    for row in stages["data"]:
        assert all(v is None or isinstance(v, (int, float)) for v in row[1:]), row
    cols = stages["columns"]
    assert [row[cols.index("params_total")] for row in stages["data"]] == [r["params_total"] for r in result["stages"]]

    chart = report["config"]["_wandb.visualize.report/test_mrr_vs_params"]["panel_config"]
    assert chart["panelDefId"] == "wandb/scatter/v0" and chart["fieldSettings"] == {"x": "params_total", "y": "test_mrr"}
    scatter = table(report, "report/test_mrr_vs_params_table")
    assert [r[scatter["columns"].index("test_mrr")] for r in scatter["data"]] == \
        pytest.approx([r["test"]["mrr"] for r in result["stages"]])

    summary = report["summary"]["summary"]
    for row in result["stages"]:
        assert summary[f"{row['name']}/val_mrr"] == pytest.approx(row["best_val_mrr"])
    assert summary["last/val_mrr"] == pytest.approx(result["stages"][-1]["best_val_mrr"])
    assert "report/mrr_vs_params" in summary  # the static plot too


PRUNED = textwrap.dedent("""
    import sys, optuna
    from kgc_kd.chain import wandb_report
    from kgc_kd.chain.driver import run_chain
    from kgc_kd.config import load_config

    def on_stage(i, row):
        if i == 1:
            raise optuna.TrialPruned()

    try:
        run_chain(load_config(sys.argv[1:]), on_stage=on_stage)
    except optuna.TrialPruned:
        print("REPORT_RUN_ID", wandb_report.current_run_id())
""")


def test_a_chain_pruned_after_a_stage_finishes_its_report_run_marked_pruned(tmp_path, plm4):
    """on_stage raising optuna.TrialPruned after stage 1: the report run ends with the two stages done (their
    steps, table and summary), tagged and summarised `pruned`; its id stays readable (current_run_id)."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    for k in wandb_report.AGENT_ENV:
        env.pop(k, None)
    out = subprocess.run([sys.executable, "-c", PRUNED, *TINY, f"model.plm={plm4}", f"run.root={tmp_path / 'runs'}",
                          "run.name=pr", "run.logger=csv", "stages=[{name: s2, layers: 2}, {name: s1, layers: 1}]"],
                         env={**env, "WANDB_SWEEP_ID": "swp1", "WANDB_RUN_ID": "prunedrun"}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "REPORT_RUN_ID prunedrun" in out.stdout
    (run_dir,) = offline_runs(tmp_path / "runs" / "pr" / "wandb")
    run = read_run(run_dir)
    summary = run["summary"]
    assert summary["summary"]["outcome"] == "pruned" and "pruned" in summary["tags"]
    assert sorted(h["_step"] for h in run["history"] if "stage/index" in h) == [0, 1]
    assert "s2/val_mrr" in summary["summary"] and "s1/val_mrr" not in summary["summary"]
    assert [row[0] for row in table(run, "report/stages")["data"]] == ["teacher", "s2"]


def test_stage_figures_are_a_step_under_the_stages_name_stage_and_last():
    step = wandb_report.stage_figures(2, {"name": "g", "best_val_mrr": 0.3, "test": {"mrr": 0.2}, "params_total": 4})
    assert step == {"g/val_mrr": 0.3, "stage/val_mrr": 0.3, "last/val_mrr": 0.3, "g/test_mrr": 0.2,
                    "stage/test_mrr": 0.2, "last/test_mrr": 0.2, "g/params_total": 4, "stage/params_total": 4,
                    "last/params_total": 4, "stage/index": 2}


def test_the_agents_parameter_file_is_read_in_wandbs_format(tmp_path):
    from wandb.sdk.lib.config_util import save_config_file_from_dict

    path = tmp_path / "config-r1.yaml"
    save_config_file_from_dict(str(path), {"distill.alpha": {"value": 0.25}, "data.source": {"value": "nations"},
                                           "stages.0.mask_rate": {"value": 0.1}})
    assert wandb_report.sweep_parameters(path) == {"distill.alpha": 0.25, "data.source": "nations",
                                                   "stages.0.mask_rate": 0.1}
    path.write_text("wandb_version: 1\n\ndistill.alpha: 0.25\n")
    with pytest.raises(RuntimeError, match="'distill.alpha' has no 'value'"):
        wandb_report.sweep_parameters(path)


def test_summary_figures_name_every_stage_and_the_last():
    rows = [{"name": "teacher", "best_val_mrr": 0.5, "test": {"mrr": 0.4}, "params_total": 10},
            {"name": "g", "best_val_mrr": 0.3, "test": {"mrr": 0.2}, "params_total": 4}]
    figs = wandb_report.summary_figures(rows)
    assert figs["teacher/val_mrr"] == 0.5 and figs["g/test_mrr"] == 0.2 and figs["last/val_mrr"] == 0.3
    assert figs["last/params_total"] == 4 and "teacher/queries_per_s" not in figs
