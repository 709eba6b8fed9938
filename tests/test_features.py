"""FeatureCapture: forward hooks record each layer's internals of a BERT-like encoder."""

import copy
import math

import pytest
import torch
from torch import nn

from conftest import make_tiny_bert
from kgc_kd.models.features import FEATURE_KINDS, FeatureCapture

LAYERS, HIDDEN, HEADS = 2, 32, 4
ALL = {k: ([-1] if k == "embeddings" else list(range(LAYERS))) for k in FEATURE_KINDS}


def _model(impl="sdpa"):
    m = make_tiny_bert(num_layers=LAYERS, hidden=HIDDEN, heads=HEADS, seed=0, dropout=0.0).eval()
    if m.config._attn_implementation != impl:
        m.set_attn_implementation(impl)
    assert m.config._attn_implementation == impl
    return m


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(9, 40, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    return ids, mask


def _heads(x):
    b, n, d = x.shape
    return x.view(b, n, HEADS, d // HEADS).transpose(1, 2)


def _probs(q, k, mask):
    """Independent reference: softmax(Q K^T / sqrt(d_k) + key bias) per head."""
    qh, kh = _heads(q), _heads(k)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])
    scores = scores + (1.0 - mask.float())[:, None, None, :] * -1e4
    return scores.softmax(-1)


def _capture(model, wanted=ALL, **kwargs):
    ids, mask = _batch()
    with torch.no_grad(), FeatureCapture(model, wanted) as cap:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kwargs)
    return cap, out, mask


def test_hidden_and_embeddings_match_output_hidden_states():
    cap, out, _ = _capture(_model())
    hs = out.hidden_states
    assert len(hs) == LAYERS + 1
    torch.testing.assert_close(cap.features[("embeddings", -1)], hs[0], rtol=0, atol=0)
    for i in range(LAYERS):
        torch.testing.assert_close(cap.features[("hidden", i)], hs[i + 1], rtol=0, atol=0)
    assert set(cap.features) == {(k, i) for k, idx in ALL.items() for i in idx}


def test_qkv_are_the_layer_projections_of_the_layer_input():
    model = _model()
    cap, out, _ = _capture(model)
    for i, layer in enumerate(model.encoder.layer):
        x = out.hidden_states[i]
        sa = layer.attention.self
        with torch.no_grad():
            for kind, lin in (("q", sa.query), ("k", sa.key), ("v", sa.value)):
                got = cap.features[(kind, i)]
                assert got.shape == (3, 7, HIDDEN)
                torch.testing.assert_close(got, x @ lin.weight.T + lin.bias, rtol=1e-5, atol=1e-6)


def test_attn_out_and_ffn_features_chain_to_the_layer_output():
    """attn_out is the attention block's dense output before the residual; ffn_mid the intermediate
    activation; ffn_out the FFN dense output before the residual: rebuilding the layer from them
    reproduces the next hidden state."""
    model = _model()
    cap, out, mask = _capture(model)
    real = mask.bool()
    for i, layer in enumerate(model.encoder.layer):
        f = {k: cap.features[(k, i)] for k in ("q", "k", "v", "attn_out", "ffn_mid", "ffn_out")}
        x = out.hidden_states[i]
        with torch.no_grad():
            ctx = (_probs(f["q"], f["k"], mask) @ _heads(f["v"])).transpose(1, 2).reshape(3, 7, HIDDEN)
            torch.testing.assert_close(f["attn_out"][real], layer.attention.output.dense(ctx)[real],
                                       rtol=1e-4, atol=1e-5)
            a = layer.attention.output.LayerNorm(f["attn_out"] + x)
            assert f["ffn_mid"].shape == (3, 7, model.config.intermediate_size)
            torch.testing.assert_close(f["ffn_mid"], layer.intermediate(a), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(f["ffn_out"], layer.output.dense(f["ffn_mid"]), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(layer.output.LayerNorm(f["ffn_out"] + a), out.hidden_states[i + 1],
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("capture_impl", ["eager", "sdpa"])
def test_probabilities_from_captured_qk_match_eager_attentions(capture_impl):
    eager = _model("eager")
    _, ref, mask = _capture(eager, {}, output_attentions=True)
    assert ref.attentions is not None and len(ref.attentions) == LAYERS
    model = copy.deepcopy(eager)
    model.set_attn_implementation(capture_impl)
    assert model.config._attn_implementation == capture_impl
    cap, out, _ = _capture(model, {"q": [0, 1], "k": [0, 1]})
    real = mask.bool()  # (B, L) real query rows
    for i in range(LAYERS):
        p = _probs(cap.features[("q", i)], cap.features[("k", i)], mask)
        want = ref.attentions[i]
        assert p.shape == want.shape == (3, HEADS, 7, 7)
        # compare real query rows only: (B, L, h, L)
        torch.testing.assert_close(p.transpose(1, 2)[real], want.transpose(1, 2)[real], rtol=1e-5, atol=1e-6)
        # padded key columns get no probability mass
        pad_mass = (p * (1.0 - mask.float())[:, None, None, :]).sum(-1)  # (B, h, L)
        assert float(pad_mass.transpose(1, 2)[real].max()) < 1e-6
    torch.testing.assert_close(out.hidden_states[-1][real], ref.hidden_states[-1][real], rtol=1e-4, atol=1e-5)


def _hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_hooks_are_removed_after_the_with_block():
    model = _model()
    _capture(model, {})  # transformers itself may install (persistent) output-recording hooks on first use
    before = _hook_count(model)
    cap, _, _ = _capture(model)
    assert _hook_count(model) == before
    saved = dict(cap.features)
    ids, mask = _batch()
    with torch.no_grad():
        model(input_ids=ids[:1, :3], attention_mask=mask[:1, :3])
    assert set(cap.features) == set(saved)
    for key, value in saved.items():
        assert cap.features[key] is value


def test_hooks_are_removed_when_the_block_raises():
    model = _model()
    ids, mask = _batch()
    before = _hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureCapture(model, {"hidden": [0]}) as cap:
            model(input_ids=ids, attention_mask=mask)
            raise RuntimeError("boom")
    assert _hook_count(model) == before
    cap.features.clear()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert cap.features == {}


def test_failed_enter_leaves_no_hooks():
    model = _model()
    before = _hook_count(model)
    with pytest.raises(IndexError):
        with FeatureCapture(model, {"hidden": [0], "q": [LAYERS + 3]}):
            pass
    assert _hook_count(model) == before


def test_empty_wanted_captures_nothing():
    cap, _, _ = _capture(_model(), {})
    assert cap.features == {}


def test_unknown_kind_raises_value_error():
    with pytest.raises(ValueError, match="attn_probs"):
        FeatureCapture(_model(), {"attn_probs": [0]})


def test_module_without_encoder_layer_raises_type_error():
    with pytest.raises(TypeError):
        with FeatureCapture(nn.Linear(4, 4), {"hidden": [0]}):
            pass


def test_layer_without_the_sub_module_raises_type_error():
    class Fake(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Module()
            self.encoder.layer = nn.ModuleList([nn.Linear(4, 4)])

    fake = Fake()
    with FeatureCapture(fake, {"hidden": [0]}) as cap:  # a layer output needs no sub-module
        fake.encoder.layer[0](torch.ones(1, 4))
    assert ("hidden", 0) in cap.features
    with pytest.raises(TypeError, match="attention.self.query"):
        with FeatureCapture(fake, {"q": [0]}):
            pass
