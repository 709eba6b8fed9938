import math

import pytest
import torch
from torch import nn

from kgc_kd.distill.mgfd import FeatureGenerator, masked_features, mgfd_generation, mgfd_pmd, random_token_mask


def _norm(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def test_masked_features_hand_example():
    hidden = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]],
                           [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]]])
    counts = torch.tensor([[0, 2, 1, 0], [0, 0, 0, 0]])
    f, has = masked_features(hidden, counts)
    # row 0: (2*[1,0] + 1*[0,2]) / 3 = [2/3, 2/3] -> normalised [1/sqrt2, 1/sqrt2]
    assert torch.allclose(f[0], torch.tensor(_norm([2 / 3, 2 / 3])), atol=1e-6)
    counts2 = torch.tensor([[0, 3, 1, 0], [0, 0, 0, 0]])
    f2, _ = masked_features(hidden, counts2)
    # (3*[1,0] + [0,2]) / 4 = [0.75, 0.5]: duplicates weigh, so a plain mean would give another direction
    assert torch.allclose(f2[0], torch.tensor(_norm([0.75, 0.5])), atol=1e-6)
    assert has.tolist() == [True, False]
    assert torch.equal(f[1], torch.zeros(2))


def test_mgfd_pmd_zero_without_masks_even_if_states_differ():
    s, t = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    assert float(mgfd_pmd(s, t, torch.zeros(3, 5, dtype=torch.long))) == 0.0


def test_mgfd_pmd_zero_for_identical_states():
    s = torch.randn(3, 5, 4)
    counts = torch.tensor([[0, 1, 0, 2, 0], [0, 1, 1, 1, 0], [0, 0, 0, 1, 0]])
    assert float(mgfd_pmd(s, s.clone(), counts)) == 0.0
    assert float(mgfd_pmd(s, torch.randn(3, 5, 4), counts)) > 0.0


def test_mgfd_pmd_hand_value_with_an_unmasked_row():
    s = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [7.0, 7.0]],
                      [[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    t = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [7.0, 7.0]],
                      [[0.0, 1.0], [1.0, 0.0], [5.0, 5.0]]])
    counts = torch.tensor([[0, 1, 0], [0, 0, 0]])
    # row 0: student [0.6, 0.8], teacher [1, 0] -> squared error 0.16 + 0.64 = 0.8; row 1: 0
    # mean over B x d = 4 entries
    got = mgfd_pmd(s, t, counts)
    assert got.dtype == torch.float32
    assert math.isclose(float(got), 0.8 / 4, rel_tol=1e-6)


def test_mgfd_pmd_width_mismatch_raises():
    counts = torch.tensor([[0, 1, 0]])
    with pytest.raises(ValueError):
        mgfd_pmd(torch.randn(1, 3, 4), torch.randn(1, 3, 6), counts)


