"""kgc_kd.models.pooling: masked mean / [CLS] pooling, L2-normalised, in fp32."""

from __future__ import annotations

import pytest
import torch

from kgc_kd.models.pooling import POOLINGS, pool


def _inputs():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    return h, mask


def test_mean_pooling_matches_hand_computation():
    h, mask = _inputs()
    out = pool(h, mask, "mean")
    expected = torch.stack([h[0].mean(0), h[1, :3].mean(0), h[2, 0]])
    expected = expected / expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(out, expected)


def test_mean_pooling_simple_numbers():
    h = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [100.0, -100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # mean of the first two = (2, 2) -> normalised (1/sqrt2, 1/sqrt2)
    torch.testing.assert_close(pool(h, mask), torch.tensor([[2 ** -0.5, 2 ** -0.5]]))


def test_mean_pooling_ignores_padded_positions():
    h, mask = _inputs()
    out = pool(h, mask, "mean")
    h2 = h.clone()
    h2[mask == 0] = 1e3 * torch.randn(int((mask == 0).sum()), 4)
    torch.testing.assert_close(pool(h2, mask, "mean"), out)
    # but changing a real position does change the result
    h3 = h.clone()
    h3[1, 2] += 5.0
    assert not torch.allclose(pool(h3, mask, "mean")[1], out[1])


def test_bool_mask_same_as_int_mask():
    h, mask = _inputs()
    torch.testing.assert_close(pool(h, mask.bool()), pool(h, mask))


def test_cls_pooling_picks_first_position():
    h, mask = _inputs()
    out = pool(h, mask, "cls")
    torch.testing.assert_close(out, h[:, 0] / h[:, 0].norm(dim=-1, keepdim=True))
    h2 = h.clone()
    h2[:, 1:] = torch.randn_like(h2[:, 1:])
    torch.testing.assert_close(pool(h2, mask, "cls"), out)


@pytest.mark.parametrize("mode", POOLINGS)
def test_unit_norm(mode):
    h, mask = _inputs()
    out = pool(h * 37.0, mask, mode)
    assert out.shape == (3, 4)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize("mode", POOLINGS)
def test_bf16_input_gives_float32(mode):
    h, mask = _inputs()
    out = pool(h.bfloat16(), mask, mode)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, pool(h.bfloat16().float(), mask, mode))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_unknown_mode_raises():
    h, mask = _inputs()
    with pytest.raises(ValueError, match="max"):
        pool(h, mask, "max")
