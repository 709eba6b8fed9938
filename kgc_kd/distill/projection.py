"""Projections that bridge student and teacher features for feature losses; trained with the student,
dropped from the export.

- `lowrank` (MaKD's low-rank factorisation): x U V + c, r (d_in + d_out) + d_out parameters instead of
  d_in d_out; when the widths match, x + x U V + c with V (and c) starting at zero, i.e. the identity plus a
  learnt rank-r correction (a rank-r map alone could not even copy the student's features);
- `linear`: a full Linear with bias (TinyBERT's W_h; `shared` in feature_terms.py shares one per side);
- `identity`: no parameters, widths must match.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

PROJECTIONS = ("lowrank", "linear", "shared", "identity")


class LowRankProjection(nn.Module):
    def __init__(self, d_in: int, d_out: int, rank: int):
        super().__init__()
        if rank < 1:
            raise ValueError(f"projection rank must be >= 1, got {rank}")
        self.residual = d_in == d_out
        self.u = nn.Parameter(torch.randn(d_in, rank) * 0.02)
        self.v = nn.Parameter(torch.zeros(rank, d_out) if self.residual else torch.randn(rank, d_out) * 0.02)
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: Tensor) -> Tensor:
        out = (x @ self.u) @ self.v + self.bias
        return x + out if self.residual else out


def make_projection(d_in: int, d_out: int, kind: str = "lowrank", rank: int = 64) -> nn.Module:
    """kind: identity (widths must match), linear (full d_in x d_out with bias), lowrank (see above)."""
    if kind == "identity":
        if d_in != d_out:
            raise ValueError(f"identity projection needs equal widths, got {d_in} -> {d_out}")
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    if kind == "lowrank":
        return LowRankProjection(d_in, d_out, rank)
    raise ValueError(f"projection {kind!r}; expected identity, linear or lowrank")
