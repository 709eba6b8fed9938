"""Which in-batch and pre-batch "negatives" are in fact known true answers (SimKGC's triplet mask).

Membership is a binary search over sorted (h, r, t) keys instead of Python set look-ups, and the same
object serves the collate function (in-batch, on the CPU), the model (pre-batch buffer, and the global
batch under DDP, on the training device). The keys are moved to a device once and cached there
(`keys_on`), so a step on a GPU searches GPU keys and never copies the key set.

One algorithm runs on every device, chosen per query by cost, not by device: the known answers of a
query (h, r) are the contiguous slice of the sorted keys in [(h R + r) N, (h R + r + 1) N), so a query
with few known answers reads its slice and looks each answer up among the batch's distinct candidates
("slices": a few ms for a 1024-batch of WN18RR on the CPU, where searching all B x B keys costs about
30 ms), while a query with more known answers than there are candidates (a hub of a large graph:
an inverse relation's hub may have ~1M answers) searches each candidate's key instead ("dense"), so no
query costs more than the batch it sits in. The two give identical masks (tests/test_negatives.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kgc_kd.data.kg import KG
from kgc_kd.devices import canonical


class KnownTriples:
    def __init__(self, triples: Tensor, num_entities: int, num_relations_total: int):
        self.n = num_entities
        self.r = num_relations_total
        self.keys = torch.unique(self._key(triples[:, 0], triples[:, 1], triples[:, 2]).cpu())  # sorted
        self._on: dict[torch.device, Tensor] = {}

    @classmethod
    def train_of(cls, kg: KG) -> KnownTriples:
        """Train triples and their inverses: the set SimKGC masks false negatives with."""
        return cls(kg.with_inverse(kg.train), kg.num_entities, 2 * kg.num_relations)

    def __getstate__(self) -> dict:
        # data-loader workers get the CPU keys only, never a copy cached on a GPU
        return {**self.__dict__, "_on": {}}

    def keys_on(self, device: torch.device | str) -> Tensor:
        """The sorted keys on `device`, copied there once and reused by every later call."""
        device = canonical(device)
        if device.type == "cpu":
            return self.keys
        if device not in self._on:
            self._on[device] = self.keys.to(device)
        return self._on[device]

    def _key(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        return (h.long() * self.r + r.long()) * self.n + t.long()

    def contains(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        """Elementwise (broadcasting) membership of (h, r, t), on the device of the queries."""
        key = self._key(h, r, t)
        flat = key.reshape(-1)
        keys = self.keys_on(flat.device)
        if len(keys) == 0:
            return torch.zeros(key.shape, dtype=torch.bool, device=key.device)
        pos = torch.searchsorted(keys, flat).clamp_(max=len(keys) - 1)
        return (keys[pos] == flat).reshape(key.shape)

    def answer_counts(self, h: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        """Where the known answers of each (h_i, r_i) start in the sorted keys, and how many there are."""
        lo, counts, _ = self._slices(h, r)
        return lo, counts

    def _slices(self, h: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(start, count, base key) of each query's slice of the sorted keys."""
        keys = self.keys_on(h.device)
        base = (h.long() * self.r + r.long()) * self.n
        lo = torch.searchsorted(keys, base)
        return lo, torch.searchsorted(keys, base + self.n) - lo, base

    def answers_among(self, h: Tensor, r: Tensor, candidates: Tensor) -> Tensor:
        """(B, M) == contains(h[:, None], r[:, None], candidates[None, :]); see the module docstring for how
        each query's row is computed."""
        keys = self.keys_on(h.device)
        lo, counts, base = self._slices(h, r)  # the base keys searched once, reused below
        distinct, column = torch.unique(candidates.long(), return_inverse=True)
        found = torch.zeros(len(h), len(distinct), dtype=torch.bool, device=h.device)
        if len(distinct) == 0 or len(keys) == 0:
            return found[:, column]
        dense = counts > len(distinct)  # expanding this query's answers costs more than searching each candidate
        hubs = dense.nonzero().squeeze(1)
        if len(hubs):
            key = base[hubs, None] + distinct[None, :]
            pos = torch.searchsorted(keys, key).clamp_(max=len(keys) - 1)
            found[hubs] = keys[pos] == key
        counts = counts.masked_fill(dense, 0)
        rows = torch.repeat_interleave(torch.arange(len(h), device=h.device), counts)
        if len(rows):
            starts = torch.repeat_interleave(lo - (torch.cumsum(counts, 0) - counts), counts)
            answers = keys[starts + torch.arange(len(rows), device=h.device)] - base[rows]  # entity ids
            pos = torch.searchsorted(distinct, answers).clamp_(max=len(distinct) - 1)
            hit = distinct[pos] == answers
            found[rows[hit], pos[hit]] = True
        return found[:, column]


def false_negative_mask(hr: Tensor, gold: Tensor, candidates: Tensor, known: KnownTriples) -> Tensor:
    """(B, M) True where candidate j is a known answer of query i (same entity as the gold tail, or a
    train tail of (h_i, r_i)); such columns must not act as negatives."""
    same = candidates[None, :] == gold[:, None]
    return same | known.answers_among(hr[:, 0], hr[:, 1], candidates)


def in_batch_mask(triples: Tensor, known: KnownTriples) -> tuple[Tensor, Tensor]:
    """(B, B) false-negative mask with a free diagonal (the positives), and (B,) self-negative mask
    (True where the head itself is a train answer of its own query)."""
    fn = false_negative_mask(triples[:, :2], triples[:, 2], triples[:, 2], known)
    fn.fill_diagonal_(False)
    self_fn = known.contains(triples[:, 0], triples[:, 1], triples[:, 0])
    return fn, self_fn
