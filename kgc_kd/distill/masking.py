"""PMD's input masking: a rate of each sequence's tokens replaced by [MASK], the same for teacher and student.

k = floor(rate * L) positions per sequence (L = real tokens incl. specials), drawn uniformly WITH
replacement from 1..L-2, so [CLS] and the final [SEP] are never masked (the middle [SEP] of an hr pair
can be). `counts` keeps how often each position was drawn: PMD's feature pooling counts duplicates twice.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mask_tokens(input_ids: Tensor, attention_mask: Tensor, rate: float, mask_id: int,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(masked ids, counts (B, L) long). rate 0 returns the ids untouched and zero counts."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"mask rate must be in [0, 1), got {rate}")
    counts = torch.zeros_like(input_ids)
    if rate == 0.0:
        return input_ids, counts
    lengths = attention_mask.sum(1)
    k = torch.floor(rate * lengths.double()).long()
    k = torch.where(lengths > 2, k, torch.zeros_like(k))
    kmax = int(k.max()) if k.numel() else 0
    if kmax == 0:
        return input_ids, counts
    u = torch.rand(input_ids.shape[0], kmax, generator=generator, device="cpu").to(input_ids.device)
    span = (lengths - 2).clamp(min=1).unsqueeze(1)
    pos = 1 + torch.floor(u * span).long()  # in 1..L-2
    keep = torch.arange(kmax, device=input_ids.device).unsqueeze(0) < k.unsqueeze(1)
    counts.scatter_add_(1, pos, keep.long())
    masked = input_ids.masked_fill(counts > 0, mask_id)
    return masked, counts
