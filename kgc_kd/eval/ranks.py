"""Rank of the gold entity among scored candidates, with PyKEEN tie semantics.

Text bi-encoders produce many exact ties (bf16 vectors, duplicate entity
descriptions), so a sort-based rank would depend on arbitrary tie-breaking.
We report the optimistic / pessimistic / realistic ranks of PyKEEN instead;
``realistic`` is the expected rank under a random order of tied candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RANK_TYPES", "Ranks", "rank_gold"]

RANK_TYPES = ("optimistic", "pessimistic", "realistic")


@dataclass
class Ranks:
    """One-based float ranks of shape (Q,) for the three tie conventions."""

    optimistic: Tensor
    pessimistic: Tensor
    realistic: Tensor

    def __len__(self) -> int:
        return int(self.realistic.shape[0])

    def get(self, rank_type: str) -> Tensor:
        if rank_type not in RANK_TYPES:
            raise ValueError(f"rank_type must be one of {RANK_TYPES}, got {rank_type!r}")
        return getattr(self, rank_type)

    def select(self, index: Tensor) -> Ranks:
        """Subset of queries (bool mask or index tensor), e.g. one direction."""
        return Ranks(self.optimistic[index], self.pessimistic[index], self.realistic[index])

    def cpu(self) -> Ranks:
        return Ranks(self.optimistic.cpu(), self.pessimistic.cpu(), self.realistic.cpu())

    @classmethod
    def cat(cls, parts: Sequence[Ranks]) -> Ranks:
        """Join per-chunk ranks; an empty list gives empty ranks so callers need no special case."""
        if len(parts) == 0:
            empty = torch.empty(0, dtype=torch.float32)
            return cls(empty, empty.clone(), empty.clone())
        return cls(
            torch.cat([p.optimistic for p in parts]),
            torch.cat([p.pessimistic for p in parts]),
            torch.cat([p.realistic for p in parts]),
        )


def rank_gold(scores: Tensor, gold: Tensor, exclude: Tensor | tuple[Tensor, Tensor] | None = None, *,
              workspace: Tensor | None = None) -> Ranks:
    """Filtered rank of ``gold`` in each row of ``scores`` (higher score = better).

    ``exclude`` marks the other known answers: they must not push the gold down, so they are dropped
    from the comparison. Give it as a (Q, E) bool mask, or as a pair ``(rows, cols)`` of index tensors
    listing distinct (query, entity) positions: no (Q, E) mask is then built, the comparisons run over
    whole rows and the excluded positions are subtracted afterwards. The gold itself is always kept, even
    if it is marked (known-answer lists usually contain it). NaN candidates never count. A NaN *gold*
    score is treated as -inf (worst rank) rather than silently ranked first, so a broken model cannot
    look good.

    Comparisons are in float32: low-precision scores are upcast (a copy), and ``scores`` is never
    modified. Each comparison is written as 0.0/1.0 into ``workspace``, a (Q, E) float32 tensor
    (allocated when not given; chunked evaluation passes one buffer for every chunk), and summed as
    floats: exact, since every partial sum is an integer below 2^24 (float64 sums beyond that), and far
    faster than summing bools on CPU.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be (Q, E), got shape {tuple(scores.shape)}")
    num_q, num_e = scores.shape
    gold = torch.as_tensor(gold, device=scores.device).long().reshape(-1)
    if gold.shape[0] != num_q:
        raise ValueError(f"gold has {gold.shape[0]} entries for {num_q} score rows")
    if num_q and (int(gold.min()) < 0 or int(gold.max()) >= num_e):
        raise ValueError(f"gold ids must lie in [0, {num_e}), got range [{int(gold.min())}, {int(gold.max())}]")

    s = scores.float()  # no copy if already float32; we only read from it
    rows = torch.arange(num_q, device=scores.device)
    gold_score = s[rows, gold]
    gold_score = torch.where(torch.isnan(gold_score), torch.full_like(gold_score, float("-inf")), gold_score)
    gold_score = gold_score.unsqueeze(1)

    mask: Tensor | None = None
    pairs: tuple[Tensor, Tensor] | None = None
    if isinstance(exclude, tuple):
        pr, pc = (torch.as_tensor(x, device=scores.device).long().reshape(-1) for x in exclude)
        if pr.shape != pc.shape:
            raise ValueError(f"exclude rows and cols differ in length: {pr.shape[0]} and {pc.shape[0]}")
        if len(pr) and (int(pr.min()) < 0 or int(pr.max()) >= num_q or int(pc.min()) < 0 or int(pc.max()) >= num_e):
            raise ValueError(f"exclude positions must lie in [0, {num_q}) x [0, {num_e})")
        keep = pc != gold[pr]
        pairs = (pr[keep], pc[keep])
    elif exclude is not None:
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude must have shape {tuple(scores.shape)}, got {tuple(exclude.shape)}")
        mask = exclude.to(device=scores.device, dtype=torch.bool)
    if workspace is None:
        workspace = torch.empty(s.shape, dtype=torch.float32, device=s.device)
    elif workspace.shape != s.shape or workspace.dtype != torch.float32:
        raise ValueError(f"workspace must be a float32 tensor of shape {tuple(s.shape)}")
    sum_dtype = torch.float32 if num_e < 2**24 else torch.float64

    # Candidates that may compete with the gold: all but the excluded ones and the gold itself (counted
    # once, via the leading 1). NaN scores need no mask: every comparison with NaN is False.
    def count(compare) -> Tensor:
        hits = compare(s, gold_score, out=workspace)
        if mask is not None:
            hits.masked_fill_(mask, 0.0)
        hits[rows, gold] = 0.0
        total = hits.sum(dim=1, dtype=sum_dtype).long()
        if pairs is not None and len(pairs[0]):
            wrongly = compare(s[pairs], gold_score[pairs[0], 0]).long()
            total -= torch.zeros_like(total).index_add_(0, pairs[0], wrongly)
        return total

    greater = count(torch.gt)
    not_smaller = count(torch.ge)

    optimistic = (1 + greater).float()
    pessimistic = (1 + not_smaller).float()
    realistic = 0.5 * (optimistic + pessimistic)
    return Ranks(optimistic=optimistic, pessimistic=pessimistic, realistic=realistic)
