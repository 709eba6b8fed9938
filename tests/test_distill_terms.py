"""A stage's resolved terms (kgc_kd.chain.stage_spec.objective_terms): PMD's alpha/beta(/pkd) shorthand or a term list."""

import re
from dataclasses import asdict

import pytest

from kgc_kd.config import DistillCfg
from kgc_kd.distill.registry import Dims
from kgc_kd.chain.stage_spec import objective_terms


def _weights(terms):
    return {t["name"]: t["weight"] for t in terms}


def test_alpha_beta_form():
    terms = objective_terms({"alpha": 0.2, "beta": 0.3, "pkd": 0.0})
    assert [t["name"] for t in terms] == ["ce", "score", "mgfd"]
    w = _weights(terms)
    assert w["ce"] == pytest.approx(0.5) and w["score"] == pytest.approx(0.2) and w["mgfd"] == pytest.approx(0.3)
    assert terms[1]["params"] == {"loss": "mse", "temperature": 1.0}  # PMD's score: MSE
    assert terms[0]["params"] == {} and terms[2]["params"] == {}


def test_alpha_beta_pkd_form():
    w = _weights(objective_terms({"alpha": 0.1, "beta": 0.0, "pkd": 0.25}))
    assert set(w) == {"ce", "score", "pkd"}  # beta = 0 -> no mgfd term
    assert w["ce"] == pytest.approx(0.65) and w["score"] == pytest.approx(0.1) and w["pkd"] == pytest.approx(0.25)


def test_zero_alpha_beta_gives_ce_alone():
    assert objective_terms({"alpha": 0.0, "beta": 0.0, "pkd": 0.0}) == [{"name": "ce", "weight": 1.0, "params": {}}]


def test_defaults_are_distill_cfg():
    d = asdict(DistillCfg())
    w = _weights(objective_terms({}))
    assert w["ce"] == pytest.approx(1 - d["alpha"] - d["beta"] - d["pkd"])
    assert ("score" in w) == (d["alpha"] > 0) and ("mgfd" in w) == (d["beta"] > 0) and "pkd" not in w
    assert objective_terms({"alpha": None, "beta": None}) == objective_terms({})  # None: the default


def test_sum_one_keeps_a_zero_weight_ce():
    w = _weights(objective_terms({"alpha": 0.5, "beta": 0.3, "pkd": 0.2}))
    assert w["ce"] == pytest.approx(0.0, abs=1e-12)
    assert set(w) == {"ce", "score", "mgfd", "pkd"}


def test_sum_above_one_raises_naming_the_keys():
    msg = "distill.alpha + distill.beta + distill.pkd = 0.6 + 0.3 + 0.2 > 1"
    with pytest.raises(ValueError, match=re.escape(msg)):
        objective_terms({"alpha": 0.6, "beta": 0.3, "pkd": 0.2})
    origin = {"alpha": "stages[1].alpha", "beta": "distill.beta", "pkd": "distill.pkd"}
    with pytest.raises(ValueError, match=re.escape("stages[1].alpha + distill.beta")):
        objective_terms({"alpha": 0.9, "beta": 0.3}, origin=origin)


def test_sum_exactly_one_in_decimal_does_not_raise():
    w = _weights(objective_terms({"alpha": 0.34, "beta": 0.56, "pkd": 0.1}))
    assert w["ce"] == pytest.approx(0.0, abs=1e-9)


def test_shorthand_score_loss_and_temperature_reach_the_score_term():
    terms = objective_terms({"alpha": 0.3, "beta": 0.0, "score_loss": "kl", "kd_temperature": 4.0})
    assert terms[1] == {"name": "score", "weight": 0.3, "params": {"loss": "kl", "temperature": 4.0}}
    with pytest.raises(ValueError, match="loss='hinge'"):
        objective_terms({"alpha": 0.3, "score_loss": "hinge"})


def test_shorthand_generation_is_the_mgd_term():
    terms = objective_terms({"alpha": 0.0, "beta": 0.4, "mgfd": "generation"})
    assert terms[1] == {"name": "mgd", "weight": 0.4, "params": {"hide_rate": 0.65, "generator": "conv"}}
    terms = objective_terms({"alpha": 0.0, "beta": 0.4, "mgfd": "generation", "generator": "conv"})
    assert terms[1]["params"]["generator"] == "conv"
    with pytest.raises(ValueError, match="generator='mlp'"):  # the per-token generator is gone
        objective_terms({"beta": 0.4, "mgfd": "generation", "generator": "mlp"})


