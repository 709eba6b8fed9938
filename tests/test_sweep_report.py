"""kgc_kd.sweep.report on a study built by hand: the ranking, the medians per grade, the table, the Pareto front."""

from __future__ import annotations

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from kgc_kd.sweep.report import grade_medians, ranked, trials_table, write_outputs
from kgc_kd.sweep.space import load_space

D = {"distill.alpha": FloatDistribution(0.0, 0.5)}


def _stages(*vals):
    return [{"name": n, "val_mrr": v, "test_mrr": v / 2} for n, v in zip(["teacher", "a", "b"], vals)]


def _study(directions=("maximize",)):
    study = optuna.create_study(directions=list(directions))
    add = lambda state, alpha, values, stages, steps=None, wandb={}: study.add_trial(create_trial(  # noqa: E731
        state=state, params={"distill.alpha": alpha}, distributions=D, values=values,
        user_attrs={"stages": stages, "seconds": 1.0, "run_dir": f"runs/t{alpha}",
                    "items": [f"distill.alpha={alpha}", "data=nations"], **wandb},
        intermediate_values=steps))
    add(TrialState.COMPLETE, 0.1, [0.30] * len(directions), _stages(0.5, 0.40, 0.30),
        wandb={"wandb_group": "s", "wandb_runs": {"a": "r0a", "b": "r0b"}, "wandb_report_run": "r0r"})
    add(TrialState.COMPLETE, 0.2, [0.34] * len(directions), _stages(0.5, 0.44, 0.34))
    add(TrialState.PRUNED, 0.3, None, _stages(0.5, 0.20), {1: 0.20})
    add(TrialState.FAIL, 0.4, None, [])
    return study


def _space(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "method": "random", "metric": {"name": "last/val_mrr"},
                                    "parameters": {"distill.alpha": {"min": 0.0, "max": 0.5}}}))
    return load_space(path)


def test_complete_trials_rank_by_the_metric_then_pruned_then_failed():
    records = ranked(_study())
    assert [(r["number"], r["state"]) for r in records] == [(1, "complete"), (0, "complete"), (2, "pruned"), (3, "fail")]
    assert records[0]["best"] and not records[1]["best"]
    assert records[2]["pruned_at"] == 1 and records[2]["values"] is None  # not Optuna's last intermediate value


def test_the_median_per_grade_is_over_the_trials_that_reached_it():
    med = grade_medians(ranked(_study()))
    assert med == {"teacher": 0.5, "a": 0.40, "b": pytest.approx(0.32)}  # a: median of 0.44, 0.40, 0.20


def test_the_table_has_each_trials_grades_state_and_the_medians(tmp_path):
    table = trials_table(_space(tmp_path), ranked(_study()), ["teacher", "a", "b"])
    lines = table.splitlines()
    assert lines[0] == ("| rank | trial | state | distill.alpha | last/val_mrr | teacher val | a val | b val | b test "
                        "| s | run |")
    assert lines[2] == "| 1 | 1 | complete (best) | 0.2000 | 0.3400 | 0.5000 | 0.4400 | 0.3400 | 0.1700 | 1 | runs/t0.2 |"
    assert "| pruned at a |" in lines[4] and "a 0.4000, b 0.3200" in table


def test_write_outputs_writes_the_files_and_a_pareto_front_for_two_metrics(tmp_path):
    study = _study(("maximize", "minimize"))
    study.set_user_attr("metrics", ["last/val_mrr", "last/params_total"])
    space = _space(tmp_path)
    summary = write_outputs(study, space, tmp_path / "out", ["teacher", "a", "b"])
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"trials.json", "trials.md", "best.yaml", "pareto.png"}
    assert summary["counts"] == {"complete": 2, "pruned": 1, "fail": 1}
    assert "distill:\n  alpha:" in (tmp_path / "out" / "best.yaml").read_text()


def test_trials_csv_has_one_numeric_column_per_metric_and_per_stage_figure(tmp_path):
    """trials.csv (and the W&B table, the same flat_table): numbers a plot can use, the state a word, the W&B runs."""
    import csv

    write_outputs(_study(), _space(tmp_path), tmp_path / "out", ["teacher", "a", "b"])
    rows = list(csv.DictReader((tmp_path / "out" / "trials.csv").open()))
    assert list(rows[0])[:7] == ["rank", "trial", "state", "best", "pruned_at", "retry_of", "distill.alpha"]
    assert {"value/last/val_mrr", "teacher/val_mrr", "a/test_mrr", "b/val_mrr", "b/params_total", "wandb_group",
            "wandb_report_run"} <= set(rows[0])
    first, second, pruned, failed = rows
    assert (first["trial"], first["state"], first["best"]) == ("1", "complete", "True")
    assert float(first["value/last/val_mrr"]) == 0.34 and float(first["a/val_mrr"]) == 0.44
    assert float(first["b/test_mrr"]) == 0.17
    assert (second["wandb_group"], second["wandb_report_run"]) == ("s", "r0r")
    assert (pruned["state"], pruned["pruned_at"], pruned["value/last/val_mrr"], pruned["b/val_mrr"]) == (
        "pruned", "a", "", "")
    assert float(pruned["a/val_mrr"]) == 0.20 and failed["state"] == "fail"


def test_a_trials_record_names_its_wandb_runs():
    records = {r["number"]: r for r in ranked(_study())}
    assert records[0]["wandb_runs"] == {"a": "r0a", "b": "r0b"} and records[0]["wandb_report_run"] == "r0r"
    assert "wandb_runs" not in records[1]