def test_mgfd_pmd_under_autocast_is_float32():
    a = torch.randn(2, 4, 8)
    w = torch.randn(8, 8)
    counts = torch.tensor([[0, 1, 1, 0], [0, 2, 0, 0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = a @ w
        out = mgfd_pmd(s, s.clone() + 1, counts)
    assert out.dtype == torch.float32 and torch.isfinite(out)


@pytest.mark.parametrize("ds,dt", [(4, 8), (6, 6)])
def test_feature_generator_mlp_shape_and_params(ds, dt):
    g = FeatureGenerator(ds, dt, "mlp")
    assert g(torch.randn(2, 5, ds)).shape == (2, 5, dt)
    assert sum(p.numel() for p in g.parameters()) == ds * dt + dt + dt * dt + dt


@pytest.mark.parametrize("ds,dt", [(4, 8), (6, 6)])
def test_feature_generator_conv_shape_and_params(ds, dt):
    g = FeatureGenerator(ds, dt, "conv")
    assert g(torch.randn(2, 5, ds)).shape == (2, 5, dt)
    assert sum(p.numel() for p in g.parameters()) == 3 * ds * dt + dt + 3 * dt * dt + dt


@torch.no_grad()
def test_feature_generator_conv_mixes_neighbouring_tokens_mlp_does_not():
    torch.manual_seed(0)
    x = torch.randn(1, 7, 4)
    y = x.clone()
    y[0, 3] += 1.0
    mlp, conv = FeatureGenerator(4, 4, "mlp"), FeatureGenerator(4, 4, "conv")
    dm = (mlp(y) - mlp(x)).abs().sum(-1)[0]
    dc = (conv(y) - conv(x)).abs().sum(-1)[0]
    assert dm[[0, 1, 2, 4, 5, 6]].max() == 0 and dm[3] > 0
    assert (dc[1:6] > 0).all() and dc[0] == 0 and dc[6] == 0  # two kernel-3 convs reach +-2 tokens


def test_feature_generator_unknown_kind():
    with pytest.raises(ValueError):
        FeatureGenerator(4, 4, "transformer")


class Identity(nn.Module):
    def forward(self, x):
        return x


def test_mgfd_generation_hand_value_with_identity_generator():
    s = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
                      [[1.0, 1.0], [2.0, 2.0], [9.0, 9.0]]])
    t = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]],
                      [[0.0, 0.0], [0.0, 0.0], [100.0, -100.0]]])
    att = torch.tensor([[1, 1, 1], [1, 1, 0]])
    token_mask = torch.tensor([[False, True, False], [True, False, False]])
    # generated = s with masked tokens zeroed:
    # row 0: [1,2] vs [1,1] -> 1; [0,0] vs [1,1] -> 2; [5,6] vs [1,1] -> 16 + 25 = 41
    # row 1: [0,0] vs [0,0] -> 0; [2,2] vs [0,0] -> 8; padding ignored
    expected = (1 + 2 + 41 + 0 + 8) / (5 * 2)
    got = mgfd_generation(s, t, att, Identity(), token_mask)
    assert math.isclose(float(got), expected, rel_tol=1e-6)


@torch.no_grad()
def test_mgfd_generation_ignores_padding():
    torch.manual_seed(0)
    s, t = torch.randn(2, 6, 4), torch.randn(2, 6, 8)
    att = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    gen = FeatureGenerator(4, 8, "mlp")
    tm = random_token_mask(att, 0.5, torch.Generator().manual_seed(0))
    a = mgfd_generation(s, t, att, gen, tm)
    t2, s2 = t.clone(), s.clone()
    t2[0, 4:] = 1e3
    s2[0, 4:] = -1e3
    b = mgfd_generation(s2, t2, att, gen, tm)
    assert math.isclose(float(a), float(b), rel_tol=1e-6)
    t3 = t.clone()
    t3[0, 3] += 1.0  # a real token does count
    assert not math.isclose(float(mgfd_generation(s, t3, att, gen, tm)), float(a), rel_tol=1e-6)


def test_mgfd_generation_gives_generator_gradients():
    s, t = torch.randn(2, 4, 4, requires_grad=True), torch.randn(2, 4, 6)
    att = torch.ones(2, 4, dtype=torch.long)
    gen = FeatureGenerator(4, 6)
    mgfd_generation(s, t, att, gen, torch.zeros(2, 4, dtype=torch.bool)).backward()
    assert all(p.grad is not None for p in gen.parameters()) and s.grad is not None


def test_random_token_mask_never_selects_padding_and_has_rate():
    lengths = torch.randint(1, 200, (400,), generator=torch.Generator().manual_seed(0))
    att = (torch.arange(200).unsqueeze(0) < lengths.unsqueeze(1)).long()
    m = random_token_mask(att, 0.3, torch.Generator().manual_seed(1))
    assert m.dtype == torch.bool and m.shape == att.shape
    assert not (m & ~att.bool()).any()
    rate = m.sum().item() / att.sum().item()
    assert abs(rate - 0.3) < 0.01
    assert not random_token_mask(att, 0.0).any()


def test_random_token_mask_is_deterministic_with_generator():
    att = torch.ones(4, 10, dtype=torch.long)
    a = random_token_mask(att, 0.5, torch.Generator().manual_seed(3))
    b = random_token_mask(att, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
