"""The feature-level terms (kgc_kd/distill/feature_terms.py) on hand-built captured features: every term's value
against an independent numpy formula, layer pairing, over_layers, projections (identity, lowrank, linear,
shared) and the parameter checks."""

import re

import numpy as np
import pytest
import torch
from torch import nn

from kgc_kd.distill.feature_terms import layer_pairs
from kgc_kd.distill.objective import Objective
from kgc_kd.distill.projection import LowRankProjection
from kgc_kd.distill.registry import Dims, Step, resolve_term, term_class

DIMS = Dims(4, 4, 6, 6, 2, 2, 2, 4)  # equal widths (4, FFN 6, 2 heads); 2 student layers under 4 teacher layers
MASKS = {"hr": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]), "entities": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0],
                                                                                     [1, 1, 1, 1]])}
PAIRS = [(0, 1), (1, 3)]  # "uniform" for 2 -> 4


def _build(name, dims=DIMS, **params):
    return term_class(name)(resolve_term({"name": name, **params}, dims)["params"], dims, shared=nn.ModuleDict())


def _features(kinds, layers, widths, seed):
    """{view: {(kind, layer): (B, L, width)}} with padding positions holding large junk."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for view, mask in MASKS.items():
        feats = {}
        for kind in kinds:
            for layer in layers:
                x = torch.randn(*mask.shape, widths.get(kind, widths["*"]), generator=g)
                feats[(kind, layer)] = x.masked_fill(~mask.bool().unsqueeze(-1), 50.0)
        out[view] = feats
    return out


def _step(sf, tf, with_head=True):
    sides = {"hr": "query", "entities": "entity"}
    views = {k: {"side": sides[k], "inputs": {"attention_mask": m}} for k, m in MASKS.items()}
    student = {k: {"features": sf[k]} for k in MASKS}
    teacher = {k: {"features": tf[k]} for k in MASKS}
    if with_head:  # the head-only inputs carry no captured features: every feature term must skip them
        views["head"] = {"side": "entity", "inputs": {"attention_mask": torch.ones(3, 4, dtype=torch.long)}}
        student["head"] = teacher["head"] = {"features": {}}
    return Step(views, student, teacher, s_rows={}, t_rows={}, logits_s=torch.zeros(1, 1))


# ---- independent numpy references ----------------------------------------------------------------------------
def np_mse(s, t, mask):
    real = mask.numpy().astype(bool)
    return float(((s.double().numpy() - t.double().numpy())[real] ** 2).mean())


def np_logits(a, b, heads):
    a, b = a.double().numpy(), b.double().numpy()
    B, L, d = a.shape
    ah = a.reshape(B, L, heads, d // heads).transpose(0, 2, 1, 3)
    bh = b.reshape(B, L, heads, d // heads).transpose(0, 2, 1, 3)
    return ah @ bh.transpose(0, 1, 3, 2) / np.sqrt(d // heads)  # (B, h, L, L)


def np_kl(zt, zs, mask):
    """KL(softmax teacher row || softmax student row) over real columns, averaged over heads and real rows."""
    total, count = 0.0, 0
    for b, m in enumerate(mask.numpy().astype(bool)):
        t, s = zt[b][:, m][:, :, m], zs[b][:, m][:, :, m]
        pt = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
        ps = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
        total += (pt * np.log(pt / ps)).sum()
        count += t.shape[0] * t.shape[1]
    return total / count


def np_score_mse(zs, zt, mask):
    sq = [((zs[b] - zt[b])[:, m][:, :, m] ** 2) for b, m in enumerate(mask.numpy().astype(bool))]
    return sum(x.sum() for x in sq) / sum(x.size for x in sq)


def _over(per_view_pairs, over):
    """Sum over views of the pairs' sum or mean."""
    return sum(sum(v) / (len(v) if over == "mean" else 1) for v in per_view_pairs)


# ---- layer_pairs ---------------------------------------------------------------------------------------------
def test_layer_pairs_uniform():
    assert layer_pairs("uniform", 2, 4) == [(0, 1), (1, 3)]
    assert layer_pairs("uniform", 1, 2) == [(0, 1)]
    assert layer_pairs("uniform", 4, 12) == [(0, 2), (1, 5), (2, 8), (3, 11)]
    assert layer_pairs("uniform", 6, 12) == [(0, 1), (1, 3), (2, 5), (3, 7), (4, 9), (5, 11)]
    assert layer_pairs("uniform", 3, 3) == [(0, 0), (1, 1), (2, 2)]


