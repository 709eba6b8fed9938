import math

import pytest
import torch

from kgc_kd.distill.score import score_kl, score_loss, score_mse

S = torch.tensor([[2.0, -1.0, 0.5, -1e4], [0.0, 3.0, -1e4, 1.0]])
T = torch.tensor([[1.0, 0.0, 0.5, -1e4], [1.0, 1.0, -1e4, -2.0]])


def _hand_kl(s, t, temp):
    """sum_j p_t log(p_t / p_s) per row, mean over rows, times T^2 -- in float64 with explicit sums."""
    total = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        zs = [x / temp for x in srow]
        zt = [x / temp for x in trow]
        ms, mt = max(zs), max(zt)
        ls = math.log(sum(math.exp(x - ms) for x in zs)) + ms
        lt = math.log(sum(math.exp(x - mt) for x in zt)) + mt
        for a, b in zip(zs, zt):
            pt = math.exp(b - lt)
            if pt > 0:
                total += pt * ((b - lt) - (a - ls))
    return total / len(s) * temp**2


def test_mse_equals_hand_value_with_masked_entries():
    # masked -1e4 entries equal on both sides: 0 error but counted in the mean over 8 entries
    sq = (1.0**2 + 1.0**2 + 0.0 + 0.0) + (1.0**2 + 2.0**2 + 0.0 + 3.0**2)
    assert math.isclose(float(score_mse(S, T)), sq / 8, rel_tol=1e-6)


def test_mse_identical_is_zero():
    assert float(score_mse(S, S.clone())) == 0.0


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_kl_equals_hand_value(temp):
    s = torch.tensor([[2.0, -1.0, 0.5, 0.3], [0.0, 3.0, -0.7, 1.0], [0.1, 0.2, 0.3, 0.4]])
    t = torch.tensor([[1.0, 0.0, 0.5, 0.2], [1.0, 1.0, 2.0, -2.0], [0.4, 0.3, 0.2, 0.1]])
    got = float(score_kl(s, t, temp))
    assert got > 0
    assert math.isclose(got, _hand_kl(s, t, temp), rel_tol=1e-5)


def test_kl_temperature_changes_value():
    assert not math.isclose(float(score_kl(S, T, 1.0)), float(score_kl(S, T, 2.0)), rel_tol=1e-3)


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_kl_with_masked_entries_is_finite_and_matches_hand_value(temp):
    got = score_kl(S, T, temp)
    assert torch.isfinite(got)
    assert math.isclose(float(got), _hand_kl(S, T, temp), rel_tol=1e-5)


def test_kl_identical_is_zero():
    assert abs(float(score_kl(S, S.clone(), 2.0))) < 1e-6


def test_kl_rejects_non_positive_temperature():
    with pytest.raises(ValueError):
        score_kl(S, T, 0.0)


def test_under_bf16_autocast_results_are_float32():
    a = torch.randn(4, 6, requires_grad=True)
    b = torch.randn(4, 6)
    w = torch.randn(6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = a @ w  # bf16 under autocast
        t = b @ w
        assert s.dtype == torch.bfloat16
        mse, kl = score_mse(s, t), score_kl(s, t, 2.0)
        via = score_loss("kl", s, t, 2.0)
    assert mse.dtype == kl.dtype == via.dtype == torch.float32
    ref = torch.mean((s.float() - t.float()) ** 2)
    assert torch.allclose(mse, ref, rtol=1e-6)
    mse.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


def test_score_loss_dispatch():
    assert torch.equal(score_loss("mse", S, T), score_mse(S, T))
    assert torch.equal(score_loss("kl", S, T), score_kl(S, T, 1.0))
    assert torch.equal(score_loss("kl", S, T, 2.0), score_kl(S, T, 2.0))
    with pytest.raises(ValueError):
        score_loss("cosine", S, T)
