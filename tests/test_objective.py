"""FeatureObjective: MaKD / TinyBERT / MiniLM feature terms on captured layer internals."""

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import make_tiny_bert
from kgc_kd.distill.objective import FEATURE_TERMS, FeatureObjective, layer_pairs
from kgc_kd.distill.projection import LowRankProjection
from kgc_kd.models.features import FeatureCapture

MSE_TERMS = ("hidden_mse", "qkv_mse", "attn_out_mse", "ffn_mid_mse", "ffn_out_mse", "emb_mse")
PROJECTED = {"hidden_mse": ("hidden",), "qkv_mse": ("q", "k", "v"), "attn_out_mse": ("attn_out",),
             "ffn_mid_mse": ("ffn_mid",), "ffn_out_mse": ("ffn_out",), "emb_mse": ("embeddings",)}


# ---- layer_pairs ---------------------------------------------------------------------------------------------
def test_layer_pairs_uniform():
    assert layer_pairs("uniform", 2, 4) == [(0, 1), (1, 3)]
    assert layer_pairs("uniform", 1, 2) == [(0, 1)]
    assert layer_pairs("uniform", 4, 12) == [(0, 2), (1, 5), (2, 8), (3, 11)]
    assert layer_pairs("uniform", 6, 12) == [(0, 1), (1, 3), (2, 5), (3, 7), (4, 9), (5, 11)]
    assert layer_pairs("uniform", 3, 3) == [(0, 0), (1, 1), (2, 2)]


def test_layer_pairs_last():
    assert layer_pairs("last", 2, 4) == [(1, 3)]
    assert layer_pairs("last", 1, 12) == [(0, 11)]


def test_layer_pairs_explicit():
    assert layer_pairs([0, 2], 2, 4) == [(0, 0), (1, 2)]
    assert layer_pairs(["3", "1"], 2, 4) == [(0, 3), (1, 1)]  # YAML may hand strings


@pytest.mark.parametrize("layers, n_s, n_t", [([0], 2, 4), ([0, 1, 2], 2, 4), ([0, 4], 2, 4), ([-1, 3], 2, 4),
                                              ("uniform", 5, 4), ("skip", 2, 4)])
def test_layer_pairs_errors(layers, n_s, n_t):
    with pytest.raises(ValueError):
        layer_pairs(layers, n_s, n_t)


# ---- construction without running models ---------------------------------------------------------------------
class _Stub(nn.Module):
    def __init__(self, layers, hidden, heads):
        super().__init__()
        self.config = SimpleNamespace(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=heads,
                                      num_hidden_layers=layers)


def test_wanted_lists_the_mapped_layers():
    terms = [{"name": "hidden_mse"},                      # uniform: (0, 1), (1, 3)
             {"name": "attn_kl", "layers": "last"},       # (1, 3)
             {"name": "qkv_mse", "layers": [0, 2]},       # (0, 0), (1, 2)
             {"name": "emb_mse", "layers": "last"},       # always (-1, -1)
             {"name": "ce", "weight": 0.5}]               # logit term: not ours
    obj = FeatureObjective(terms, _Stub(2, 32, 4), _Stub(4, 32, 4))
    assert len(obj) == 4
    assert obj.wanted("student") == {"hidden": [0, 1], "q": [0, 1], "k": [0, 1], "v": [0, 1], "embeddings": [-1]}
    assert obj.wanted("teacher") == {"hidden": [1, 3], "q": [0, 2, 3], "k": [0, 2, 3], "v": [0, 2],
                                     "embeddings": [-1]}
    emb = next(t for t in obj.terms if t["name"] == "emb_mse")
    assert emb["pairs"] == [(-1, -1)]


def test_wanted_is_empty_without_feature_terms():
    obj = FeatureObjective([{"name": "ce"}, {"name": "score"}], _Stub(2, 32, 4), _Stub(4, 32, 4))
    assert len(obj) == 0 and obj.wanted("student") == {} and obj.wanted("teacher") == {}
    assert len(obj.projections) == 0


