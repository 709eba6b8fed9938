"""Objective: a stage's resolved terms built for one student/teacher pair; flags, captured features, parameters,
and the feature terms on tiny BERTs through FeatureCapture."""

import copy

import pytest
import torch

from conftest import make_tiny_bert
from kgc_kd.distill.mgfd import MGDGenerator
from kgc_kd.distill.objective import Objective
from kgc_kd.distill.projection import LowRankProjection
from kgc_kd.distill.registry import Dims, Step
from kgc_kd.models.features import FeatureCapture
from kgc_kd.chain.stage_spec import objective_terms

FEATURE_TERMS = ("hidden_mse", "qkv_mse", "attn_out_mse", "ffn_mid_mse", "ffn_out_mse", "emb_mse", "attn_kl",
                 "attn_score_mse", "value_kl", "qkv_relation")
MSE_TERMS = FEATURE_TERMS[:6]
SAME = Dims(32, 32, 64, 64, 4, 4, 2, 4)
NARROW = Dims(16, 32, 32, 64, 2, 4, 1, 2)


def _objective(entries, dims, **settings):
    return Objective(objective_terms({"terms": entries, **settings}, dims) if entries else
                     objective_terms(settings, dims), dims)


# ---- construction, flags, features, parameters ---------------------------------------------------------------
def test_ce_alone_needs_nothing_of_the_teacher():
    obj = _objective([{"name": "ce"}], SAME)
    assert list(obj.terms) == ["ce"] and obj.weights == {"ce": 1.0}
    assert not (obj.needs_teacher or obj.needs_teacher_logits or obj.masks_inputs or obj.all_layers)
    assert obj.wanted("student") == {} and obj.wanted("teacher") == {} and not list(obj.parameters())
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = obj(Step(views={}, student={}, teacher=None, s_rows={}, t_rows=None, logits_s=logits))
    # 2 directions x mean over rows of -log(e / (e + 1))
    assert set(out) == {"ce"} and out["ce"].item() == pytest.approx(2 * 0.31326168751822286)


def test_pmd_shorthand_flags():
    obj = _objective(None, SAME, alpha=0.2, beta=0.3, pkd=0.1)
    assert list(obj.terms) == ["ce", "score", "mgfd", "pkd"]
    assert obj.weights == pytest.approx({"ce": 0.4, "score": 0.2, "mgfd": 0.3, "pkd": 0.1})
    assert obj.needs_teacher and obj.needs_teacher_logits and obj.masks_inputs and obj.all_layers
    assert obj.wanted("student") == {} and not list(obj.parameters())
    mgd = _objective(None, NARROW, alpha=0.0, beta=0.5, mgfd="generation")
    assert list(mgd.terms) == ["ce", "mgd"]
    assert mgd.needs_teacher and not (mgd.needs_teacher_logits or mgd.masks_inputs or mgd.all_layers)


def test_wanted_is_the_union_over_terms():
    terms = [{"name": "hidden_mse"},                      # uniform: (0, 1), (1, 3)
             {"name": "attn_kl", "layers": "last"},       # (1, 3)
             {"name": "qkv_mse", "layers": [0, 2]},       # (0, 0), (1, 2)
             {"name": "emb_mse"},                         # always (-1, -1)
             {"name": "ce", "weight": 0.5}]               # a logit term: no features
    obj = _objective(terms, SAME)
    assert obj.wanted("student") == {"hidden": [0, 1], "q": [0, 1], "k": [0, 1], "v": [0, 1], "embeddings": [-1]}
    assert obj.wanted("teacher") == {"hidden": [1, 3], "q": [0, 2, 3], "k": [0, 2, 3], "v": [0, 2],
                                     "embeddings": [-1]}
    assert obj.weights["ce"] == 0.5 and obj.needs_teacher


