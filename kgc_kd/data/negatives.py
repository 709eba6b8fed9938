"""Which in-batch and pre-batch "negatives" are in fact known true answers (SimKGC's triplet mask).

Membership is a binary search over sorted (h, r, t) keys instead of Python set look-ups, and the same
object serves the collate function (in-batch) and the model (pre-batch buffer, global batch under DDP).
On a GPU every (query, candidate) key is searched at once (no host sync). On the CPU (the collate
function, once per training batch) the known answers of each query are read as a slice of the sorted
keys and looked up among the batch's distinct candidates instead: B x B searches over the whole key set
cost about 75 ms for a 1024-batch of WN18RR, the slices a few ms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kgc_kd.data.kg import KG


class KnownTriples:
    def __init__(self, triples: Tensor, num_entities: int, num_relations_total: int):
        self.n = num_entities
        self.r = num_relations_total
        self.keys = torch.unique(self._key(triples[:, 0], triples[:, 1], triples[:, 2]))  # sorted

    @classmethod
    def train_of(cls, kg: KG) -> KnownTriples:
        """Train triples and their inverses: the set SimKGC masks false negatives with."""
        return cls(kg.with_inverse(kg.train), kg.num_entities, 2 * kg.num_relations)

    def _key(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        return (h.long() * self.r + r.long()) * self.n + t.long()

    def contains(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        """Elementwise (broadcasting) membership of (h, r, t)."""
        key = self._key(h, r, t)
        pos = torch.searchsorted(self.keys, key.reshape(-1)).clamp_(max=len(self.keys) - 1)
        return (self.keys[pos] == key.reshape(-1)).reshape(key.shape)

    def answers_among(self, h: Tensor, r: Tensor, candidates: Tensor) -> Tensor:
        """(B, M) == contains(h[:, None], r[:, None], candidates[None, :]), from the known answers of each
        (h_i, r_i): they are the contiguous slice of the sorted keys in [(h R + r) N, (h R + r + 1) N)."""
        base = (h.long() * self.r + r.long()) * self.n
        lo = torch.searchsorted(self.keys, base)
        counts = torch.searchsorted(self.keys, base + self.n) - lo
        rows = torch.repeat_interleave(torch.arange(len(h), device=h.device), counts)
        starts = torch.repeat_interleave(lo - (torch.cumsum(counts, 0) - counts), counts)
        answers = self.keys[starts + torch.arange(len(rows), device=h.device)] - base[rows]  # entity ids
        distinct, column = torch.unique(candidates.long(), return_inverse=True)
        pos = torch.searchsorted(distinct, answers).clamp_(max=max(len(distinct) - 1, 0))
        hit = distinct[pos] == answers if len(distinct) else torch.zeros_like(answers, dtype=torch.bool)
        found = torch.zeros(len(h), len(distinct), dtype=torch.bool, device=h.device)
        found[rows[hit], pos[hit]] = True
        return found[:, column]


def false_negative_mask(hr: Tensor, gold: Tensor, candidates: Tensor, known: KnownTriples) -> Tensor:
    """(B, M) True where candidate j is a known answer of query i (same entity as the gold tail, or a
    train tail of (h_i, r_i)); such columns must not act as negatives."""
    same = candidates[None, :] == gold[:, None]
    if hr.device.type == "cpu":
        return same | known.answers_among(hr[:, 0], hr[:, 1], candidates)
    return same | known.contains(hr[:, 0:1], hr[:, 1:2], candidates[None, :])


def in_batch_mask(triples: Tensor, known: KnownTriples) -> tuple[Tensor, Tensor]:
    """(B, B) false-negative mask with a free diagonal (the positives), and (B,) self-negative mask
    (True where the head itself is a train answer of its own query)."""
    fn = false_negative_mask(triples[:, :2], triples[:, 2], triples[:, 2], known)
    fn.fill_diagonal_(False)
    self_fn = known.contains(triples[:, 0], triples[:, 1], triples[:, 0])
    return fn, self_fn
