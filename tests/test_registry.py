"""The loss-term registry (kgc_kd/distill/registry.py): resolving a term's parameters, registering a term, and
"adding a term is one new registered class"."""

import re
from types import SimpleNamespace

import pytest
import torch

from kgc_kd.distill.objective import Objective
from kgc_kd.distill.registry import TERMS, Dims, LossTerm, Step, known_terms, register, resolve_term, term_class
from kgc_kd.chain.stage_spec import objective_terms

SHIPPED = {"ce", "score", "mgfd", "mgd", "pkd", "hidden_mse", "qkv_mse", "attn_out_mse", "ffn_mid_mse", "ffn_out_mse",
           "emb_mse", "attn_kl", "attn_score_mse", "value_kl", "qkv_relation"}
DIMS = Dims(16, 32, 32, 64, 2, 4, 2, 4)


def test_the_shipped_terms_are_registered():
    assert set(known_terms()) == SHIPPED
    assert known_terms() == sorted(known_terms())
    for name in SHIPPED:
        cls = term_class(name)
        assert issubclass(cls, LossTerm) and cls.name == name and TERMS[name] is cls


def test_dims_of_reads_the_configs():
    s = SimpleNamespace(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2)
    t = SimpleNamespace(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=4)
    assert Dims.of(s, t) == DIMS


# ---- resolve_term --------------------------------------------------------------------------------------------
def test_resolve_fills_the_declared_defaults():
    assert resolve_term({"name": "score"}) == {"name": "score", "weight": 1.0,
                                               "params": {"loss": "mse", "temperature": 1.0}}
    assert resolve_term({"name": "ce", "weight": 0.25}) == {"name": "ce", "weight": 0.25, "params": {}}
    got = resolve_term({"name": "qkv_relation", "relation_heads": 4})
    assert got["params"] == {"layers": "uniform", "over_layers": "sum", "relation_heads": 4}


def test_resolve_takes_flat_or_nested_parameters_and_none_is_the_default():
    flat = resolve_term({"name": "score", "weight": 0.1, "loss": "kl", "temperature": 2.0})
    nested = resolve_term({"name": "score", "weight": 0.1, "params": {"loss": "kl", "temperature": 2.0}})
    assert flat == nested == {"name": "score", "weight": 0.1, "params": {"loss": "kl", "temperature": 2.0}}
    # a YAML entry may spell parameters as None; None means "the term's default", including the weight
    assert resolve_term({"name": "score", "weight": None, "loss": None, "temperature": 3.0, "rank": None}) == {
        "name": "score", "weight": 1.0, "params": {"loss": "mse", "temperature": 3.0}}
    # a flat value wins over the same key under params
    assert resolve_term({"name": "score", "loss": "kl", "params": {"loss": "mse"}})["params"]["loss"] == "kl"


def test_resolve_does_not_share_the_class_defaults():
    got = resolve_term({"name": "hidden_mse"})
    got["params"]["rank"] = 1
    assert term_class("hidden_mse").params["rank"] == 64


@pytest.mark.parametrize("entry, param, takes", [
    ({"name": "score", "rate": 0.5}, "rate", "loss, temperature"),
    ({"name": "ce", "loss": "kl"}, "loss", "none"),
    ({"name": "emb_mse", "layers": "last"}, "layers", "over_layers, projection, rank"),  # one pair: no layers
    ({"name": "mgd", "params": {"hide": 0.5}}, "hide", "hide_rate, generator"),
])
def test_resolve_rejects_a_parameter_the_term_does_not_declare(entry, param, takes):
    with pytest.raises(ValueError) as err:
        resolve_term(entry)
    assert str(err.value) == f"loss term {entry['name']!r} has no parameter {param!r}; its parameters: {takes}"


def test_resolve_rejects_an_unknown_name_listing_the_known_ones():
    with pytest.raises(ValueError) as err:
        resolve_term({"name": "hiden_mse"})
    assert str(err.value) == f"unknown loss term 'hiden_mse'; known: {', '.join(sorted(SHIPPED))}"
    with pytest.raises(ValueError, match="without a name"):
        resolve_term({"weight": 1.0})


def test_resolve_rejects_a_negative_weight_and_accepts_zero():
    with pytest.raises(ValueError, match=re.escape("loss term 'score': weight=-0.5; expected >= 0")):
        resolve_term({"name": "score", "weight": -0.5})
    assert resolve_term({"name": "ce", "weight": 0})["weight"] == 0.0


def test_resolve_runs_the_terms_check_with_dims():
    with pytest.raises(ValueError, match="temperature=0"):
        resolve_term({"name": "score", "temperature": 0})
    resolve_term({"name": "mgfd"})  # no model known: widths unchecked
    with pytest.raises(ValueError, match="student width 16 != teacher width 32"):
        resolve_term({"name": "mgfd"}, DIMS)


