"""kgc_kd.sweep.space: a sweep file read into Optuna distributions, sampler and metrics; every mistake named."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from kgc_kd.config import load_config
from kgc_kd.sweep.space import SweepError, check_metric_stages, item_value, load_space

SWEEPS = sorted((Path(__file__).resolve().parents[1] / "experiments" / "sweeps").glob("*.yaml"))


def _space(tmp_path, **spec):
    spec = {"method": "random", "metric": {"name": "last/val_mrr", "goal": "maximize"},
            "parameters": {"distill.alpha": {"values": [0.1, 0.2]}}, **spec}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_space(path)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweep_files_parse_and_their_extremes_are_configs(path):
    space = load_space(path)
    assert all(m.key == "val_mrr" for m in space.metrics)  # selection on validation
    for corner in space.corners():
        load_config(["data=nations", *space.fixed, *(f"{k}={item_value(v)}" for k, v in corner.items())])
    check_metric_stages(space, ["pmd6", "pmd4", "pmd2"])


def test_the_file_maps_to_optunas_distributions(tmp_path):
    space = _space(tmp_path, parameters={
        "distill.score_loss": {"values": ["mse", "kl"]},
        "stages.0.layer_map": {"values": [[0, 2], [1, 3]]},  # a list goes as its YAML text
        "stages.0.epochs": {"min": 1, "max": 3},
        "distill.alpha": {"min": 0.0, "max": 0.5},
        "optim.lr": {"min": 1e-5, "max": 1e-3, "distribution": "log_uniform_values"},
        "model.temperature": {"min": -3.0, "max": -1.0, "distribution": "log_uniform"},
        "distill.beta": {"min": 0.0, "max": 0.3, "distribution": "q_uniform", "q": 0.1},
        "stages.1.epochs": {"min": 1, "max": 5, "distribution": "int_uniform"},
        "teacher.epochs": {"value": 1}})
    d = space.distributions
    assert d["distill.score_loss"] == CategoricalDistribution(["mse", "kl"])
    assert d["stages.0.layer_map"] == CategoricalDistribution(["[0, 2]", "[1, 3]"])
    assert d["stages.0.epochs"] == IntDistribution(1, 3) and d["stages.1.epochs"] == IntDistribution(1, 5)
    assert d["distill.alpha"] == FloatDistribution(0.0, 0.5)
    assert d["optim.lr"] == FloatDistribution(1e-5, 1e-3, log=True)
    assert d["model.temperature"].log and math.isclose(d["model.temperature"].low, math.exp(-3.0))
    assert d["distill.beta"] == FloatDistribution(0.0, 0.3, step=0.1)
    assert space.fixed == ["teacher.epochs=1"] and "teacher.epochs" not in d


def test_methods_become_samplers_and_a_grid_is_the_product_of_its_values(tmp_path):
    assert isinstance(_space(tmp_path, method="random").sampler(0), optuna.samplers.RandomSampler)
    assert isinstance(_space(tmp_path, method="bayes").sampler(0), optuna.samplers.TPESampler)
    grid = _space(tmp_path, method="grid", parameters={"distill.alpha": {"values": [0.1, 0.2, 0.3]},
                                                       "distill.beta": {"values": [0.0, 0.1]}})
    assert isinstance(grid.sampler(0), optuna.samplers.GridSampler) and grid.grid_size() == 6


def test_a_list_of_metrics_is_multi_objective(tmp_path):
    space = _space(tmp_path, metric=[{"name": "pmd2/val_mrr", "goal": "maximize"},
                                     {"name": "pmd2/params_total", "goal": "minimize"}])
    assert space.multi_objective and [m.goal for m in space.metrics] == ["maximize", "minimize"]


@pytest.mark.parametrize("change, named", [
    ({"metric": {"name": "pmd2/mrr"}}, "is a test metric"),
    ({"metric": {"name": "last/test_mrr"}}, "is a test metric"),
    ({"metric": {"name": "last/val_loss"}}, "unknown key 'val_loss'"),
    ({"metric": {"name": "last/val_mrr", "goal": "up"}}, "goal='up'"),
    ({"metric": {"name": "val_mrr"}}, "expected <stage>/<key>"),
    ({"method": "hyperopt"}, "method='hyperopt'"),
    ({"parameters": {"distill.alpha": {"values": []}}}, "parameters.distill.alpha.values"),
    ({"parameters": {"distill.alpha": {"min": 0.5, "max": 0.1}}}, "min=0.5 >= max=0.1"),
    ({"parameters": {"distill.alpha": {"min": 0.2, "max": 0.2}}}, "an empty or inverted range"),
    ({"parameters": {"distill.alpha": {"min": 0.1, "max": 0.2, "distribution": "beta"}}}, "distribution='beta'"),
    ({"parameters": {"optim.lr": {"min": 0.0, "max": 1e-3, "distribution": "log_uniform_values"}}}, "min > 0"),
    ({"parameters": {"distill.alpha": {"min": "a", "max": 0.2}}}, "expected a number"),
    ({"method": "grid", "parameters": {"distill.alpha": {"min": 0.1, "max": 0.2}}}, "a grid needs 'values'"),
    ({"parameters": {"distill.alpha": {"value": 0.1}}}, "nothing to search"),
    ({"parameters": {}}, "non-empty 'parameters'"),
    ({"name": "../../x"}, "name='../../x': expected a name of letters"),  # the study's directory: one name
    ({"name": "a/b"}, "name='a/b'"),
    ({"name": ".."}, "name='..'"),
])
def test_bad_files_are_errors_naming_the_file_and_the_key(tmp_path, change, named):
    with pytest.raises(SweepError, match="s.yaml") as err:
        _space(tmp_path, **change)
    assert named in str(err.value)


def test_a_metric_must_name_a_stage_of_the_chain(tmp_path):
    space = _space(tmp_path, metric={"name": "pmd3/val_mrr"})
    with pytest.raises(SweepError, match="no stage 'pmd3' in the chain"):
        check_metric_stages(space, ["pmd6", "pmd4", "pmd2"])
    check_metric_stages(_space(tmp_path, metric={"name": "teacher/val_mrr"}), ["pmd6"])


def test_corners_touch_every_choice_and_both_ends_of_every_range(tmp_path):
    space = _space(tmp_path, parameters={"distill.score_loss": {"values": ["mse", "kl", "cosine"]},
                                         "distill.alpha": {"min": 0.0, "max": 0.5}})
    corners = space.corners()
    assert {c["distill.score_loss"] for c in corners} == {"mse", "kl", "cosine"}
    assert {c["distill.alpha"] for c in corners} == {0.0, 0.5}
