"""Width-bridging projections for feature losses: identity, full linear, low-rank U·V."""

import pytest
import torch
from torch import nn

from kgc_kd.distill.projection import LowRankProjection, make_projection


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_lowrank_parameter_count_and_shape():
    torch.manual_seed(0)
    p = LowRankProjection(384, 768, 64)
    assert _n_params(p) == 73_728 == 64 * (384 + 768)
    assert _n_params(p) < 384 * 768
    x = torch.randn(2, 5, 384)
    y = p(x)
    assert y.shape == (2, 5, 768)
    assert all(q.requires_grad for q in p.parameters())


def test_lowrank_is_a_rank_r_linear_map_without_bias():
    torch.manual_seed(0)
    p = LowRankProjection(12, 10, 3)
    assert _n_params(p) == 3 * (12 + 10)
    eye = torch.eye(12)
    w = p(eye)  # the map's matrix, 12 x 10
    assert torch.linalg.matrix_rank(w).item() == 3
    x = torch.randn(4, 12)
    torch.testing.assert_close(p(x), x @ w, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(p(torch.zeros(2, 12)), torch.zeros(2, 10))  # no bias


def test_make_projection_identity():
    p = make_projection(32, 32, "identity")
    assert _n_params(p) == 0
    x = torch.randn(2, 3, 32)
    assert torch.equal(p(x), x)


def test_make_projection_identity_with_unequal_widths_raises():
    with pytest.raises(ValueError, match="identity"):
        make_projection(16, 32, "identity")


def test_make_projection_linear_has_no_bias():
    p = make_projection(16, 32, "linear")
    assert _n_params(p) == 16 * 32
    assert p(torch.randn(2, 3, 16)).shape == (2, 3, 32)
    torch.testing.assert_close(p(torch.zeros(1, 16)), torch.zeros(1, 32))


def test_make_projection_lowrank_default_and_rank():
    p = make_projection(16, 32)  # lowrank, rank 64 by default
    assert isinstance(p, LowRankProjection)
    assert _n_params(p) == 64 * (16 + 32)
    q = make_projection(16, 32, "lowrank", rank=4)
    assert _n_params(q) == 4 * (16 + 32)
    assert q(torch.randn(2, 3, 16)).shape == (2, 3, 32)


def test_make_projection_unknown_kind_raises():
    with pytest.raises(ValueError, match="mlp"):
        make_projection(16, 32, "mlp")


@pytest.mark.parametrize("rank", [0, -3])
def test_rank_below_one_raises(rank):
    with pytest.raises(ValueError, match="rank"):
        make_projection(16, 32, "lowrank", rank=rank)
    with pytest.raises(ValueError, match="rank"):
        LowRankProjection(16, 32, rank)
