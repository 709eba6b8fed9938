"""Width-bridging projections for feature losses: identity, full linear with bias, low-rank x U V + c (residual
x + x U V + c when the widths match)."""

import pytest
import torch
from torch import nn

from kgc_kd.distill.projection import LowRankProjection, make_projection


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_lowrank_parameter_count_and_shape():
    torch.manual_seed(0)
    p = LowRankProjection(384, 768, 64)
    assert _n_params(p) == 74_496 == 64 * (384 + 768) + 768  # U, V and the bias c
    assert _n_params(p) < 384 * 768
    assert p(torch.randn(2, 5, 384)).shape == (2, 5, 768)
    assert all(q.requires_grad for q in p.parameters())
    assert not p.residual


@torch.no_grad()
def test_lowrank_hand_value_when_widths_differ():
    p = LowRankProjection(3, 2, 1)
    p.u.copy_(torch.tensor([[1.0], [2.0], [0.0]]))
    p.v.copy_(torch.tensor([[1.0, -1.0]]))
    p.bias.copy_(torch.tensor([0.5, 0.0]))
    # x U = 1*1 + 1*2 + 5*0 = 3; (x U) V = [3, -3]; + c = [3.5, -3]  (no residual: 3 -> 2)
    torch.testing.assert_close(p(torch.tensor([[1.0, 1.0, 5.0]])), torch.tensor([[3.5, -3.0]]))
    torch.testing.assert_close(p(torch.zeros(4, 3)), torch.tensor([[0.5, 0.0]]).expand(4, 2))  # the bias


@torch.no_grad()
def test_lowrank_is_an_affine_map_of_rank_r_when_widths_differ():
    torch.manual_seed(0)
    p = LowRankProjection(12, 10, 3)
    assert torch.equal(p(torch.zeros(1, 12)), torch.zeros(1, 10))  # c starts at 0
    w = p(torch.eye(12))  # the linear part, 12 x 10
    assert torch.linalg.matrix_rank(w).item() == 3
    p.bias.copy_(torch.arange(10.0))
    x = torch.randn(4, 12)
    torch.testing.assert_close(p(x), x @ w + torch.arange(10.0), rtol=1e-5, atol=1e-6)


def test_lowrank_with_equal_widths_starts_as_the_identity():
    torch.manual_seed(0)
    p = LowRankProjection(6, 6, 2)
    assert p.residual and _n_params(p) == 2 * (6 + 6) + 6
    assert torch.equal(p.v.detach(), torch.zeros(2, 6)) and torch.equal(p.bias.detach(), torch.zeros(6))
    assert p.u.abs().sum() > 0  # U random, so the correction can train
    x = torch.randn(2, 5, 6)
    assert torch.equal(p(x), x)
    # at the identity the loss still reaches V and c (U's gradient is 0 while V is 0, as for LoRA)
    target = torch.randn(2, 5, 6)
    (p(x) - target).pow(2).mean().backward()
    assert p.v.grad.abs().sum() > 0 and p.bias.grad.abs().sum() > 0
    assert torch.equal(p.u.grad, torch.zeros(6, 2))


@torch.no_grad()
def test_lowrank_hand_value_when_widths_match():
    p = LowRankProjection(2, 2, 1)
    p.u.copy_(torch.tensor([[1.0], [0.0]]))
    p.v.copy_(torch.tensor([[0.0, 2.0]]))
    p.bias.copy_(torch.tensor([1.0, 1.0]))
    # x = [3, 4]: x U = 3; (x U) V = [0, 6]; + c = [1, 7]; + x = [4, 11]
    torch.testing.assert_close(p(torch.tensor([[3.0, 4.0]])), torch.tensor([[4.0, 11.0]]))


def test_make_projection_identity():
    p = make_projection(32, 32, "identity")
    assert _n_params(p) == 0
    x = torch.randn(2, 3, 32)
    assert torch.equal(p(x), x)


def test_make_projection_identity_with_unequal_widths_raises():
    with pytest.raises(ValueError, match="identity"):
        make_projection(16, 32, "identity")


def test_make_projection_linear_has_a_bias():
    p = make_projection(16, 32, "linear")
    assert isinstance(p, nn.Linear) and p.bias is not None
    assert _n_params(p) == 16 * 32 + 32
    assert p(torch.randn(2, 3, 16)).shape == (2, 3, 32)
    with torch.no_grad():
        p.bias.copy_(torch.arange(32.0))
        torch.testing.assert_close(p(torch.zeros(1, 16)), torch.arange(32.0).unsqueeze(0))


def test_make_projection_lowrank_default_and_rank():
    p = make_projection(16, 32)  # lowrank, rank 64 by default
    assert isinstance(p, LowRankProjection)
    assert _n_params(p) == 64 * (16 + 32) + 32
    q = make_projection(16, 32, "lowrank", rank=4)
    assert _n_params(q) == 4 * (16 + 32) + 32
    assert q(torch.randn(2, 3, 16)).shape == (2, 3, 32)
    same = make_projection(16, 16, "lowrank", rank=4)
    x = torch.randn(3, 16)
    assert same.residual and torch.equal(same(x), x)


def test_make_projection_unknown_kind_raises():
    with pytest.raises(ValueError, match="mlp"):
        make_projection(16, 32, "mlp")


@pytest.mark.parametrize("rank", [0, -3])
def test_rank_below_one_raises(rank):
    with pytest.raises(ValueError, match="rank"):
        make_projection(16, 32, "lowrank", rank=rank)
    with pytest.raises(ValueError, match="rank"):
        LowRankProjection(16, 32, rank)
