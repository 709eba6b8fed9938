"""A small generated KG (`data.source=synthetic`): deterministic and learnable, for tests and quick runs.

`synthetic_kg` makes each relation a fixed permutation: because tail = (head + offset_r) mod n, a model
that learns the relation text can reach a high MRR, so end-to-end tests can check that training actually
improves ranking.
"""

from __future__ import annotations

import torch

from kgc_kd.data.kg import KG

_WORDS = "red green blue small large old new fast slow bright dark warm cold soft hard".split()


def synthetic_kg(num_entities: int = 30, num_relations: int = 3, num_triples: int = 200, *, seed: int = 0,
                 valid_fraction: float = 0.1, test_fraction: float = 0.1) -> KG:
    if num_entities < 2 or num_relations < 1 or num_triples < 10:
        raise ValueError("synthetic_kg needs >= 2 entities, >= 1 relation and >= 10 triples")
    g = torch.Generator().manual_seed(seed)
    n = num_entities
    heads = torch.randint(0, n, (num_triples,), generator=g)
    rels = torch.randint(0, num_relations, (num_triples,), generator=g)
    offsets = torch.randint(1, n, (num_relations,), generator=g)
    tails = (heads + offsets[rels]) % n
    triples = torch.unique(torch.stack([heads, rels, tails], 1), dim=0)
    triples = triples[torch.randperm(len(triples), generator=g)]
    n_valid = max(1, int(valid_fraction * len(triples)))
    n_test = max(1, int(test_fraction * len(triples)))
    names = [f"{_WORDS[i % len(_WORDS)]} thing {i}" for i in range(n)]
    return KG(
        name=f"synthetic-{n}-{num_relations}-{seed}",
        entity_ids=[f"e{i}" for i in range(n)],
        entity_names=names,
        entity_descs=[f"number {i}" for i in range(n)],
        relation_ids=[f"r{k}" for k in range(num_relations)],
        relation_texts=[f"plus {int(offsets[k])}" for k in range(num_relations)],
        valid=triples[:n_valid],
        test=triples[n_valid:n_valid + n_test],
        train=triples[n_valid + n_test:],
        source=f"synthetic:{seed}",
    )
