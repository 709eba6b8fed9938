"""Feature-level loss terms (kd_losses_spec §0, §1.3, §2.2-2.4): masked reductions, KL direction,
padding invariance, numerics and dtypes, checked against hand values and float64 brute-force loops."""

import math

import pytest
import torch

from kgc_kd.distill.aspects import (
    attention_kl,
    attention_score_mse,
    masked_mse,
    relation_kl,
    relation_logits,
    row_kl,
    split_heads,
    value_relation_kl,
)

MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])  # B=2, L=5, 3 + 5 real tokens


def _rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ---- independent float64 references (python loops over b, head, real row t, real column s) ------------------
def _ref_logits(a, b, heads):
    """[b][head] -> L x L list of a_h . b_h / sqrt(d_h), with plain python arithmetic."""
    a, b = a.double().tolist(), b.double().tolist()
    d = len(a[0][0])
    dh = d // heads
    out = []
    for bi in range(len(a)):
        per_head = []
        for h in range(heads):
            cols = range(h * dh, (h + 1) * dh)
            per_head.append([[sum(a[bi][t][c] * b[bi][s][c] for c in cols) / math.sqrt(dh)
                              for s in range(len(a[0]))] for t in range(len(a[0]))])
        out.append(per_head)
    return out


def _ref_row_kl(t_logits, s_logits, mask):
    """sum_{b,a,real t} sum_{real s} P^T (log P^T - log P^S) / (heads * #real rows); softmax over real columns."""
    mask = mask.tolist()
    heads = len(t_logits[0])
    total, rows = 0.0, 0
    for b, m in enumerate(mask):
        real = [i for i, v in enumerate(m) if v]
        rows += len(real)
        for a in range(heads):
            for t in real:
                zt = [t_logits[b][a][t][s] for s in real]
                zs = [s_logits[b][a][t][s] for s in real]
                lt = [z - math.log(sum(math.exp(y) for y in zt)) for z in zt]
                ls = [z - math.log(sum(math.exp(y) for y in zs)) for z in zs]
                total += sum(math.exp(x) * (x - y) for x, y in zip(lt, ls))
    return total / (heads * rows)


def _tolist_logits(x):
    return x.double().tolist()


def _pad(x, mask, extra=3, seed=99, scale=5.0):
    """Append `extra` padded positions holding arbitrary values."""
    junk = _rand(x.shape[0], extra, *x.shape[2:], seed=seed, scale=scale).to(x.dtype)
    return torch.cat([x, junk], 1), torch.cat([mask, torch.zeros(mask.shape[0], extra, dtype=mask.dtype)], 1)


# ---- masked_mse ----------------------------------------------------------------------------------------------
def test_masked_mse_hand_value():
    s = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [9.0, 9.0]]])
    t = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[0.0, 3.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1], [1, 0]])
    # real tokens: (1,2)-(0,0) -> 1+4; (3,4)-(1,1) -> 4+9; (0,1)-(0,3) -> 0+4  => 22 / (d=2 * 3 tokens)
    assert masked_mse(s, t, mask).item() == pytest.approx(22 / 6)


def test_masked_mse_padding_invariance():
    s, t = _rand(2, 5, 6, seed=1), _rand(2, 5, 6, seed=2)
    ref = masked_mse(s, t, MASK)
    sp, mp = _pad(s, MASK, seed=3)
    tp, _ = _pad(t, MASK, seed=4)
    torch.testing.assert_close(masked_mse(sp, tp, mp), ref, rtol=1e-6, atol=1e-7)
    # padding already inside the sequence is ignored too: change the padded values of row 0
    s2 = s.clone()
    s2[0, 3:] = 1e3
    torch.testing.assert_close(masked_mse(s2, t, MASK), ref, rtol=1e-6, atol=1e-7)


def test_masked_mse_all_padding_is_zero_not_nan():
    s, t = _rand(2, 4, 3, seed=1), _rand(2, 4, 3, seed=2)
    assert masked_mse(s, t, torch.zeros(2, 4)).item() == 0.0


# ---- row_kl and the shared helpers ---------------------------------------------------------------------------
def test_split_heads_and_relation_logits():
    x = torch.arange(2 * 3 * 6, dtype=torch.float64).view(2, 3, 6)
    h = split_heads(x, 3)
    assert h.shape == (2, 3, 3, 2)
    torch.testing.assert_close(h[1, 2, 0], x[1, 0, 4:6])
    with pytest.raises(ValueError):
        split_heads(x, 4)
    a, b = _rand(2, 5, 6, seed=1).double(), _rand(2, 5, 6, seed=2).double()
    torch.testing.assert_close(relation_logits(a, b, 3), torch.tensor(_ref_logits(a, b, 3), dtype=torch.float64))