def test_generators_and_projections_are_the_objectives_parameters():
    obj = _objective([{"name": "mgd"}, {"name": "hidden_mse", "rank": 2}, {"name": "ffn_mid_mse", "rank": 3},
                      {"name": "qkv_relation", "relation_heads": 4}], NARROW)
    gens = obj.terms["mgd"].generators
    assert all(isinstance(g, MGDGenerator) for g in gens.values())
    per_generator = (16 * 32 + 32) + 2 * (3 * 32 * 32 + 32)  # align 16 -> 32, two kernel-3 convolutions
    per_hidden = 2 * (16 + 32) + 32
    per_ffn = 3 * (32 + 64) + 64
    assert all(isinstance(p, LowRankProjection) for p in obj.terms["hidden_mse"].projections.values())
    assert sum(p.numel() for p in obj.parameters()) == 2 * (per_generator + per_hidden + per_ffn)  # 2 sides
    assert not list(obj.terms["qkv_relation"].parameters())


def test_every_feature_term_builds_with_its_defaults_where_shapes_allow():
    obj = _objective([{"name": n, **({"relation_heads": 4} if n == "qkv_relation" else {})} for n in FEATURE_TERMS],
                     SAME)
    assert list(obj.terms) == list(FEATURE_TERMS)
    assert not obj.needs_teacher_logits and not obj.masks_inputs and not obj.all_layers and obj.needs_teacher


# ---- on tiny BERTs, through FeatureCapture -------------------------------------------------------------------
def _inputs():
    g = torch.Generator().manual_seed(7)
    out = {}
    for key, (b, n, pad) in {"hr": (3, 6, (1, 4)), "entities": (2, 8, (0, 5))}.items():
        ids = torch.randint(9, 60, (b, n), generator=g)
        mask = torch.ones(b, n, dtype=torch.long)
        mask[pad[0], pad[1]:] = 0
        ids[mask == 0] = 0
        out[key] = {"input_ids": ids, "attention_mask": mask}
    return out


def _encode(encoder, wanted, inputs, grad):
    out = {}
    for key, batch in inputs.items():
        with torch.set_grad_enabled(grad), FeatureCapture(encoder, wanted) as cap:
            encoder(**batch)
        out[key] = {"features": cap.features}
    return out


def _run(obj, student, teacher, grad=False):
    inputs = _inputs()
    views = {k: {"side": "query" if k == "hr" else "entity", "inputs": v} for k, v in inputs.items()}
    s = _encode(student, obj.wanted("student"), inputs, grad)
    t = _encode(teacher, obj.wanted("teacher"), inputs, False)
    return obj(Step(views, s, t, s_rows={}, t_rows={}, logits_s=torch.zeros(1, 1))), s, t


def _dims(student, teacher):
    return Dims.of(student.config, teacher.config)


def _all_terms(projection):
    return [{"name": n, **({"relation_heads": 4} if n == "qkv_relation" else {}),
             **({"projection": projection} if n in MSE_TERMS else {})} for n in FEATURE_TERMS]


@pytest.mark.parametrize("projection", ["identity", "lowrank"])
def test_every_term_is_zero_when_the_student_is_the_teacher(projection):
    student = make_tiny_bert(num_layers=2, hidden=32, heads=4, seed=0, dropout=0.0).eval()
    teacher = copy.deepcopy(student).requires_grad_(False)
    obj = _objective(_all_terms(projection), _dims(student, teacher))
    assert len(obj.terms) == 10
    out, _, _ = _run(obj, student, teacher)
    assert set(out) == set(FEATURE_TERMS)
    for name, value in out.items():  # lowrank at equal widths starts as the identity
        assert torch.isfinite(value) and abs(value.item()) < 1e-6, name
    # a different teacher gives a clearly positive value for every term (the zeros above are not vacuous)
    other = make_tiny_bert(num_layers=2, hidden=32, heads=4, seed=5, dropout=0.0).eval().requires_grad_(False)
    for name, value in _run(obj, student, other)[0].items():
        assert value.item() > 1e-4, name


