"""The knowledge graph as one object: entities with text, relations, splits and the indexes built on them.

Every source (built-in, KG-BERT directory, SimKGC json directory, synthetic) produces a `KG`; everything
downstream (tokenisation, batching, evaluation) reads only this class. Relation ids in [0, R) are the
forward relations; SimKGC trains and evaluates on inverse triples too, and relation id r + R is
"inverse " + text(r), so a head prediction (?, r, t) is the tail prediction (t, r + R, ?).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

from kgc_kd.eval.filter import FilterIndex

SPLITS = ("train", "valid", "test")


@dataclass(eq=False)
class KG:
    name: str
    entity_ids: list[str]
    entity_names: list[str]
    entity_descs: list[str]
    relation_ids: list[str]
    relation_texts: list[str]
    train: Tensor  # (N, 3) long: head, relation, tail (forward relations only)
    valid: Tensor
    test: Tensor
    source: str = ""
    _entity_index: dict[str, int] = field(default_factory=dict, repr=False)
    # what loading repaired, for a run report: "train.duplicates", "valid.unknown_dropped",
    # "entities_without_text", ... -> count (nonzero counts only; not saved in an export)
    notes: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        n, r = len(self.entity_ids), len(self.relation_ids)
        if not (len(self.entity_names) == len(self.entity_descs) == n):
            raise ValueError(f"{self.name}: entity ids, names and descriptions differ in length")
        if len(self.relation_texts) != r:
            raise ValueError(f"{self.name}: relation ids and texts differ in length")
        self._entity_index = dict(zip(self.entity_ids, range(n)))  # also the duplicate check: one pass, not two
        if len(self._entity_index) != n:
            raise ValueError(f"{self.name}: duplicate entity ids")
        for split in SPLITS:
            t = getattr(self, split)
            t = torch.as_tensor(t, dtype=torch.long).reshape(-1, 3)
            if t.numel() and (t[:, [0, 2]].min() < 0 or t[:, [0, 2]].max() >= n or t[:, 1].min() < 0 or t[:, 1].max() >= r):
                raise ValueError(f"{self.name}: {split} triples reference unknown entity or relation ids")
            setattr(self, split, t)
        if len(self.train) == 0:
            raise ValueError(f"{self.name}: the train split is empty")

    # ---- sizes and text -------------------------------------------------------------------------------
    @property
    def num_entities(self) -> int:
        return len(self.entity_ids)

    @property
    def num_relations(self) -> int:
        """Forward relations only; the model sees 2x this many (inverses)."""
        return len(self.relation_ids)

    def relation_text(self, r: int) -> str:
        if r >= self.num_relations:
            return "inverse " + self.relation_texts[r - self.num_relations]
        return self.relation_texts[r]

    def entity_index(self, key: str) -> int:
        """Find an entity by id, else by exact name (case-insensitive); raise with suggestions otherwise."""
        if key in self._entity_index:
            return self._entity_index[key]
        low = key.lower()
        hits = [i for i, n in enumerate(self.entity_names) if n.lower() == low]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            ids = ", ".join(self.entity_ids[i] for i in hits[:5])
            raise KeyError(f"entity name {key!r} is ambiguous in {self.name}; use an id: {ids}")
        near = [self.entity_names[i] for i, n in enumerate(self.entity_names) if low in n.lower()][:5]
        raise KeyError(f"no entity {key!r} in {self.name}" + (f"; did you mean: {', '.join(near)}" if near else ""))

    def relation_index(self, key: str) -> int:
        """Find a relation by id or text; "inverse <text>" gives the inverse relation id."""
        for r in range(2 * self.num_relations):
            if key == self.relation_text(r) or (r < self.num_relations and key == self.relation_ids[r]):
                return r
        raise KeyError(f"no relation {key!r} in {self.name}; known: {', '.join(self.relation_texts[:10])} ...")

    # ---- triples ----------------------------------------------------------------------------------------
    def with_inverse(self, triples: Tensor) -> Tensor:
        """(h, r, t) -> rows (h, r, t) followed by (t, r + R, h): SimKGC's 2x training/evaluation set."""
        inv = torch.stack([triples[:, 2], triples[:, 1] + self.num_relations, triples[:, 0]], dim=1)
        return torch.cat([triples, inv], dim=0)

    def split(self, name: str) -> Tensor:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    # ---- indexes ---------------------------------------------------------------------------------------
    @cached_property
    def filter_index(self) -> FilterIndex:
        """(h, r) -> every known answer over train + valid + test, both directions (filtered setting)."""
        return FilterIndex.from_forward(torch.cat([self.split(s) for s in SPLITS]), self.num_relations)

    def summary(self) -> str:
        return (
            f"{self.name}: {self.num_entities:,} entities, {self.num_relations} relations, "
            f"{len(self.train):,} / {len(self.valid):,} / {len(self.test):,} train/valid/test triples"
        )