def test_row_kl_matches_brute_force_double_loop():
    t_logits = _rand(2, 3, 5, 5, seed=5, scale=2.0).double()  # B=2, heads=3, L=5
    s_logits = _rand(2, 3, 5, 5, seed=6, scale=2.0).double()
    got = row_kl(t_logits, s_logits, MASK)
    want = _ref_row_kl(_tolist_logits(t_logits), _tolist_logits(s_logits), MASK)
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert want > 0.01  # a real difference, not a trivially zero case


def test_row_kl_is_teacher_to_student_forward_kl():
    # B=1, h=1, L=2: both teacher rows are [4, 0], the student is uniform
    t_logits = torch.tensor([[[[4.0, 0.0], [4.0, 0.0]]]], dtype=torch.float64)
    s_logits = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    mask = torch.ones(1, 2)
    p = torch.tensor([math.exp(4) / (math.exp(4) + 1), 1 / (math.exp(4) + 1)], dtype=torch.float64)
    forward = float((p * (p / 0.5).log()).sum())  # KL(P^T || uniform)
    assert row_kl(t_logits, s_logits, mask).item() == pytest.approx(forward, rel=1e-9)
    reverse = float((0.5 * (0.5 / p).log()).sum())
    assert abs(forward - reverse) > 0.1


def test_relation_terms_match_float64_reference():
    q_s, k_s, v_s = (_rand(2, 5, 6, seed=s) for s in (11, 12, 13))
    q_t, k_t, v_t = (_rand(2, 5, 6, seed=s) for s in (21, 22, 23))
    heads = 3
    want_att = _ref_row_kl(_ref_logits(q_t, k_t, heads), _ref_logits(q_s, k_s, heads), MASK)
    want_val = _ref_row_kl(_ref_logits(v_t, v_t, heads), _ref_logits(v_s, v_s, heads), MASK)
    want_rel = _ref_row_kl(_ref_logits(q_t, q_t, 2), _ref_logits(q_s, q_s, 2), MASK)
    assert attention_kl(q_s, k_s, q_t, k_t, MASK, heads, heads).item() == pytest.approx(want_att, rel=1e-4)
    assert value_relation_kl(v_s, v_t, MASK, heads, heads).item() == pytest.approx(want_val, rel=1e-4)
    assert relation_kl(q_s, q_t, MASK, 2).item() == pytest.approx(want_rel, rel=1e-4)


# ---- identity, padding, numerics -----------------------------------------------------------------------------
def _inputs(seed=0, b=2, n=5, d=8, scale=1.0):
    return [_rand(b, n, d, seed=seed + i, scale=scale) for i in range(3)]


def _all_terms(s, t, mask, heads=2, relation_heads=4):
    """Every loss of aspects.py on student (q, k, v) vs teacher (q, k, v)."""
    (qs, ks, vs), (qt, kt, vt) = s, t
    return {
        "attention_kl": attention_kl(qs, ks, qt, kt, mask, heads, heads),
        "value_relation_kl": value_relation_kl(vs, vt, mask, heads, heads),
        "relation_kl": relation_kl(qs, qt, mask, relation_heads),
        "attention_score_mse": attention_score_mse(qs, ks, qt, kt, mask, heads, heads),
        "masked_mse": masked_mse(vs, vt, mask),
    }


def test_identical_student_and_teacher_give_zero():
    x = _inputs(seed=0, scale=3.0)
    for name, value in _all_terms(x, [t.clone() for t in x], MASK).items():
        assert abs(value.item()) < 1e-6, name


def test_every_term_is_unchanged_by_extra_padding():
    s, t = _inputs(seed=0), _inputs(seed=10)
    ref = _all_terms(s, t, MASK)
    assert all(v.item() > 1e-3 for v in ref.values())
    padded = [_pad(x, MASK, seed=50 + i) for i, x in enumerate(s + t)]
    mp = padded[0][1]
    sp, tp = [p[0] for p in padded[:3]], [p[0] for p in padded[3:]]
    got = _all_terms(sp, tp, mp)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_fully_masked_sequence_is_finite_and_ignored():
    s, t = _inputs(seed=0, b=2), _inputs(seed=10, b=2)
    ref = _all_terms(s, t, MASK)
    # add a third sequence whose mask is all zeros (arbitrary values)
    s3 = [torch.cat([x, _rand(1, 5, 8, seed=70 + i, scale=4.0)]) for i, x in enumerate(s)]
    t3 = [torch.cat([x, _rand(1, 5, 8, seed=80 + i, scale=4.0)]) for i, x in enumerate(t)]
    m3 = torch.cat([MASK, torch.zeros(1, 5, dtype=MASK.dtype)])
    got = _all_terms(s3, t3, m3)
    for name in ref:
        assert torch.isfinite(got[name]), name
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)
    # a batch with no real token at all: zero, not NaN
    for name, value in _all_terms(s, t, torch.zeros_like(MASK)).items():
        assert torch.isfinite(value) and value.item() == 0.0, name


