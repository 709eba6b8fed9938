"""Projections that bridge student and teacher widths for feature losses; trained with the student,
dropped from the export. Low-rank U·V (MaKD's factorisation) costs r·(d_in + d_out) parameters
instead of d_in·d_out; identity when widths match and no projection is asked for."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LowRankProjection(nn.Module):
    def __init__(self, d_in: int, d_out: int, rank: int):
        super().__init__()
        if rank < 1:
            raise ValueError(f"projection rank must be >= 1, got {rank}")
        self.u = nn.Parameter(torch.randn(d_in, rank) * 0.02)
        self.v = nn.Parameter(torch.randn(rank, d_out) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        return (x @ self.u) @ self.v


def make_projection(d_in: int, d_out: int, kind: str = "lowrank", rank: int = 64) -> nn.Module:
    """kind: identity (widths must match), linear (full d_in x d_out, no bias), lowrank (U·V, rank r)."""
    if kind == "identity":
        if d_in != d_out:
            raise ValueError(f"identity projection needs equal widths, got {d_in} -> {d_out}")
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(d_in, d_out, bias=False)
    if kind == "lowrank":
        return LowRankProjection(d_in, d_out, rank)
    raise ValueError(f"projection {kind!r}; expected identity, linear or lowrank")