def test_shorthand_mgfd_and_generator_errors():
    with pytest.raises(ValueError, match=re.escape("distill.mgfd='mse': expected pmd or generation")):
        objective_terms({"mgfd": "mse"})
    with pytest.raises(ValueError, match=re.escape("distill.generator='conv' applies to mgfd=generation only")):
        objective_terms({"mgfd": "pmd", "generator": "conv"})


def test_explicit_list_wins_and_is_resolved():
    listed = [{"name": "hidden_mse", "weight": 2.0, "layers": "last"}, {"name": "ce"}, {"name": "attn_kl"}]
    # alpha/beta/pkd would be invalid (> 1) but are not the objective when terms are given
    terms = objective_terms({"alpha": 0.9, "beta": 0.9, "pkd": 0.9, "terms": listed})
    assert [t["name"] for t in terms] == ["hidden_mse", "ce", "attn_kl"]
    assert [t["weight"] for t in terms] == [2.0, 1.0, 1.0]
    assert terms[0]["params"] == {"layers": "last", "over_layers": "sum", "projection": "lowrank", "rank": 64}
    assert terms[2]["params"] == {"layers": "uniform", "over_layers": "sum"}
    terms[0]["params"]["layers"] = "uniform"  # copies: the config is not mutated
    terms[0]["weight"] = 5.0
    assert listed[0] == {"name": "hidden_mse", "weight": 2.0, "layers": "last"}


@pytest.mark.parametrize("key, value, spelling", [
    ("score_loss", "kl", "{name: score, loss: kl}"),
    ("kd_temperature", 2.0, "{name: score, temperature: 2.0}"),
    ("mgfd", "generation", "{name: mgd} (generation) or {name: mgfd} (pmd); got generation"),
    ("generator", "conv", "{name: mgd, generator: conv}"),
])
def test_shorthand_keys_with_a_term_list_say_where_they_go(key, value, spelling):
    with pytest.raises(ValueError) as err:
        objective_terms({"terms": [{"name": "ce"}], key: value})
    assert str(err.value) == (f"distill.{key}={value!r} belongs to the alpha/beta form; with a term list give it on "
                              f"the term: {spelling}")


@pytest.mark.parametrize("bad", ["hiden_mse", "kl"])
def test_unknown_term_raises_naming_it(bad):
    with pytest.raises(ValueError, match=re.escape(f"unknown loss term {bad!r}; known: attn_kl, ")):
        objective_terms({"terms": [{"name": "ce"}, {"name": bad}]})


def test_a_term_without_a_name_raises():
    with pytest.raises(ValueError, match="without a name"):
        objective_terms({"terms": [{"name": "ce"}, {"name": None, "weight": 0.5}]})


def test_a_parameter_the_term_does_not_take_is_named():
    with pytest.raises(ValueError, match=re.escape("loss term 'hidden_mse' has no parameter 'hide_rate'")):
        objective_terms({"terms": [{"name": "hidden_mse", "hide_rate": 0.5}]})


def test_duplicate_term_raises_naming_it():
    with pytest.raises(ValueError, match="qkv_relation"):
        objective_terms({"terms": [{"name": "ce"}, {"name": "qkv_relation"}, {"name": "qkv_relation", "weight": 2}]})
    with pytest.raises(ValueError, match="twice"):
        objective_terms({"terms": [{"name": "score"}, {"name": "score"}]})


def test_dims_reach_the_terms_checks():
    dims = Dims(16, 32, 32, 64, 2, 4, 1, 2)
    listed = {"terms": [{"name": "attn_kl"}]}
    assert objective_terms(listed)  # no model known: the head counts cannot be checked yet
    with pytest.raises(ValueError, match="attention heads one to one"):
        objective_terms(listed, dims)
    with pytest.raises(ValueError, match="mgfd"):  # PMD's features compare widths directly
        objective_terms({"beta": 0.2}, dims)