@pytest.mark.parametrize("r, s_width, t_width", [(3, 16, 32), (12, 16, 32), (16, 16, 24), (5, 20, 32)])
def test_qkv_relation_heads_must_divide_both_widths(r, s_width, t_width):
    with pytest.raises(ValueError, match="relation_heads"):
        FeatureObjective([{"name": "qkv_relation", "relation_heads": r}], _Stub(1, s_width, 2),
                         _Stub(2, t_width, 4))


def test_qkv_relation_default_relation_heads_rejects_tiny_widths():
    with pytest.raises(ValueError, match="relation_heads"):  # default 12 divides neither 16 nor 32
        FeatureObjective([{"name": "qkv_relation"}], _Stub(1, 16, 2), _Stub(2, 32, 4))


def test_projection_modules_and_parameter_counts():
    terms = [{"name": n, "projection": "lowrank", "rank": 8} for n in MSE_TERMS]
    terms.append({"name": "qkv_relation", "relation_heads": 4})
    obj = FeatureObjective(terms, _Stub(1, 16, 2), _Stub(2, 32, 4))
    want = {f"{n}-{side}-{k}" for n, kinds in PROJECTED.items() for side in ("query", "entity") for k in kinds}
    assert set(obj.projections) == want  # none for qkv_relation
    for key, p in obj.projections.items():
        assert isinstance(p, LowRankProjection)
        d_in, d_out = (32, 64) if key.startswith("ffn_mid") else (16, 32)
        assert sum(x.numel() for x in p.parameters()) == 8 * (d_in + d_out), key
    # the projections are sub-modules, so the optimizer sees them through obj.parameters()
    assert sum(x.numel() for x in obj.parameters()) == sum(x.numel() for x in obj.projections.parameters()) > 0


def test_auto_projection():
    same = FeatureObjective([{"name": n} for n in MSE_TERMS], _Stub(1, 32, 4), _Stub(2, 32, 4))
    assert all(isinstance(p, nn.Identity) for p in same.projections.values()) and len(same.projections) == 16
    assert sum(x.numel() for x in same.parameters()) == 0
    narrow = FeatureObjective([{"name": n, "rank": 4} for n in MSE_TERMS], _Stub(1, 16, 2), _Stub(2, 32, 4))
    assert all(isinstance(p, LowRankProjection) for p in narrow.projections.values())
    with pytest.raises(ValueError, match="identity"):
        FeatureObjective([{"name": "hidden_mse", "projection": "identity"}], _Stub(1, 16, 2), _Stub(2, 32, 4))


# ---- on real tiny encoders -----------------------------------------------------------------------------------
def _batches():
    g = torch.Generator().manual_seed(7)
    out = {}
    for side, (b, n, pad) in {"query": (3, 6, (1, 4)), "entity": (2, 8, (0, 5))}.items():
        ids = torch.randint(9, 60, (b, n), generator=g)
        mask = torch.ones(b, n, dtype=torch.long)
        mask[pad[0], pad[1]:] = 0
        ids[mask == 0] = 0
        out[side] = (ids, mask)
    return out


def _capture(encoder, wanted, batches, grad):
    feats = {}
    for side, (ids, mask) in batches.items():
        with torch.set_grad_enabled(grad), FeatureCapture(encoder, wanted) as cap:
            encoder(input_ids=ids, attention_mask=mask)
        feats[side] = cap.features
    return feats


def _run(obj, student, teacher, grad=False):
    batches = _batches()
    s = _capture(student, obj.wanted("student"), batches, grad)
    t = _capture(teacher, obj.wanted("teacher"), batches, False)
    return obj(s, t, {side: mask for side, (_, mask) in batches.items()})


def _all_terms(projection):
    return [{"name": n, "projection": projection, "relation_heads": 4} for n in FEATURE_TERMS]


@pytest.mark.parametrize("projection", ["identity", "auto"])
def test_every_term_is_zero_when_the_student_is_the_teacher(projection):
    student = make_tiny_bert(num_layers=2, hidden=32, heads=4, seed=0, dropout=0.0).eval()
    teacher = copy.deepcopy(student).requires_grad_(False)
    obj = FeatureObjective(_all_terms(projection), student, teacher)
    assert len(obj) == len(FEATURE_TERMS) == 10
    assert sum(x.numel() for x in obj.parameters()) == 0
    out = _run(obj, student, teacher)
    assert set(out) == set(FEATURE_TERMS)
    for name, value in out.items():
        assert torch.isfinite(value) and abs(value.item()) < 1e-6, name
    # a different teacher gives a clearly positive value for every term (the zeros above are not vacuous)
    other = make_tiny_bert(num_layers=2, hidden=32, heads=4, seed=5, dropout=0.0).eval().requires_grad_(False)
    for name, value in _run(obj, student, other).items():
        assert value.item() > 1e-4, name