# ---- register ------------------------------------------------------------------------------------------------
def test_register_refuses_a_second_class_under_an_existing_name():
    class AnotherCE(LossTerm):
        name = "ce"

    with pytest.raises(ValueError, match=re.escape("loss term 'ce' is registered twice (ContrastiveCE, AnotherCE)")):
        register(AnotherCE)
    assert TERMS["ce"] is not AnotherCE and TERMS["ce"].__name__ == "ContrastiveCE"
    assert register(TERMS["ce"]) is TERMS["ce"]  # the same class again (a module re-imported) is fine


def test_register_refuses_a_class_without_a_name():
    class Nameless(LossTerm):
        pass

    with pytest.raises(ValueError, match="Nameless has no name"):
        register(Nameless)


def test_the_base_class_declares_nothing():
    term = LossTerm({}, DIMS)
    assert term.wanted("student") == {} and term.p == {} and term.dims == DIMS
    with pytest.raises(NotImplementedError):
        term(None)


# ---- adding a term = one registered class --------------------------------------------------------------------
class L2Vec(LossTerm):
    """Squared distance between the student's and the teacher's vectors of one row kind, batch mean."""

    name = "l2_vec"
    params = {"key": "hr"}

    @classmethod
    def check(cls, params, dims=None):
        if params["key"] not in ("hr", "tail", "head"):
            raise ValueError(f"loss term 'l2_vec': key={params['key']!r}; expected hr, tail or head")

    def forward(self, step):
        k = self.p["key"]
        return (step.s_rows[k] - step.t_rows[k]).pow(2).sum(-1).mean()


@pytest.fixture
def l2_vec():
    """L2Vec registered for one test; the registry as it was afterwards, so other tests are unaffected."""
    before = dict(TERMS)
    assert "l2_vec" not in TERMS
    yield register(L2Vec)
    TERMS.clear()
    TERMS.update(before)


def test_a_new_registered_class_is_a_usable_term(l2_vec):
    assert l2_vec is L2Vec and "l2_vec" in known_terms() and term_class("l2_vec") is L2Vec
    terms = objective_terms({"terms": [{"name": "ce", "weight": 0.5}, {"name": "l2_vec", "weight": 2.0}]})
    assert terms[1] == {"name": "l2_vec", "weight": 2.0, "params": {"key": "hr"}}
    with pytest.raises(ValueError, match="key='rel'"):
        objective_terms({"terms": [{"name": "l2_vec", "key": "rel"}]})
    with pytest.raises(ValueError, match=re.escape("its parameters: key")):
        objective_terms({"terms": [{"name": "l2_vec", "side": "hr"}]})

    obj = Objective(terms, DIMS)
    assert isinstance(obj.terms["l2_vec"], L2Vec) and obj.weights == {"ce": 0.5, "l2_vec": 2.0}
    assert obj.needs_teacher and not obj.needs_teacher_logits and obj.wanted("student") == {}
    s = {"hr": torch.tensor([[1.0, 2.0], [0.0, 0.0]]), "tail": torch.zeros(2, 2)}
    t = {"hr": torch.tensor([[1.0, 0.0], [3.0, 4.0]]), "tail": torch.ones(2, 2)}
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    step = Step(views={}, student={}, teacher={}, s_rows=s, t_rows=t, logits_s=logits)
    out = obj(step)
    assert set(out) == {"ce", "l2_vec"}
    # rows: (0^2 + 2^2) = 4 and (3^2 + 4^2) = 25 -> mean 14.5
    assert out["l2_vec"].item() == pytest.approx(14.5)
    # ce: both directions of CE on [[2, 0], [0, 2]]: 2 * -log(e^2 / (e^2 + 1))
    assert out["ce"].item() == pytest.approx(2 * 0.12692801104297263)
    tail = Objective(objective_terms({"terms": [{"name": "l2_vec", "key": "tail"}]}), DIMS)
    assert tail(step)["l2_vec"].item() == pytest.approx(2.0)  # (1 + 1) per row


def test_a_new_term_is_usable_from_the_config(l2_vec):
    from kgc_kd.config import load_config
    from kgc_kd.chain.stage_spec import resolve_stage

    cfg = load_config(["distill.terms=[{name: ce}, {name: l2_vec, weight: 0.5}]"])
    spec = resolve_stage(cfg, 0)
    assert [(t["name"], t["weight"], t["params"]) for t in spec["terms"]] == [("ce", 1.0, {}),
                                                                              ("l2_vec", 0.5, {"key": "hr"})]


def test_a_new_terms_own_parameter_is_accepted_by_the_config(l2_vec):
    # docs/configuration.md ("Adding a loss term"): `{name: query_mse, scale: 2}` in a config. The config's
    # distill.terms entries are plain mappings checked by the term itself, so a new term brings its own parameters.
    from kgc_kd.config import load_config
    from kgc_kd.chain.stage_spec import resolve_stage

    cfg = load_config(["distill.terms=[{name: ce}, {name: l2_vec, key: tail}]"])
    assert resolve_stage(cfg, 0)["terms"][1]["params"] == {"key": "tail"}


def test_the_registry_is_restored_after_the_new_term():
    assert "l2_vec" not in TERMS and set(TERMS) == SHIPPED
