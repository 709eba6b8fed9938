"""kgc_kd.chain.plan: the run plan built once from the command line (config, resolved stages, stage keys, run
directory), and the config's objective (declared once, spelt as a term list at load, checked by the registry in
the plan)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kgc_kd.chain.plan import RunPlan, as_plan, build_plan, plan_config
from kgc_kd.chain.stage_spec import resolve_stage
from kgc_kd.config import (OBJECTIVE_KEYS, ConfigError, ObjectiveCfg, StageCfg, load_config, objective_entries,
                           run_name)
from kgc_kd.distill.registry import Dims


def test_the_plan_holds_the_config_its_resolved_stages_keys_and_run_directory(tmp_path):
    plan = build_plan([f"run.root={tmp_path}", "data=nations"])
    cfg = plan.cfg
    assert plan.specs == [resolve_stage(cfg, i) for i in range(len(cfg.stages))]
    assert plan.stage_names == ["teacher", "pmd6", "pmd4", "pmd2"]
    assert plan.run_name == run_name(cfg) and plan.run_dir == Path(tmp_path) / plan.run_name
    assert plan.dims is None and plan.inputs is None and plan.keys is None  # preflight's, from the loaded inputs
    assert as_plan(plan) is plan and as_plan(cfg).specs == plan.specs


def test_the_inputs_fingerprints_refine_the_plan_with_the_stage_keys(tmp_path):
    """The keys come with the inputs' content (preflight), computed once by `with_inputs` from them."""
    from kgc_kd.chain.stage_spec import input_fingerprints, stage_keys
    from kgc_kd.data.sources import load_kg

    plan = build_plan([f"run.root={tmp_path}", "data=nations"])
    inputs = input_fingerprints(plan.cfg, load_kg("nations"))
    refined = plan.with_inputs(inputs)
    assert refined.inputs == inputs and refined.keys == stage_keys(plan.cfg, plan.specs, inputs)
    assert list(refined.keys) == plan.stage_names and plan.keys is None and refined.specs == plan.specs


def test_the_default_objective_is_pmds_shorthand_spelt_as_terms():
    plan = build_plan([])
    terms = plan.specs[0]["terms"]
    assert [(t["name"], round(t["weight"], 6)) for t in terms] == [("ce", 0.8), ("score", 0.1), ("mgfd", 0.1)]
    assert terms[1]["params"]["loss"] == "mse" and plan.specs[0]["masks_inputs"]


def test_a_teacher_only_plan_has_no_student_stage():
    plan = build_plan(["teacher.only=true"])
    assert plan.specs == [] and plan.stage_names == ["teacher"]


def test_registry_checks_come_with_the_plan_and_name_the_key():
    items = ["distill.terms=[{name: ce}, {name: nope}]"]
    load_config(items)  # the schema alone knows no loss term
    with pytest.raises(ConfigError, match=r"distill\.terms \(used by stages\[0\]\): unknown loss term 'nope'"):
        build_plan(items)
    with pytest.raises(ConfigError, match=r"stages\[1\]\.terms \(used by stages\[1\]\): loss term 'score' has no "
                                          r"parameter 'bogus'"):
        build_plan(["stages.1.terms=[{name: ce}, {name: score, bogus: 1}]"])


def test_shorthand_errors_come_at_load():
    with pytest.raises(ConfigError, match=r"stages\[0\] \(pmd6\): distill.alpha \+ distill.beta \+ distill.pkd"):
        load_config(["distill.alpha=0.6", "distill.beta=0.5"])
    with pytest.raises(ConfigError, match="belongs to the alpha/beta form"):
        load_config(["distill.terms=[{name: ce}]", "distill.score_loss=kl"])


def test_objective_keys_are_declared_once_and_every_stage_takes_them():
    stage_keys = [f.name for f in dataclasses.fields(StageCfg)]
    assert OBJECTIVE_KEYS == tuple(f.name for f in dataclasses.fields(ObjectiveCfg))
    assert stage_keys[-len(OBJECTIVE_KEYS):] == list(OBJECTIVE_KEYS)
    cfg = load_config(["stages.2.alpha=0.3", "stages.2.mgfd=generation"])
    assert cfg.stages[2].alpha == 0.3 and cfg.stages[0].alpha is None
    assert [e["name"] for e in objective_entries(cfg, 2)] == ["ce", "score", "mgd"]


def test_preflight_dims_refine_the_plan_without_changing_it():
    plan = plan_config(load_config([]))
    dims = [Dims(384, 384, 1536, 1536, 12, 12, n, m) for n, m in ((6, 6), (4, 6), (2, 4))]
    refined = plan.with_dims(dims)
    assert refined.dims == dims and plan.dims is None and refined.specs == plan.specs and isinstance(refined, RunPlan)


def test_the_shorthand_is_spelt_as_terms_once_per_stage(monkeypatch):
    import kgc_kd.chain.stage_spec as stage_spec
    import kgc_kd.config as config

    calls = []
    original = config.objective_entries

    def counted(cfg, index):
        calls.append(index)
        return original(cfg, index)

    monkeypatch.setattr(config, "objective_entries", counted)
    monkeypatch.setattr(stage_spec, "objective_entries", counted)
    plan = build_plan(["distill=pmd"])
    assert calls == [0, 1, 2] and len(plan.specs) == 3  # at load, then the plan takes load's term lists