def test_layer_pairs_last_and_explicit():
    assert layer_pairs("last", 2, 4) == [(1, 3)]
    assert layer_pairs("last", 1, 12) == [(0, 11)]
    assert layer_pairs([0, 2], 2, 4) == [(0, 0), (1, 2)]
    assert layer_pairs(["3", "1"], 2, 4) == [(0, 3), (1, 1)]  # YAML may hand strings


@pytest.mark.parametrize("layers, n_s, n_t", [([0], 2, 4), ([0, 1, 2], 2, 4), ([0, 4], 2, 4), ([-1, 3], 2, 4),
                                              ("uniform", 5, 4), ("skip", 2, 4)])
def test_layer_pairs_errors(layers, n_s, n_t):
    with pytest.raises(ValueError):
        layer_pairs(layers, n_s, n_t)


@pytest.mark.parametrize("name, params, student, teacher", [
    ("hidden_mse", {}, {"hidden": [0, 1]}, {"hidden": [1, 3]}),
    ("qkv_mse", {"layers": [0, 2]}, {k: [0, 1] for k in "qkv"}, {k: [0, 2] for k in "qkv"}),
    ("attn_kl", {"layers": "last"}, {"q": [1], "k": [1]}, {"q": [3], "k": [3]}),
    ("ffn_mid_mse", {}, {"ffn_mid": [0, 1]}, {"ffn_mid": [1, 3]}),
    ("emb_mse", {}, {"embeddings": [-1]}, {"embeddings": [-1]}),
    ("qkv_relation", {"relation_heads": 2, "layers": [3, 3]}, {k: [0, 1] for k in "qkv"}, {k: [3] for k in "qkv"}),
])
def test_wanted_lists_the_captured_kinds_and_mapped_layers(name, params, student, teacher):
    term = _build(name, **params)
    assert term.wanted("student") == student and term.wanted("teacher") == teacher
    assert set(term.features) == set(student)


# ---- projected MSE terms -------------------------------------------------------------------------------------
@pytest.mark.parametrize("over", ["sum", "mean"])
@pytest.mark.parametrize("name, kind", [("hidden_mse", "hidden"), ("attn_out_mse", "attn_out"),
                                        ("ffn_out_mse", "ffn_out"), ("ffn_mid_mse", "ffn_mid")])
def test_projected_mse_with_identity_is_the_token_masked_mse(name, kind, over):
    widths = {"*": 4, "ffn_mid": 6}
    sf, tf = _features([kind], [0, 1], widths, 0), _features([kind], [1, 3], widths, 1)
    want = _over([[np_mse(sf[v][(kind, m)], tf[v][(kind, n)], MASKS[v]) for m, n in PAIRS] for v in MASKS], over)
    got = _build(name, projection="identity", over_layers=over)(_step(sf, tf))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_sum_over_layers_is_twice_the_mean_for_two_pairs():
    sf, tf = _features(["hidden"], [0, 1], {"*": 4}, 0), _features(["hidden"], [1, 3], {"*": 4}, 1)
    total = _build("hidden_mse", projection="identity")(_step(sf, tf)).item()
    mean = _build("hidden_mse", projection="identity", over_layers="mean")(_step(sf, tf)).item()
    assert total == pytest.approx(2 * mean, rel=1e-6) and total > 0


def test_explicit_layers_pick_the_teacher_layers():
    sf, tf = _features(["hidden"], [0, 1], {"*": 4}, 0), _features(["hidden"], [0, 2], {"*": 4}, 1)
    want = _over([[np_mse(sf[v][("hidden", m)], tf[v][("hidden", n)], MASKS[v]) for m, n in [(0, 2), (1, 0)]]
                  for v in MASKS], "sum")
    got = _build("hidden_mse", projection="identity", layers=[2, 0])(_step(sf, tf))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_qkv_mse_averages_q_k_and_v():
    sf, tf = _features("qkv", [1], {"*": 4}, 2), _features("qkv", [3], {"*": 4}, 3)
    want = sum(sum(np_mse(sf[v][(k, 1)], tf[v][(k, 3)], MASKS[v]) for k in "qkv") / 3 for v in MASKS)
    got = _build("qkv_mse", projection="identity", layers="last")(_step(sf, tf))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_emb_mse_compares_the_embedding_outputs():
    sf, tf = _features(["embeddings"], [-1], {"*": 4}, 4), _features(["embeddings"], [-1], {"*": 4}, 5)
    want = sum(np_mse(sf[v][("embeddings", -1)], tf[v][("embeddings", -1)], MASKS[v]) for v in MASKS)
    term = _build("emb_mse", projection="identity")
    assert term.pairs == [(-1, -1)]
    assert term(_step(sf, tf)).item() == pytest.approx(want, rel=1e-6)


