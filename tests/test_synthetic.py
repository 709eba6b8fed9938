"""kgc_kd.data.synthetic: the generated KG used by end-to-end tests."""

from __future__ import annotations

import pytest
import torch

from kgc_kd.data.synthetic import synthetic_kg


def _rows(t: torch.Tensor) -> list[tuple[int, int, int]]:
    return [tuple(x) for x in t.tolist()]


def test_deterministic_by_seed():
    a, b = synthetic_kg(seed=7), synthetic_kg(seed=7)
    assert a.entity_names == b.entity_names and a.relation_texts == b.relation_texts
    for split in ("train", "valid", "test"):
        assert torch.equal(a.split(split), b.split(split))
    c = synthetic_kg(seed=8)
    assert not torch.equal(a.train, c.train) or a.relation_texts != c.relation_texts


@pytest.mark.parametrize("n, r, m, seed", [(30, 3, 200, 0), (12, 2, 50, 1), (50, 5, 400, 3)])
def test_sizes_and_text(n, r, m, seed):
    kg = synthetic_kg(n, r, m, seed=seed)
    assert kg.num_entities == n and kg.num_relations == r
    assert kg.entity_ids == [f"e{i}" for i in range(n)]
    assert kg.entity_descs == [f"number {i}" for i in range(n)]
    assert all(name.endswith(f" thing {i}") for i, name in enumerate(kg.entity_names))
    assert kg.relation_ids == [f"r{k}" for k in range(r)]
    total = len(kg.train) + len(kg.valid) + len(kg.test)
    assert 10 <= total <= m  # duplicates removed
    assert len(kg.valid) == max(1, int(0.1 * total))
    assert len(kg.test) == max(1, int(0.1 * total))
    assert kg.name == f"synthetic-{n}-{r}-{seed}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tails_follow_offsets(seed):
    kg = synthetic_kg(20, 4, 150, seed=seed)
    offsets = []
    for text in kg.relation_texts:
        word, k = text.split()
        assert word == "plus"
        offsets.append(int(k))
    assert all(1 <= k < kg.num_entities for k in offsets)
    for split in ("train", "valid", "test"):
        for h, r, t in _rows(kg.split(split)):
            assert t == (h + offsets[r]) % kg.num_entities


@pytest.mark.parametrize("seed", [0, 5])
def test_no_split_overlap_and_no_duplicates(seed):
    kg = synthetic_kg(10, 2, 120, seed=seed)  # few entities: many generated duplicates
    rows = {s: _rows(kg.split(s)) for s in ("train", "valid", "test")}
    for s, r in rows.items():
        assert len(set(r)) == len(r), s
    assert not set(rows["train"]) & set(rows["valid"])
    assert not set(rows["train"]) & set(rows["test"])
    assert not set(rows["valid"]) & set(rows["test"])


@pytest.mark.parametrize("kw", [{"num_entities": 1}, {"num_relations": 0}, {"num_triples": 9}])
def test_rejects_tiny_sizes(kw):
    with pytest.raises(ValueError, match="synthetic_kg needs"):
        synthetic_kg(**kw)
