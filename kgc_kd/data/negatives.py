"""Which in-batch and pre-batch "negatives" are in fact known true answers (SimKGC's triplet mask).

Membership is a binary search over sorted (h, r, t) keys instead of Python set look-ups, so a
1024 x 1024 mask (paper-scale batches) costs milliseconds, and the same object serves the collate
function (in-batch) and the model (pre-batch buffer, global batch under DDP).
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


def false_negative_mask(hr: Tensor, gold: Tensor, candidates: Tensor, known: KnownTriples) -> Tensor:
    """(B, M) True where candidate j is a known answer of query i (same entity as the gold tail, or a
    train tail of (h_i, r_i)); such columns must not act as negatives."""
    h, r = hr[:, 0:1], hr[:, 1:2]
    return (candidates[None, :] == gold[:, None]) | known.contains(h, r, candidates[None, :])


def in_batch_mask(triples: Tensor, known: KnownTriples) -> tuple[Tensor, Tensor]:
    """(B, B) false-negative mask with a free diagonal (the positives), and (B,) self-negative mask
    (True where the head itself is a train answer of its own query)."""
    fn = false_negative_mask(triples[:, :2], triples[:, 2], triples[:, 2], known)
    fn.fill_diagonal_(False)
    self_fn = known.contains(triples[:, 0], triples[:, 1], triples[:, 0])
    return fn, self_fn
