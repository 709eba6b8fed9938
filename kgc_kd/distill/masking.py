"""PMD's input masking: a rate of each sequence's tokens replaced by [MASK], the same for teacher and student.

k = floor(rate * L) positions per sequence (L = real tokens incl. specials), drawn uniformly WITH
replacement from 1..L-2, so [CLS] and the final [SEP] are never masked (the middle [SEP] of an hr pair
can be). `counts` keeps how often each position was drawn: PMD's feature pooling counts duplicates twice.

No value is read back from the device: the number of draws per row is bounded by the padded width W
(K = floor(rate * W) columns of uniforms, drawn on the CPU generator as before), and each row keeps its
first k. The collator pads every batch to its longest row (dynamic padding, `data/tokens.py`), so K is
exactly the old `max(k)` and the draws, the masks and the generator's state afterwards are those of the
previous algorithm, which read `int(k.max())` (a host sync on CUDA every step). A caller padding wider
than its longest row gets K > max(k): still floor(rate * L) uniform draws per row, from more of the stream.
"""

from __future__ import annotations

import math

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
    width = int(input_ids.shape[1]) if input_ids.dim() == 2 else 0
    # the bound from the shape: floor(rate * W), in the same float64 arithmetic as k below
    kmax = math.floor(rate * float(width)) if width > 2 and input_ids.shape[0] else 0
    if kmax == 0:
        return input_ids, counts
    lengths = attention_mask.sum(1)
    k = torch.floor(rate * lengths.double()).long()
    k = torch.where(lengths > 2, k, torch.zeros_like(k))
    u = torch.rand(input_ids.shape[0], kmax, generator=generator, device="cpu")
    if input_ids.device.type == "cuda":  # pinned and asynchronous: a pageable copy would wait for the stream
        u = u.pin_memory().to(input_ids.device, non_blocking=True)
    else:
        u = u.to(input_ids.device)
    span = (lengths - 2).clamp(min=1).unsqueeze(1)
    pos = 1 + torch.floor(u * span).long()  # in 1..L-2
    keep = torch.arange(kmax, device=input_ids.device).unsqueeze(0) < k.unsqueeze(1)
    counts.scatter_add_(1, pos, keep.long())
    masked = input_ids.masked_fill(counts > 0, mask_id)
    return masked, counts
