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

__all__ = ["RANK_TYPES", "Ranks", "RankCounter", "rank_gold"]

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


class RankCounter:
    """Filtered ranks of the gold of Q queries, fed score rows chunk by chunk (`add`), read once (`ranks`).

    Per chunk only dense work runs: the gold's score, and two whole-row comparisons (greater, greater or
    equal) written as 0.0/1.0 into a float32 workspace and summed as floats (exact: every partial sum is an
    integer below 2^24, float64 sums beyond that; far faster than summing bools on CPU). Known answers
    are not masked: their scores are gathered (a few per query), and `ranks` subtracts those that counted,
    for every query at once. So a chunk costs a fixed handful of operations, whatever its known answers.
    """

    def __init__(self, gold: Tensor, num_entities: int, exclude_rows: Tensor | None = None,
                 exclude_cols: Tensor | None = None, *, device: torch.device | str | None = None):
        """`exclude_rows`/`exclude_cols`: distinct (query, entity) positions of the known answers, the
        gold's own among them or not (it is always kept)."""
        device = torch.device(device) if device is not None else torch.as_tensor(gold).device
        self.gold = torch.as_tensor(gold).long().reshape(-1).to(device)
        num_q = len(self.gold)
        if num_q and (int(self.gold.min()) < 0 or int(self.gold.max()) >= num_entities):
            raise ValueError(f"gold ids must lie in [0, {num_entities}), got range "
                             f"[{int(self.gold.min())}, {int(self.gold.max())}]")
        empty = torch.empty(0, dtype=torch.long, device=device)
        rows = empty if exclude_rows is None else torch.as_tensor(exclude_rows).long().reshape(-1).to(device)
        cols = empty if exclude_cols is None else torch.as_tensor(exclude_cols).long().reshape(-1).to(device)
        if rows.shape != cols.shape:
            raise ValueError(f"exclude rows and cols differ in length: {rows.shape[0]} and {cols.shape[0]}")
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= num_q or int(cols.min()) < 0
                          or int(cols.max()) >= num_entities):
            raise ValueError(f"exclude positions must lie in [0, {num_q}) x [0, {num_entities})")
        keep = cols != self.gold[rows]
        rows, cols = rows[keep], cols[keep]
        if len(rows) > 1 and not bool((rows[1:] >= rows[:-1]).all()):
            order = torch.argsort(rows, stable=True)
            rows, cols = rows[order], cols[order]
        self.rows, self.cols = rows, cols
        self._flat = rows * num_entities + cols  # position in a row-major block whose first row is query 0
        # pairs of queries [a, b): [offsets[a], offsets[b])
        self.offsets = torch.searchsorted(self.rows, torch.arange(num_q + 1, device=device)).tolist()
        self.num_entities = num_entities
        sum_dtype = torch.float32 if num_entities < 2**24 else torch.float64
        self.gold_raw = torch.full((num_q,), float("nan"), device=device)
        self.greater = torch.zeros(num_q, dtype=sum_dtype, device=device)
        self.not_smaller = torch.zeros(num_q, dtype=sum_dtype, device=device)
        self.pair_scores = torch.full((len(self.rows),), float("nan"), device=device)
        self.seen = torch.zeros(num_q, dtype=torch.bool, device=device)

    def excluded(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """(rows relative to `start`, cols) of the known answers (gold excluded) of queries [start, stop)."""
        a, b = self.offsets[start], self.offsets[stop]
        return self.rows[a:b] - start, self.cols[a:b]

    def add(self, start: int, scores: Tensor, workspace: Tensor | None = None) -> None:
        """Score rows of queries [start, start + len(scores)). Scores are read (float32; lower precision is
        upcast, a copy), never modified; `workspace` is a float32 tensor of their shape (else allocated)."""
        if scores.ndim != 2 or scores.shape[1] != self.num_entities:
            raise ValueError(f"scores must be (n, {self.num_entities}), got shape {tuple(scores.shape)}")
        n = scores.shape[0]
        stop = start + n
        if start < 0 or stop > len(self.gold):
            raise ValueError(f"rows [{start}, {stop}) outside the {len(self.gold)} queries")
        s = scores.float()
        raw = torch.gather(s, 1, self.gold[start:stop].unsqueeze(1))
        self.gold_raw[start:stop] = raw[:, 0]
        # a NaN gold ranks last (-inf), so a broken model cannot look good; NaN candidates never count
        gold_score = torch.nan_to_num(raw, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
        if workspace is None:
            workspace = torch.empty(s.shape, dtype=torch.float32, device=s.device)
        elif workspace.shape != s.shape or workspace.dtype != torch.float32:
            raise ValueError(f"workspace must be a float32 tensor of shape {tuple(s.shape)}")
        torch.sum(torch.gt(s, gold_score, out=workspace), dim=1, dtype=self.greater.dtype,
                  out=self.greater[start:stop])
        torch.sum(torch.ge(s, gold_score, out=workspace), dim=1, dtype=self.not_smaller.dtype,
                  out=self.not_smaller[start:stop])
        a, b = self.offsets[start], self.offsets[stop]
        if b > a:
            self.pair_scores[a:b] = torch.take(s, self._flat[a:b] - start * self.num_entities)
        self.seen[start:stop] = True

    def ranks(self) -> Ranks:
        """Optimistic, pessimistic and realistic ranks of every query (on the counter's device)."""
        if not bool(self.seen.all()):
            raise ValueError(f"{int((~self.seen).sum())} of {len(self.gold)} queries got no score rows")
        gold_score = torch.nan_to_num(self.gold_raw, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
        # the whole-row counts included the gold itself (greater or equal to itself unless NaN) and every
        # known answer that beat or tied it: subtract them
        greater = self.greater.long()
        not_smaller = self.not_smaller.long() - (self.gold_raw >= gold_score).long()
        if len(self.rows):
            g = gold_score[self.rows]
            greater -= torch.zeros_like(greater).index_add_(0, self.rows, (self.pair_scores > g).long())
            not_smaller -= torch.zeros_like(greater).index_add_(0, self.rows, (self.pair_scores >= g).long())
        optimistic = (1 + greater).float()
        pessimistic = (1 + not_smaller).float()
        return Ranks(optimistic=optimistic, pessimistic=pessimistic, realistic=0.5 * (optimistic + pessimistic))


def rank_gold(scores: Tensor, gold: Tensor, exclude: Tensor | tuple[Tensor, Tensor] | None = None, *,
              workspace: Tensor | None = None) -> Ranks:
    """Filtered rank of ``gold`` in each row of ``scores`` (higher score = better).

    ``exclude`` marks the other known answers: they must not push the gold down, so they are dropped
    from the comparison. Give it as a (Q, E) bool mask, or as a pair ``(rows, cols)`` of index tensors
    listing distinct (query, entity) positions. The gold itself is always kept, even if it is marked
    (known-answer lists usually contain it). NaN candidates never count. A NaN *gold* score is treated as
    -inf (worst rank) rather than silently ranked first, so a broken model cannot look good.

    Comparisons are in float32: low-precision scores are upcast (a copy), and ``scores`` is never
    modified. ``workspace``, a (Q, E) float32 tensor, receives the comparisons (see `RankCounter`, which
    this runs for one chunk).
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be (Q, E), got shape {tuple(scores.shape)}")
    num_q, num_e = scores.shape
    gold = torch.as_tensor(gold, device=scores.device).long().reshape(-1)
    if gold.shape[0] != num_q:
        raise ValueError(f"gold has {gold.shape[0]} entries for {num_q} score rows")
    if isinstance(exclude, tuple):
        rows, cols = exclude
    elif exclude is not None:
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude must have shape {tuple(scores.shape)}, got {tuple(exclude.shape)}")
        rows, cols = exclude.to(device=scores.device, dtype=torch.bool).nonzero(as_tuple=True)
    else:
        rows = cols = None
    counter = RankCounter(gold, num_e, rows, cols, device=scores.device)
    counter.add(0, scores, workspace)
    return counter.ranks()