def test_values_are_averaged_over_pairs_and_summed_over_sides():
    student = make_tiny_bert(num_layers=2, hidden=32, heads=4, seed=0, dropout=0.0).eval()
    teacher = make_tiny_bert(num_layers=4, hidden=32, heads=4, seed=1, dropout=0.0).eval().requires_grad_(False)
    obj = FeatureObjective([{"name": "hidden_mse", "projection": "identity"}], student, teacher)
    batches = _batches()
    s = _capture(student, obj.wanted("student"), batches, False)
    t = _capture(teacher, obj.wanted("teacher"), batches, False)
    masks = {side: mask for side, (_, mask) in batches.items()}
    want = 0.0
    for side, mask in masks.items():
        per_pair = []
        for m, n in [(0, 1), (1, 3)]:
            diff2 = (s[side][("hidden", m)] - t[side][("hidden", n)]).pow(2).sum(-1)  # (B, L)
            per_pair.append(float((diff2 * mask).sum() / (32 * mask.sum())))
        want += sum(per_pair) / 2
    assert obj(s, t, masks)["hidden_mse"].item() == pytest.approx(want, rel=1e-5)


def _narrow_pair():
    student = make_tiny_bert(num_layers=1, hidden=16, heads=2, seed=1, dropout=0.0)
    teacher = make_tiny_bert(num_layers=2, hidden=32, heads=4, seed=0, dropout=0.0).eval().requires_grad_(False)
    return student, teacher


@pytest.mark.parametrize("projection", ["lowrank", "auto", "linear"])
@pytest.mark.parametrize("relation_heads", [2, 4])
def test_narrower_shallower_student(projection, relation_heads):
    student, teacher = _narrow_pair()
    terms = [{"name": n, "projection": projection, "rank": 8} for n in MSE_TERMS]
    terms.append({"name": "qkv_relation", "relation_heads": relation_heads})
    obj = FeatureObjective(terms, student, teacher)
    assert obj.wanted("student")["hidden"] == [0] and obj.wanted("teacher")["hidden"] == [1]
    out = _run(obj, student.eval(), teacher)
    assert set(out) == set(MSE_TERMS) | {"qkv_relation"}
    for name, value in out.items():
        assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0, name


@pytest.mark.parametrize("name", ["attn_kl", "attn_score_mse", "value_kl"])
def test_head_to_head_terms_raise_for_unequal_heads(name):
    student, teacher = _narrow_pair()
    obj = FeatureObjective([{"name": name}], student, teacher)
    with pytest.raises(ValueError, match="head"):
        _run(obj, student.eval(), teacher)


def test_gradients_reach_student_and_projections_never_the_teacher():
    student, teacher = _narrow_pair()
    student.train()  # dropout 0: train mode is deterministic
    terms = [{"name": n, "projection": "lowrank", "rank": 8} for n in MSE_TERMS]
    terms.append({"name": "qkv_relation", "relation_heads": 2})
    obj = FeatureObjective(terms, student, teacher)
    batches = _batches()
    s = _capture(student, obj.wanted("student"), batches, True)
    t = _capture(teacher, obj.wanted("teacher"), batches, False)
    assert all(f.requires_grad for side in s.values() for f in side.values())
    assert not any(f.requires_grad for side in t.values() for f in side.values())
    out = obj(s, t, {side: mask for side, (_, mask) in batches.items()})
    sum(out.values()).backward()
    for n, p in student.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n
    params = dict(obj.projections.named_parameters())
    assert len(params) == 2 * len(obj.projections) == 2 * 2 * 8  # u, v x 2 sides x 8 projected kinds
    for n, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    for n, p in teacher.named_parameters():
        assert not p.requires_grad and p.grad is None, n
