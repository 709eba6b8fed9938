"""Known answers of every (entity, relation) query as flat tensors, so filtering needs no Python loop.

The filtered setting removes every known answer but the gold from a query's competition. A dict of
(h, r) -> answers costs a Python lookup per query and per-query work to build the (Q, E) mask; this CSR
layout (sorted keys, each coded as one int64 h * num_relations_total + r; offsets; flat sorted answers)
serves a whole batch of queries with searchsorted and repeat_interleave, and is built with unique/sort,
not a loop per triple. It still reads like the dict it replaced: `idx[(h, r)]`, `(h, r) in idx`, `get`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from kgc_kd.runtime.devices import canonical

__all__ = ["FilterIndex", "QueryAnswers"]


class FilterIndex(Mapping[tuple[int, int], Tensor]):
    """(h, r) -> sorted distinct answers, for relation ids in [0, num_relations_total) (inverses included)."""

    def __init__(self, codes: Tensor, offsets: Tensor, answers: Tensor, num_relations_total: int):
        self.codes = codes  # (K,) sorted distinct keys as one int64 each: h * num_relations_total + r
        self.offsets = offsets  # (K + 1,) the answers of codes[i] are answers[offsets[i]:offsets[i + 1]]
        self.answers = answers  # (M,) sorted within each key
        self.num_relations_total = num_relations_total

    @classmethod
    def from_triples(cls, triples: Tensor, num_relations_total: int) -> FilterIndex:
        """Rows (h, r, t) with r in [0, num_relations_total): t is a known answer of (h, r)."""
        triples = torch.as_tensor(triples, dtype=torch.long).reshape(-1, 3)
        h, r, t = triples.unbind(1)
        if len(triples) and (int(r.min()) < 0 or int(r.max()) >= num_relations_total or int(h.min()) < 0):
            raise ValueError(f"triples need entity ids >= 0 and relation ids in [0, {num_relations_total})")
        # One int64 per triple, (h * R + r) * E + t: sorting 1-D keys is ~10x faster than unique(dim=0) over
        # (key, answer) rows (a lexicographic row sort), and the key splits back into code and answer exactly.
        # E is the largest entity id + 1; the key fits int64 while E^2 * R < 2^63 (Wikidata5M: ~3.5e16).
        num_entities = int(torch.maximum(h.max(), t.max())) + 1 if len(triples) else 1
        if len(triples) and int(t.min()) < 0:
            raise ValueError("triples need entity ids >= 0")
        if num_entities * num_entities * num_relations_total >= 2**63:
            raise ValueError(f"{num_entities:,} entities x {num_relations_total} relations overflow the int64 keys")
        keys = torch.sort((h * num_relations_total + r) * num_entities + t).values
        keys = keys[_run_starts(keys)]  # duplicates dropped (a mask is faster than unique on the CPU)
        code_of_key = keys.div(num_entities, rounding_mode="floor")
        first = _run_starts(code_of_key)
        offsets = torch.cat([first.nonzero().squeeze(1), torch.tensor([len(keys)])])
        return cls(code_of_key[first], offsets, keys - code_of_key * num_entities, num_relations_total)

    @classmethod
    def from_forward(cls, triples: Tensor, num_relations: int) -> FilterIndex:
        """Both directions of forward triples (r < R): (h, r) -> t and (t, r + R) -> h."""
        triples = torch.as_tensor(triples, dtype=torch.long).reshape(-1, 3)
        h, r, t = triples.unbind(1)
        bad = (r < 0) | (r >= num_relations)
        if bad.any():
            raise ValueError(f"relation id {int(r[bad][0])} outside [0, {num_relations}); pass forward triples only")
        inverse = torch.stack([t, r + num_relations, h], dim=1)
        return cls.from_triples(torch.cat([triples, inverse]), 2 * num_relations)

    # ---- devices ----------------------------------------------------------------------------------------
    def on(self, device: torch.device | str) -> FilterIndex:
        """This index with its tensors on `device`, copied there once and reused by every later evaluation
        (the CPU index is itself); lookups and `pairs` then run on that device."""
        device = canonical(device)
        if device == self.codes.device:
            return self
        cache = self.__dict__.setdefault("_on", {})
        if device not in cache:
            cache[device] = FilterIndex(self.codes.to(device), self.offsets.to(device), self.answers.to(device),
                                        self.num_relations_total)
        return cache[device]

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_on"}  # never pickle a copy held on a GPU

    # ---- batched lookups ---------------------------------------------------------------------------
    def lookup(self, h: Tensor, r: Tensor) -> QueryAnswers:
        """Where the answers of each query (h[i], r[i]) lie in `answers` (none for an unknown key)."""
        device = self.codes.device
        h = torch.as_tensor(h, dtype=torch.long).reshape(-1).to(device)
        r = torch.as_tensor(r, dtype=torch.long).reshape(-1).to(device)
        if len(self.codes) == 0:
            return QueryAnswers(self, torch.zeros_like(h), torch.zeros_like(h))
        code = h * self.num_relations_total + r
        pos = torch.searchsorted(self.codes, code).clamp(max=len(self.codes) - 1)
        found = (self.codes[pos] == code) & (h >= 0) & (r >= 0) & (r < self.num_relations_total)
        start = self.offsets[pos]
        return QueryAnswers(self, start, torch.where(found, self.offsets[pos + 1] - start, 0))

    def exclusion_mask(self, h: Tensor, r: Tensor, num_entities: int,
                       device: torch.device | str | None = None) -> Tensor:
        """(Q, num_entities) bool: True at every known answer of query (h[i], r[i])."""
        return self.lookup(h, r).mask(num_entities, device)

    # ---- the dict view -------------------------------------------------------------------------------
    def _span(self, key: object) -> tuple[int, int] | None:
        try:
            h, r = (int(x) for x in key)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            return None
        found = self.lookup(torch.tensor([h]), torch.tensor([r]))
        start, count = int(found.start[0]), int(found.count[0])
        return (start, start + count) if count else None

    def __getitem__(self, key: tuple[int, int]) -> Tensor:
        span = self._span(key)
        if span is None:
            raise KeyError(key)
        return self.answers[span[0]:span[1]]

    def __contains__(self, key: object) -> bool:
        return self._span(key) is not None

    def __iter__(self) -> Iterator[tuple[int, int]]:
        h, r = self.codes.div(self.num_relations_total, rounding_mode="floor"), self.codes % self.num_relations_total
        return iter(zip(h.tolist(), r.tolist()))

    def __len__(self) -> int:
        return len(self.codes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FilterIndex):
            return NotImplemented
        return (self.num_relations_total == other.num_relations_total and torch.equal(self.codes, other.codes)
                and torch.equal(self.offsets, other.offsets) and torch.equal(self.answers, other.answers))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FilterIndex({len(self)} keys, {len(self.answers)} answers, {self.num_relations_total} relations)"


def _run_starts(sorted_values: Tensor) -> Tensor:
    """(N,) bool: True where a run of equal values starts in a sorted 1-D tensor."""
    starts = torch.ones_like(sorted_values, dtype=torch.bool)
    starts[1:] = sorted_values[1:] != sorted_values[:-1]
    return starts


@dataclass(frozen=True)
class QueryAnswers:
    """The known answers of Q queries as slices of one FilterIndex; slice it to get a chunk of queries."""

    index: FilterIndex
    start: Tensor  # (Q,) offset of query i's answers in index.answers
    count: Tensor  # (Q,) how many (0 where the query's key is unknown)

    def __len__(self) -> int:
        return len(self.start)

    def __getitem__(self, part: slice) -> QueryAnswers:
        return QueryAnswers(self.index, self.start[part], self.count[part])

    def mask(self, num_entities: int, device: torch.device | str | None = None, *, out: Tensor | None = None) -> Tensor:
        """(Q, num_entities) bool, True at each query's known answers (written into `out` when given, so a
        chunked evaluation reuses one buffer instead of allocating a mask per chunk)."""
        if out is not None:
            mask = out.zero_()
        else:
            mask = torch.zeros(len(self), num_entities, dtype=torch.bool, device=device)
        rows, cols = self.pairs(mask.device)
        mask[rows, cols] = True
        return mask

    def pairs(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """Every (query, answer) as two flat index tensors, query by query, answers sorted and distinct: the
        sparse form of `mask`, for a ranking that subtracts known answers instead of masking a (Q, E) block."""
        total = int(self.count.sum())
        if total == 0:
            empty = torch.empty(0, dtype=torch.long, device=device or self.count.device)
            return empty, empty.clone()
        on = self.count.device  # the index's device (FilterIndex.on)
        rows = torch.repeat_interleave(torch.arange(len(self), device=on), self.count)
        # the j-th answer overall is answer (j - first j of its query) of that query, at start + that
        first = self.count.cumsum(0) - self.count
        cols = self.index.answers[torch.repeat_interleave(self.start - first, self.count) + torch.arange(total, device=on)]
        return (rows, cols) if device is None else (rows.to(device), cols.to(device))