def test_lowrank_at_equal_widths_starts_as_the_identity_and_trains():
    sf, tf = _features(["hidden"], [0, 1], {"*": 4}, 0), _features(["hidden"], [1, 3], {"*": 4}, 1)
    term = _build("hidden_mse", rank=2)  # the default projection
    assert all(isinstance(p, LowRankProjection) and p.residual for p in term.projections.values())
    want = _build("hidden_mse", projection="identity")(_step(sf, tf)).item()
    got = term(_step(sf, tf))
    assert got.item() == pytest.approx(want, rel=1e-6)
    got.backward()
    assert all(p.v.grad.abs().sum() > 0 for p in term.projections.values())


def test_linear_projection_bridges_widths_with_its_bias():
    dims = Dims(2, 3, 4, 4, 1, 1, 2, 4)
    sf, tf = _features(["hidden"], [0, 1], {"*": 2}, 6), _features(["hidden"], [1, 3], {"*": 3}, 7)
    term = _build("hidden_mse", dims=dims, projection="linear")
    w = {"query": torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, -1.0]]), "entity": torch.tensor([[0.5, 0.5]] * 3)}
    b = {"query": torch.tensor([0.0, 1.0, -1.0]), "entity": torch.tensor([2.0, 0.0, 0.0])}
    with torch.no_grad():
        for side in ("query", "entity"):
            term.projections[f"{side}-hidden"].weight.copy_(w[side])
            term.projections[f"{side}-hidden"].bias.copy_(b[side])
    sides = {"hr": "query", "entities": "entity"}
    want = _over([[np_mse(sf[v][("hidden", m)] @ w[sides[v]].T + b[sides[v]], tf[v][("hidden", n)], MASKS[v])
                   for m, n in PAIRS] for v in MASKS], "sum")
    assert term(_step(sf, tf)).item() == pytest.approx(want, rel=1e-5)


def test_lowrank_projections_per_side_and_kind_and_their_parameters():
    dims = Dims(4, 8, 6, 12, 2, 2, 2, 4)
    qkv, ffn = _build("qkv_mse", dims=dims, rank=3), _build("ffn_mid_mse", dims=dims, rank=5)
    assert set(qkv.projections) == {f"{s}-{k}" for s in ("query", "entity") for k in "qkv"}
    assert sum(p.numel() for p in qkv.parameters()) == 6 * (3 * (4 + 8) + 8)
    assert set(ffn.projections) == {"query-ffn_mid", "entity-ffn_mid"}  # over the intermediate widths
    assert sum(p.numel() for p in ffn.parameters()) == 2 * (5 * (6 + 12) + 12)
    assert term_class("ffn_mid_mse").params["rank"] == 128 and term_class("hidden_mse").params["rank"] == 64


def test_shared_projection_is_one_module_per_side_counted_once():
    dims = Dims(4, 8, 6, 12, 2, 2, 2, 4)
    specs = [resolve_term({"name": n, "projection": "shared"}, dims)
             for n in ("emb_mse", "hidden_mse", "qkv_mse", "ffn_mid_mse")]
    obj = Objective(specs, dims)
    emb, hid, qkv, ffn = (obj.terms[n].projections for n in ("emb_mse", "hidden_mse", "qkv_mse", "ffn_mid_mse"))
    for side in ("query", "entity"):
        fit = emb[f"{side}-embeddings"]
        assert isinstance(fit, nn.Linear) and fit.bias is not None
        assert hid[f"{side}-hidden"] is fit and all(qkv[f"{side}-{k}"] is fit for k in "qkv")
        assert ffn[f"{side}-ffn_mid"] is not fit and ffn[f"{side}-ffn_mid"].in_features == 6  # another width
    assert emb["query-embeddings"] is not emb["entity-embeddings"]
    assert sum(p.numel() for p in obj.parameters()) == 2 * (4 * 8 + 8) + 2 * (6 * 12 + 12)
    # both terms train the one module: its gradient is the sum of the two terms' gradients
    sf = {v: {**f, **_features(["hidden"], [0, 1], {"*": 4}, 9)[v]}
          for v, f in _features(["embeddings"], [-1], {"*": 4}, 8).items()}
    tf = {v: {**f, **_features(["hidden"], [1, 3], {"*": 8}, 11)[v]}
          for v, f in _features(["embeddings"], [-1], {"*": 8}, 10).items()}
    step = _step(sf, tf)
    grads = []
    for name in ("emb_mse", "hidden_mse"):
        obj.zero_grad()
        obj.terms[name](step).backward()
        grads.append(emb["query-embeddings"].weight.grad.clone())
    obj.zero_grad()
    (obj.terms["emb_mse"](step) + obj.terms["hidden_mse"](step)).backward()
    torch.testing.assert_close(emb["query-embeddings"].weight.grad, grads[0] + grads[1])


