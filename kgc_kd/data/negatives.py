"""Which in-batch and pre-batch "negatives" are in fact known true answers (SimKGC's triplet mask).

Membership is a binary search over sorted (h, r, t) keys instead of Python set look-ups, and the same
object serves the collate function (in-batch, on the CPU), the model (pre-batch buffer, and the global
batch under DDP, on the training device). The keys are moved to a device once and cached there
(`keys_on`), so a step on a GPU searches GPU keys and never copies the key set.

One algorithm runs on every device, and its cost is bounded by the batch, not by the graph:
- each distinct query (h, r) of the batch is worked out once, then copied to its rows (a batch of a
  Wikidata-shaped graph repeats its hub's inverse query: ~3% of the training rows ask it);
- each distinct candidate entity is one column, copied to its repeats at the end;
- the known answers of a query are the contiguous slice of the sorted keys in [(h R + r) N,
  (h R + r + 1) N), so a query with at most as many known answers as there are distinct candidates
  reads its slice and looks each answer up among the candidates ("slices"), while a query with more
  (a hub: ~1.2M answers at Wikidata5M's scale) searches each candidate's key instead ("dense").
So no query costs more than about M searches (M = distinct candidates), and a B x M mask at most about
B x M steps whatever the graph's degrees. Both paths give the same mask as searching every (query,
candidate) key; tests/test_negatives.py keeps the earlier implementation (one search per row) as a
reference. Queries and candidates are visited in sorted order (`torch.unique`), so the searches walk the
keys forwards, and the candidate-by-query matrix is built transposed, so that copying it out to the
batch's rows and columns gathers whole rows (a bool matrix's column gather costs ~5x more).
Measured figures (Wikidata5M's 41.2M keys, WN18RR) are in docs/performance.md.

That algorithm sizes its work from the data: `torch.unique`'s output length, the hubs (`nonzero`), the
slices' total length (`repeat_interleave`). On the CPU reading a size is free; on a CUDA device each is a
host sync, the host waiting for every queued kernel, several per training step (the pre-batch mask, the
DDP mask rebuild). There (`FIXED_SIZE_DEVICE_TYPES`) the mask is the fixed-size search of every (query,
candidate) key against the cached sorted keys (`contains` broadcast to B x M): no size is read, the same
mask (set membership either way; tests compare both with the reference), B x M searches, which a GPU does
in parallel. The choice is by cost: a sync costs a GPU its queue, a CPU nothing. The collate function runs
on the CPU and keeps the cost-bounded algorithm.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kgc_kd.data.kg import KG
from kgc_kd.runtime.devices import canonical

#: device types where reading a size back makes the host wait for the device: masks are fixed-size searches there
FIXED_SIZE_DEVICE_TYPES: set[str] = {"cuda"}


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
        return self._slices(self.keys_on(h.device), (h.long() * self.r + r.long()) * self.n)

    def _slices(self, keys: Tensor, base: Tensor) -> tuple[Tensor, Tensor]:
        """(start, count) of the slice of `keys` holding the answers of each query whose base key is `base`."""
        lo = torch.searchsorted(keys, base)
        return lo, torch.searchsorted(keys, base + self.n) - lo

    def answers_among(self, h: Tensor, r: Tensor, candidates: Tensor) -> Tensor:
        """(B, M) == contains(h[:, None], r[:, None], candidates[None, :]); see the module docstring for how
        it is computed (each distinct query once, each distinct candidate once, slices or dense by cost; on a
        CUDA device one fixed-size search, no size read back)."""
        if h.device.type in FIXED_SIZE_DEVICE_TYPES:
            return self.contains(h[:, None], r[:, None], candidates.reshape(-1)[None, :])
        keys = self.keys_on(h.device)
        queries, row = torch.unique(h.long() * self.r + r.long(), return_inverse=True)
        distinct, column = torch.unique(candidates.long(), return_inverse=True)
        # transposed (distinct candidate, distinct query): the copies below then gather whole rows, which is
        # ~5x cheaper than gathering columns of a bool matrix (one transpose in between)
        found = torch.zeros(len(distinct), len(queries), dtype=torch.bool, device=h.device)
        if len(queries) and len(distinct) and len(keys):
            self._find(keys, queries * self.n, distinct, found)
        return found[column].t().contiguous()[row]

    def _find(self, keys: Tensor, base: Tensor, distinct: Tensor, found: Tensor) -> None:
        """found[j, i] = key base[i] + distinct[j] is known, for sorted distinct `base` and `distinct`."""
        lo, counts = self._slices(keys, base)
        dense = counts > len(distinct)  # expanding this query's answers costs more than searching each candidate
        hubs = dense.nonzero().squeeze(1)
        if len(hubs):
            key = (base[hubs, None] + distinct[None, :]).reshape(-1)  # ascending: the search walks forwards
            pos = torch.searchsorted(keys, key).clamp_(max=len(keys) - 1)
            found[:, hubs] = (keys[pos] == key).reshape(len(hubs), len(distinct)).t()
        counts = counts.masked_fill(dense, 0)
        rows = torch.repeat_interleave(torch.arange(len(base), device=base.device), counts)
        if len(rows):
            # answer k of the expansion sits at keys[lo[row] + (k - first k of row)]; a gather by row and
            # in-place arithmetic: ~3x cheaper than a second repeat_interleave and fresh temporaries
            at = (lo - (torch.cumsum(counts, 0) - counts))[rows].add_(torch.arange(len(rows), device=base.device))
            answers = keys[at].sub_(base[rows])  # entity ids, ascending per query
            pos = torch.searchsorted(distinct, answers).clamp_(max=len(distinct) - 1)
            hit = distinct[pos] == answers
            found[pos[hit], rows[hit]] = True


def false_negative_mask(hr: Tensor, gold: Tensor, candidates: Tensor, known: KnownTriples) -> Tensor:
    """(B, M) True where candidate j is a known answer of query i (same entity as the gold tail, or a
    train tail of (h_i, r_i)); such columns must not act as negatives."""
    found = known.answers_among(hr[:, 0], hr[:, 1], candidates)
    found |= candidates[None, :] == gold[:, None]  # in place: one (B, M) temporary fewer
    return found


def in_batch_mask(triples: Tensor, known: KnownTriples) -> tuple[Tensor, Tensor]:
    """(B, B) false-negative mask with a free diagonal (the positives), and (B,) self-negative mask
    (True where the head itself is a train answer of its own query)."""
    fn = false_negative_mask(triples[:, :2], triples[:, 2], triples[:, 2], known)
    fn.fill_diagonal_(False)
    self_fn = known.contains(triples[:, 0], triples[:, 1], triples[:, 0])
    return fn, self_fn
