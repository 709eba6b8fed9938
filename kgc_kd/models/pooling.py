"""Sentence vectors from token states: SimKGC's mean pooling (default) or [CLS], then L2-normalised."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

POOLINGS = ("mean", "cls")


def pool(last_hidden: Tensor, attention_mask: Tensor, mode: str = "mean") -> Tensor:
    """Pools in fp32 so bf16/fp16 activations do not lose the small differences ranking depends on."""
    h = last_hidden.float()
    if mode == "cls":
        v = h[:, 0]
    elif mode == "mean":
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        v = (h * m).sum(1) / m.sum(1).clamp(min=1e-4)
    else:
        raise ValueError(f"model.pooling={mode!r}; expected one of {POOLINGS}")
    return F.normalize(v, dim=-1)