def test_shared_projection_needs_the_objectives_modules():
    spec = resolve_term({"name": "hidden_mse", "projection": "shared"}, DIMS)
    with pytest.raises(ValueError, match="shared modules"):
        term_class("hidden_mse")(spec["params"], DIMS, shared=None)


# ---- attention and relation terms ----------------------------------------------------------------------------
@pytest.mark.parametrize("over", ["sum", "mean"])
def test_attn_kl_is_the_attention_distribution_kl(over):
    sf, tf = _features("qk", [0, 1], {"*": 4}, 12), _features("qk", [1, 3], {"*": 4}, 13)
    want = _over([[np_kl(np_logits(tf[v][("q", n)], tf[v][("k", n)], 2), np_logits(sf[v][("q", m)], sf[v][("k", m)], 2),
                         MASKS[v]) for m, n in PAIRS] for v in MASKS], over)
    got = _build("attn_kl", over_layers=over)(_step(sf, tf))
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_attn_score_mse_is_the_pre_softmax_score_mse():
    sf, tf = _features("qk", [0, 1], {"*": 4}, 14), _features("qk", [1, 3], {"*": 4}, 15)
    want = _over([[np_score_mse(np_logits(sf[v][("q", m)], sf[v][("k", m)], 2),
                                np_logits(tf[v][("q", n)], tf[v][("k", n)], 2), MASKS[v]) for m, n in PAIRS]
                  for v in MASKS], "sum")
    assert _build("attn_score_mse")(_step(sf, tf)).item() == pytest.approx(want, rel=1e-5)


def test_value_kl_is_the_value_relation_kl():
    sf, tf = _features("v", [0, 1], {"*": 4}, 16), _features("v", [1, 3], {"*": 4}, 17)
    want = _over([[np_kl(np_logits(tf[v][("v", n)], tf[v][("v", n)], 2), np_logits(sf[v][("v", m)], sf[v][("v", m)], 2),
                         MASKS[v]) for m, n in PAIRS] for v in MASKS], "sum")
    assert _build("value_kl")(_step(sf, tf)).item() == pytest.approx(want, rel=1e-5)


def test_qkv_relation_sums_q_k_and_v_relation_kl_across_widths_and_heads():
    dims = Dims(4, 6, 8, 12, 2, 3, 2, 4)  # widths and head counts differ: the relation heads re-split both
    sf, tf = _features("qkv", [0, 1], {"*": 4}, 18), _features("qkv", [1, 3], {"*": 6}, 19)
    want = _over([[sum(np_kl(np_logits(tf[v][(k, n)], tf[v][(k, n)], 2), np_logits(sf[v][(k, m)], sf[v][(k, m)], 2),
                             MASKS[v]) for k in "qkv") for m, n in PAIRS] for v in MASKS], "sum")
    got = _build("qkv_relation", dims=dims, relation_heads=2)(_step(sf, tf))
    assert got.item() == pytest.approx(want, rel=1e-5)
    one = _build("qkv_relation", dims=dims, relation_heads=1)(_step(sf, tf)).item()
    assert one != pytest.approx(got.item(), rel=1e-3)  # relation_heads changes the relations


@pytest.mark.parametrize("name, kinds", [("attn_kl", "qk"), ("attn_score_mse", "qk"), ("value_kl", "v"),
                                         ("qkv_relation", "qkv")])