def test_captured_features_reach_the_term_per_pair_and_side():
    student = make_tiny_bert(num_layers=2, hidden=32, heads=4, seed=0, dropout=0.0).eval()
    teacher = make_tiny_bert(num_layers=4, hidden=32, heads=4, seed=1, dropout=0.0).eval().requires_grad_(False)
    obj = _objective([{"name": "hidden_mse", "projection": "identity"}], _dims(student, teacher))
    out, _, _ = _run(obj, student, teacher)
    want = 0.0
    for key, batch in _inputs().items():
        mask = batch["attention_mask"]
        with torch.no_grad():  # the layer outputs, independently: Hugging Face's hidden_states[i + 1]
            hs = student(**batch, output_hidden_states=True).hidden_states
            ht = teacher(**batch, output_hidden_states=True).hidden_states
        for m, n in [(0, 1), (1, 3)]:
            diff2 = (hs[m + 1] - ht[n + 1]).pow(2).sum(-1)  # (B, L)
            want += float((diff2 * mask).sum() / (32 * mask.sum()))  # summed over pairs and sides
    assert out["hidden_mse"].item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("projection", ["lowrank", "linear", "shared"])
@pytest.mark.parametrize("relation_heads", [2, 4])
def test_narrower_shallower_student(projection, relation_heads):
    student = make_tiny_bert(num_layers=1, hidden=16, heads=2, seed=1, dropout=0.0).eval()
    teacher = make_tiny_bert(num_layers=2, hidden=32, heads=4, seed=0, dropout=0.0).eval().requires_grad_(False)
    terms = [{"name": n, "projection": projection, "rank": 8} for n in MSE_TERMS]
    terms.append({"name": "qkv_relation", "relation_heads": relation_heads})
    obj = _objective(terms, _dims(student, teacher))
    assert obj.wanted("student")["hidden"] == [0] and obj.wanted("teacher")["hidden"] == [1]
    out, _, _ = _run(obj, student, teacher)
    assert set(out) == set(MSE_TERMS) | {"qkv_relation"}
    for name, value in out.items():
        assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0, name


@pytest.mark.parametrize("name", ["attn_kl", "attn_score_mse", "value_kl"])
def test_head_to_head_terms_are_refused_for_unequal_heads(name):
    with pytest.raises(ValueError, match="attention heads one to one"):
        _objective([{"name": name}], NARROW)


def test_gradients_reach_student_and_projections_never_the_teacher():
    student = make_tiny_bert(num_layers=1, hidden=16, heads=2, seed=1, dropout=0.0).train()  # dropout 0
    teacher = make_tiny_bert(num_layers=2, hidden=32, heads=4, seed=0, dropout=0.0).eval().requires_grad_(False)
    terms = [{"name": n, "projection": "lowrank", "rank": 8} for n in MSE_TERMS]
    terms.append({"name": "qkv_relation", "relation_heads": 2})
    obj = _objective(terms, _dims(student, teacher))
    out, s, t = _run(obj, student, teacher, grad=True)
    assert all(f.requires_grad for view in s.values() for f in view["features"].values())
    assert not any(f.requires_grad for view in t.values() for f in view["features"].values())
    sum(out.values()).backward()
    for n, p in student.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n
    params = dict(obj.named_parameters())
    assert len(params) == 3 * 2 * 8  # u, v, bias x 2 sides x 8 projected kinds
    for n, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    for n, p in teacher.named_parameters():
        assert not p.requires_grad and p.grad is None, n


def test_every_module_of_the_distill_package_is_imported_so_its_terms_register():
    """A new term needs one new class in any module of kgc_kd/distill/: looking terms up imports them all."""
    import pkgutil
    import sys

    import kgc_kd.distill
    from kgc_kd.distill.registry import known_terms

    known_terms()
    modules = {f"kgc_kd.distill.{m.name}" for m in pkgutil.iter_modules(kgc_kd.distill.__path__)}
    assert {"kgc_kd.distill.terms", "kgc_kd.distill.feature_terms"} <= modules
    assert modules <= set(sys.modules)
