"""kgc_kd.chain.stage_spec.stage_keys (the run plan's `keys`): what changes a stage's key (and so makes it train
again) and what does not."""

from __future__ import annotations

import shutil

import pytest

from kgc_kd.chain.plan import build_plan
from kgc_kd.chain.stage_spec import input_fingerprints, recorded_test_split, stage_keys
from kgc_kd.data.sources import load_kg
from kgc_kd.models.plm import resolve_plm

BASE = ["data=nations"]


def _keys(*items: str) -> dict[str, str]:
    plan = build_plan([*BASE, *items])
    return plan.with_inputs(input_fingerprints(plan.cfg, load_kg(plan.cfg.data.source))).keys


def test_one_key_per_stage_and_the_same_config_gives_the_same_keys():
    keys = _keys()
    assert list(keys) == ["teacher", "pmd6", "pmd4", "pmd2"] and len(set(keys.values())) == 4
    assert keys == _keys()


def test_a_student_setting_keeps_the_teacher_and_the_stages_before_it():
    base = _keys()
    alpha = _keys("distill.alpha=0.3")  # every student
    assert alpha["teacher"] == base["teacher"] and all(alpha[s] != base[s] for s in ("pmd6", "pmd4", "pmd2"))
    grade = _keys("stages.1.mask_rate=0.1")  # pmd4 only: pmd2 learns from it, so it changes too
    assert [grade[s] == base[s] for s in base] == [True, True, False, False]


def test_a_teacher_setting_the_data_or_the_seed_changes_every_key():
    base = _keys()
    for items in (["teacher.epochs=3"], ["teacher.lr=3e-4"], ["optim.lr=3e-4"], ["data=umls"], ["run.seed=7"],
                  ["model.temperature=0.1"], ["trainer.limit_train_batches=2"]):
        other = _keys(*items)
        assert all(other[s] != base[s] for s in base), items


def test_naming_logging_and_teacher_only_are_not_in_the_key():
    base = _keys()
    same = _keys("run.name=x", "run.root=/elsewhere", "run.logger=csv", "run.wandb_group=g",
                 "trainer.enable_progress_bar=false", "run.checkpoint_every_n_steps=5")
    assert same == base
    assert _keys("teacher.only=true") == {"teacher": base["teacher"]}  # a teacher alone is the chain's teacher


def test_the_two_spellings_of_one_objective_share_a_key():
    """The key hashes the resolved spec, not the spelling: PMD's shorthand and its term list are one stage."""
    shorthand = _keys("distill.alpha=0.2", "distill.beta=0.0")
    terms = _keys("distill.terms=[{name: ce, weight: 0.8}, {name: score, weight: 0.2}]")
    assert terms == shorthand


# ---- the content: the KG as loaded, the PLM's files, a loaded export's files -------------------------------------
INPUTS = {"kg": {"entities": "e", "relations": "r", "train": "tr", "valid": "va", "test": "te"}, "test_triples": 3,
          "plm": "p", "teacher_load": None}


def _content_keys(**change) -> dict[str, str]:
    plan = build_plan(BASE)
    inputs = {**INPUTS, "kg": {**INPUTS["kg"], **change.pop("kg", {})}, **change}
    return stage_keys(plan.cfg, plan.specs, inputs)


@pytest.mark.parametrize("change", [{"kg": {"train": "tr2"}}, {"kg": {"valid": "va2"}}, {"kg": {"entities": "e2"}},
                                    {"kg": {"relations": "r2"}}, {"plm": "p2"}, {"teacher_load": "x"}])
def test_the_kgs_content_the_plms_files_and_a_loaded_export_change_every_key(change):
    base, other = _content_keys(), _content_keys(**change)
    assert all(other[s] != base[s] for s in base), change


def test_the_test_split_is_not_in_the_key_but_is_recorded():
    """A changed test split keeps every key (the stage is evaluated again, not trained); its digest and size
    are what each stage's row records."""
    assert _content_keys(kg={"test": "te2"}, test_triples=4) == _content_keys()
    assert recorded_test_split(INPUTS) == {"sha256": "te", "triples": 3}


def test_input_fingerprints_read_the_kg_the_plm_directory_and_a_loaded_export(tmp_path, tiny_plm_dir):
    """A copy of the PLM elsewhere has the same digest (the path is a setting, its content the fingerprint);
    one changed byte of one file changes it. An export's KG, token table and predict's caches are not its
    model: they leave the teacher.load digest alone."""
    from kgc_kd.runtime.fingerprint import tree_digest

    plan = build_plan([*BASE, f"model.plm={tiny_plm_dir}"])
    kg = load_kg("nations")
    first = input_fingerprints(plan.cfg, kg)
    assert first["plm"] == tree_digest(resolve_plm(str(tiny_plm_dir))) and first["teacher_load"] is None
    assert first["test_triples"] == len(kg.test) and first["kg"]["test"] != first["kg"]["train"]
    copy = shutil.copytree(tiny_plm_dir, tmp_path / "copy")
    assert input_fingerprints(build_plan([*BASE, f"model.plm={copy}"]).cfg, kg)["plm"] == first["plm"]
    config = copy / "config.json"
    config.write_text(config.read_text() + " ")
    assert input_fingerprints(build_plan([*BASE, f"model.plm={copy}"]).cfg, kg)["plm"] != first["plm"]

    export = tmp_path / "export"
    (export / "query").mkdir(parents=True)
    (export / "biencoder.json").write_text("{}")
    (export / "query" / "model.safetensors").write_bytes(b"weights")
    loaded = lambda: input_fingerprints(build_plan([*BASE, f"teacher.load={export}"]).cfg, kg)["teacher_load"]  # noqa: E731
    digest = loaded()
    for extra in ("kg.json", "kg/test.npy", "token-cache/entry/ids.npy", "entity_vectors.npy", "entity_vectors.json",
                  "entity_vectors-onnx-int8.npy", "entity_index.faiss", "onnx/query.onnx", ".onnx.x1.tmp/query.onnx"):
        (export / extra).parent.mkdir(parents=True, exist_ok=True)
        (export / extra).write_bytes(b"not the model")
    assert loaded() == digest
    (export / "query" / "model.safetensors").write_bytes(b"weightz")
    assert loaded() != digest