def test_relation_terms_are_zero_for_equal_features_and_ignore_padding(name, kinds):
    sf = _features(kinds, [0, 1], {"*": 4}, 20)
    tf = {v: {(k, n): sf[v][(k, m)].clone() for k in kinds for m, n in PAIRS} for v in sf}
    term = _build(name, relation_heads=2) if name == "qkv_relation" else _build(name)
    assert abs(term(_step(sf, tf)).item()) < 1e-6
    other = _features(kinds, [1, 3], {"*": 4}, 21)
    base = term(_step(sf, other)).item()
    assert base > 1e-4
    for view, feats in other.items():  # new junk at the padded positions of the teacher
        for x in feats.values():
            x.masked_fill_(~MASKS[view].bool().unsqueeze(-1), -30.0)
    assert term(_step(sf, other)).item() == pytest.approx(base, rel=1e-6)


# ---- checks --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("r, s_width, t_width", [(3, 16, 32), (12, 16, 32), (16, 16, 24), (5, 20, 32)])
def test_qkv_relation_heads_must_divide_both_widths(r, s_width, t_width):
    dims = Dims(s_width, t_width, 2 * s_width, 2 * t_width, 2, 4, 1, 2)
    with pytest.raises(ValueError, match=f"relation_heads={r} must divide the student"):
        resolve_term({"name": "qkv_relation", "relation_heads": r}, dims)


def test_qkv_relation_default_and_lower_bound():
    assert term_class("qkv_relation").params["relation_heads"] == 48
    with pytest.raises(ValueError, match="relation_heads=48 must divide"):  # 48 divides neither 16 nor 32
        resolve_term({"name": "qkv_relation"}, Dims(16, 32, 32, 64, 2, 4, 1, 2))
    assert resolve_term({"name": "qkv_relation", "relation_heads": 8}, Dims(16, 32, 32, 64, 2, 4, 1, 2))
    with pytest.raises(ValueError, match="relation_heads=0; expected >= 1"):
        resolve_term({"name": "qkv_relation", "relation_heads": 0})


@pytest.mark.parametrize("name", ["attn_kl", "attn_score_mse", "value_kl"])
def test_head_terms_reject_unequal_head_counts(name):
    dims = Dims(4, 4, 8, 8, 1, 2, 2, 4)
    with pytest.raises(ValueError, match=re.escape(f"loss term {name!r} compares attention heads one to one: the "
                                                   "student has 1, the teacher 2")):
        resolve_term({"name": name}, dims)
    # built without the check (no dims when the spec was resolved), the loss itself still refuses
    term = term_class(name)(resolve_term({"name": name})["params"], dims)
    kinds = "v" if name == "value_kl" else "qk"
    with pytest.raises(ValueError, match="head"):
        term(_step(_features(kinds, [0, 1], {"*": 4}, 0), _features(kinds, [1, 3], {"*": 4}, 1)))
    assert resolve_term({"name": "qkv_relation", "relation_heads": 2}, dims)  # its relation heads are free


@pytest.mark.parametrize("entry, message", [
    ({"name": "hidden_mse", "over_layers": "max"}, "over_layers='max'; expected sum or mean"),
    ({"name": "attn_kl", "over_layers": "median"}, "over_layers='median'"),
    ({"name": "qkv_mse", "projection": "auto"}, "auto was removed"),
    ({"name": "hidden_mse", "projection": "mlp"}, "expected one of lowrank, linear, shared, identity"),
    ({"name": "ffn_out_mse", "rank": 0}, "rank=0; expected >= 1"),
])
def test_feature_term_parameter_errors(entry, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_term(entry)


def test_checks_against_the_encoders_shapes():
    narrow = Dims(4, 8, 6, 12, 2, 2, 2, 4)
    with pytest.raises(ValueError, match=re.escape("projection=identity needs equal widths, got 4 -> 8")):
        resolve_term({"name": "hidden_mse", "projection": "identity"}, narrow)
    with pytest.raises(ValueError, match=re.escape("got 6 -> 12")):  # the intermediate widths
        resolve_term({"name": "ffn_mid_mse", "projection": "identity"}, narrow)
    with pytest.raises(ValueError, match=re.escape("got 6 -> 12")):
        resolve_term({"name": "ffn_mid_mse", "projection": "identity"}, Dims(4, 4, 6, 12, 2, 2, 2, 4))
    with pytest.raises(ValueError, match=re.escape("loss term 'attn_kl': term layers [0, 9]")):
        resolve_term({"name": "attn_kl", "layers": [0, 9]}, DIMS)
    with pytest.raises(ValueError, match="'skip'"):
        resolve_term({"name": "hidden_mse", "layers": "skip"}, DIMS)
