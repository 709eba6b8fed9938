"""A stage's weighted loss terms: PMD's alpha/beta(/pkd) form or an explicit list."""

import re

import pytest

from kgc_kd.lit.distill_module import STAGE_DEFAULTS, stage_terms


def _st(**kw):
    return {**STAGE_DEFAULTS, "name": "s1", **kw}


def _weights(terms):
    return {t["name"]: t["weight"] for t in terms}


def test_alpha_beta_form():
    terms = stage_terms(_st(alpha=0.2, beta=0.3, pkd=0.0))
    assert [t["name"] for t in terms] == ["ce", "score", "mgfd"]
    w = _weights(terms)
    assert w["ce"] == pytest.approx(0.5) and w["score"] == pytest.approx(0.2) and w["mgfd"] == pytest.approx(0.3)


def test_alpha_beta_pkd_form():
    w = _weights(stage_terms(_st(alpha=0.1, beta=0.0, pkd=0.25)))
    assert set(w) == {"ce", "score", "pkd"}  # beta = 0 -> no mgfd term
    assert w["ce"] == pytest.approx(0.65) and w["score"] == pytest.approx(0.1) and w["pkd"] == pytest.approx(0.25)


def test_zero_alpha_beta_gives_ce_alone():
    assert stage_terms(_st(alpha=0.0, beta=0.0, pkd=0.0)) == [{"name": "ce", "weight": 1.0}]


def test_defaults():
    w = _weights(stage_terms(_st()))
    a, b = STAGE_DEFAULTS["alpha"], STAGE_DEFAULTS["beta"]
    assert w["ce"] == pytest.approx(1 - a - b)
    assert ("score" in w) == (a > 0) and ("mgfd" in w) == (b > 0) and "pkd" not in w


def test_sum_one_keeps_a_zero_weight_ce():
    w = _weights(stage_terms(_st(alpha=0.5, beta=0.3, pkd=0.2)))
    assert w["ce"] == pytest.approx(0.0, abs=1e-12)
    assert set(w) == {"ce", "score", "mgfd", "pkd"}


def test_sum_above_one_raises():
    with pytest.raises(ValueError, match="alpha"):
        stage_terms(_st(alpha=0.6, beta=0.3, pkd=0.2))


def test_sum_exactly_one_in_decimal_does_not_raise():
    w = _weights(stage_terms(_st(alpha=0.34, beta=0.56, pkd=0.1)))
    assert w["ce"] == pytest.approx(0.0, abs=1e-9)


def test_explicit_list_wins():
    listed = [{"name": "hidden_mse", "weight": 2.0, "layers": "last"}, {"name": "ce"}, {"name": "attn_kl"}]
    # alpha/beta/pkd would be invalid (> 1) but are ignored when terms are given
    terms = stage_terms(_st(alpha=0.9, beta=0.9, pkd=0.9, terms=listed))
    assert terms == listed
    terms[0]["weight"] = 5.0  # copies: the config is not mutated
    assert listed[0]["weight"] == 2.0


@pytest.mark.parametrize("bad", ["hiden_mse", "kl", None])
def test_unknown_term_raises_naming_it(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        stage_terms(_st(terms=[{"name": "ce"}, {"name": bad}]))


def test_duplicate_term_raises_naming_it():
    with pytest.raises(ValueError, match="qkv_relation"):
        stage_terms(_st(terms=[{"name": "ce"}, {"name": "qkv_relation"}, {"name": "qkv_relation", "weight": 2}]))
    with pytest.raises(ValueError, match="twice"):
        stage_terms(_st(terms=[{"name": "score"}, {"name": "score"}]))