@pytest.mark.parametrize("scale", [1e3, 1e6])
def test_kl_terms_finite_with_large_inputs(scale):
    s, t = _inputs(seed=0, scale=scale), _inputs(seed=10, scale=scale)
    values = _all_terms(s, t, MASK)
    for name in ("attention_kl", "value_relation_kl", "relation_kl"):
        assert torch.isfinite(values[name]) and values[name].item() >= 0.0, name
    # identical large inputs are still ~0 (no 0 * inf / inf - inf)
    same = _all_terms(s, [x.clone() for x in s], MASK)
    for name in ("attention_kl", "value_relation_kl", "relation_kl"):
        assert torch.isfinite(same[name]) and abs(same[name].item()) < 1e-6, name


# ---- widths and heads ----------------------------------------------------------------------------------------
def test_relation_kl_student_narrower_with_fewer_heads():
    x_s, x_t = _rand(2, 5, 16, seed=1), _rand(2, 5, 32, seed=2)  # student 16 / 2 heads, teacher 32 / 4 heads
    got = relation_kl(x_s, x_t, MASK, 4)
    want = _ref_row_kl(_ref_logits(x_t, x_t, 4), _ref_logits(x_s, x_s, 4), MASK)
    assert got.item() == pytest.approx(want, rel=1e-4)
    assert torch.isfinite(relation_kl(x_s, x_t, MASK, 2))
    with pytest.raises(ValueError):
        relation_kl(x_s, x_t, MASK, 3)  # 3 divides neither width


def test_attention_kl_equal_heads_different_widths_works():
    q_s, k_s = _rand(2, 5, 16, seed=1), _rand(2, 5, 16, seed=2)
    q_t, k_t = _rand(2, 5, 32, seed=3), _rand(2, 5, 32, seed=4)
    got = attention_kl(q_s, k_s, q_t, k_t, MASK, 4, 4)
    want = _ref_row_kl(_ref_logits(q_t, k_t, 4), _ref_logits(q_s, k_s, 4), MASK)
    assert got.item() == pytest.approx(want, rel=1e-4)


def test_head_to_head_terms_raise_for_unequal_heads():
    q_s, k_s, v_s = _inputs(seed=0, d=16)
    q_t, k_t, v_t = _inputs(seed=10, d=32)
    with pytest.raises(ValueError, match="head"):
        attention_kl(q_s, k_s, q_t, k_t, MASK, 2, 4)
    with pytest.raises(ValueError, match="head"):
        value_relation_kl(v_s, v_t, MASK, 2, 4)
    with pytest.raises(ValueError, match="head"):
        attention_score_mse(q_s, k_s, q_t, k_t, MASK, 2, 4)


# ---- dtypes --------------------------------------------------------------------------------------------------
def test_bf16_inputs_under_autocast_give_float32():
    s = [x.bfloat16() for x in _inputs(seed=0)]
    t = [x.bfloat16() for x in _inputs(seed=10)]
    ref = _all_terms([x.float() for x in s], [x.float() for x in t], MASK)  # same values, fp32, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _all_terms(s, t, MASK)
    for name, value in got.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, ref[name], rtol=1e-5, atol=1e-6, msg=name)


# ---- TinyBERT attention-score MSE ----------------------------------------------------------------------------
def test_attention_score_mse_tiny_hand_value():
    # 1 head, d=1, L=2, second token padded: only the (0, 0) score pair counts
    q_s, k_s = torch.tensor([[[1.0], [5.0]]]), torch.tensor([[[2.0], [7.0]]])
    zero = torch.zeros(1, 2, 1)
    mask = torch.tensor([[1, 0]])
    assert attention_score_mse(q_s, k_s, zero, zero, mask, 1, 1).item() == pytest.approx(4.0)
    # both real: scores [[2, 7], [10, 35]] -> (4 + 49 + 100 + 1225) / 4
    assert attention_score_mse(q_s, k_s, zero, zero, torch.ones(1, 2), 1, 1).item() == pytest.approx(1378 / 4)


def test_attention_score_mse_counts_only_real_pairs():
    q_s, k_s = _rand(2, 5, 6, seed=1), _rand(2, 5, 6, seed=2)
    q_t, k_t = _rand(2, 5, 6, seed=3), _rand(2, 5, 6, seed=4)
    heads = 3
    ls, lt = _ref_logits(q_s, k_s, heads), _ref_logits(q_t, k_t, heads)
    total, pairs = 0.0, 0
    for b, m in enumerate(MASK.tolist()):
        real = [i for i, v in enumerate(m) if v]
        pairs += len(real) ** 2
        for a in range(heads):
            total += sum((ls[b][a][t][s] - lt[b][a][t][s]) ** 2 for t in real for s in real)
    want = total / (heads * pairs)  # heads * sum_b n_b^2 = 3 * (9 + 25)
    assert attention_score_mse(q_s, k_s, q_t, k_t, MASK, heads, heads).item() == pytest.approx(want, rel=1e-5)
