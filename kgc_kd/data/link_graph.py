"""SimKGC's neighbour text (its `--use-link-graph`): short descriptions are extended by neighbour names.

SimKGC's rule (doc.py `Example.vectorize` / `get_neighbor_desc`, triplet.py `LinkGraph`):

- the link graph is the TRAIN triples only, undirected (h - t for every (h, r, t); a self-loop makes an
  entity its own neighbour);
- an entity's neighbour list is the first 10 of its neighbours in sorted id order. SimKGC sorts its
  string ids; our KG keeps the source ids (`KG.entity_ids`), and the order here is Python's sort of those
  strings, so the lists are SimKGC's (WN18RR's 8-digit synset offsets: numeric order; FB15k-237's
  "/m/..." ids: code-point order). Built-in KGs are ordered by their ids the same way;
- a description with fewer than 20 whitespace-separated words (`len(desc.split()) < 20`) gets
  " " + the neighbours' names joined by spaces appended before "name: desc" is formed;
- training: the other entity of the example (the tail for the head text and the head-only input, the
  head for the tail text) is removed from the list AFTER the first 10 are taken, so such a text shows 9
  names (the leakage guard); the inverse example (t, r^-1, h) follows the same rule with roles swapped;
- evaluation (validation and test queries, and every ranking candidate): no entity is removed (SimKGC's
  evaluate.py runs with is_test, so its neighbour text has no guard; its ranking candidates have no
  partner anyway).

This module holds the graph part (which neighbours, and who is excluded); `kgc_kd.data.text` has the text
rule and `kgc_kd.data.tokens` assembles the token ids from cached per-entity pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kgc_kd.data.kg import KG

MAX_NEIGHBOURS = 10  # SimKGC's get_neighbor_ids(max_to_keep=10)
MIN_DESC_WORDS = 20  # descriptions with fewer words get neighbour names


def is_short(desc: str, min_words: int = MIN_DESC_WORDS) -> bool:
    """SimKGC's test for appending neighbour names: `len(desc.split()) < 20`."""
    return len(desc.split()) < min_words


@dataclass(eq=False)
class LinkGraph:
    neighbours: Tensor  # (E, K) long: first K train neighbours in source-id string order, -1 where fewer
    augmented: Tensor  # (E,) bool: the description is short, so neighbour names are appended

    @classmethod
    def of(cls, kg: KG, max_neighbours: int = MAX_NEIGHBOURS, min_words: int = MIN_DESC_WORDS) -> LinkGraph:
        n = kg.num_entities
        order = sorted(range(n), key=kg.entity_ids.__getitem__)  # entity ids as strings, sorted
        rank = torch.empty(n, dtype=torch.long)
        rank[torch.tensor(order, dtype=torch.long)] = torch.arange(n)
        h, t = kg.train[:, 0], kg.train[:, 2]
        src, dst = torch.cat([h, t]), torch.cat([t, h])
        keys = torch.unique(src * n + rank[dst])  # sorted: by entity, then by the neighbour's id string
        src, dst = keys // n, torch.tensor(order, dtype=torch.long)[keys % n]
        first = torch.searchsorted(src, src, side="left")  # where each entity's run of neighbours starts
        slot = torch.arange(len(src)) - first
        keep = slot < max_neighbours
        neighbours = torch.full((n, max_neighbours), -1, dtype=torch.long)
        neighbours[src[keep], slot[keep]] = dst[keep]
        augmented = torch.tensor([is_short(d, min_words) for d in kg.entity_descs], dtype=torch.bool)
        return cls(neighbours, augmented)

    @property
    def num_entities(self) -> int:
        return len(self.augmented)

    def neighbour_ids(self, e: int, exclude: int | None = None) -> list[int]:
        """The neighbours whose names entity e's text shows (readable per-example reference): none when the
        description is long; else the first K, less `exclude` (the training partner) if it is among them."""
        if not bool(self.augmented[e]):
            return []
        return [n for n in self.neighbours[e].tolist() if n >= 0 and n != exclude]

    def shown(self, e: Tensor, exclude: Tensor | None = None) -> Tensor:
        """(B, K) bool: which of `neighbours[e]` appear in each text (`exclude[i]` = -1 removes nothing)."""
        nb = self.neighbours[e]
        mask = (nb >= 0) & self.augmented[e].unsqueeze(1)
        if exclude is not None:
            mask &= nb != exclude.unsqueeze(1)
        return mask

    def effective_exclude(self, e: Tensor, partner: Tensor) -> Tensor:
        """partner[i] where removing it changes e[i]'s text (an augmented entity that lists it), else -1:
        texts with the same (entity, effective exclusion) are identical, so a batch encodes them once."""
        listed = (self.neighbours[e] == partner.unsqueeze(1)).any(1) & self.augmented[e]
        return torch.where(listed, partner, -1)
