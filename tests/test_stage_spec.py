"""kgc_kd.chain.stage_spec.stage_keys (the run plan's `keys`): what changes a stage's key (and so makes it train
again) and what does not."""

from __future__ import annotations

from kgc_kd.chain.plan import build_plan

BASE = ["data=nations"]


def _keys(*items: str) -> dict[str, str]:
    return build_plan([*BASE, *items]).keys


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
