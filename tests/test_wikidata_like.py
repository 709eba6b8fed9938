"""experiments/bench/wikidata_like.py: the Wikidata5M-shaped graphs of the scale benchmark."""

from __future__ import annotations

import pytest
import torch

from experiments.bench.wikidata_like import (
    TRIPLES_PER_ENTITY,
    WIKIDATA5M,
    vocabulary_words,
    wikidata_like_hubs,
    wikidata_like_kg,
    wikidata_like_triples,
)

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "river", "stone"]


def test_wikidata5m_sizes_and_ratio():
    assert WIKIDATA5M == {"entities": 4_594_485, "relations": 822, "train": 20_614_279, "valid": 5_163, "test": 5_133}
    assert abs(TRIPLES_PER_ENTITY - 4.4868) < 1e-3


def test_wikidata_like_triples_deterministic_by_seed():
    a, b = wikidata_like_triples(3000, seed=4), wikidata_like_triples(3000, seed=4)
    assert a.dtype == torch.int64 and torch.equal(a, b)
    assert not torch.equal(a, wikidata_like_triples(3000, seed=5))


@pytest.mark.parametrize("n, m, r", [(3000, None, 822), (20_000, 50_000, 40), (1000, 800, 5)])
def test_wikidata_like_triples_sizes_distinct_and_in_range(n, m, r):
    tr = wikidata_like_triples(n, num_triples=m, num_relations=r, seed=1)
    assert tr.shape == (round(TRIPLES_PER_ENTITY * n) if m is None else m, 3)
    assert len(torch.unique(tr, dim=0)) == len(tr)  # distinct triples
    assert tr[:, [0, 2]].min() >= 0 and tr[:, [0, 2]].max() < n and tr[:, 1].min() >= 0 and tr[:, 1].max() < r


def test_wikidata_like_triples_hub_shares():
    n, m = 40_000, 200_000
    tr = wikidata_like_triples(n, num_triples=m, hub_share=0.06, mid_hubs=200, mid_hub_share=0.04, seed=2)
    hub, mids = wikidata_like_hubs(n, mid_hubs=200, seed=2)
    assert len(torch.unique(mids)) == 200 and hub not in mids.tolist()
    on_hub = tr[tr[:, 2] == hub]
    assert len(on_hub) == round(0.06 * m)  # 6% of the triples have the hub as tail ...
    assert len(torch.unique(on_hub[:, 1])) == 1 and len(torch.unique(on_hub[:, 0])) == len(on_hub)  # ... one query's answers
    assert int(torch.bincount(tr[:, 2]).argmax()) == hub
    on_mid = torch.isin(tr[:, 2], mids)
    assert int(on_mid.sum()) == round(0.04 * m)  # 4% on the 200 mid hubs ...
    per_mid = torch.bincount(tr[on_mid, 2], minlength=n)[mids].double()
    assert per_mid.min() > 0.5 * per_mid.mean() and per_mid.max() < 1.5 * per_mid.mean()  # ... spread evenly
    assert not torch.isin(tr[:, 0], torch.tensor([hub])).any()  # the hub is never a head
    # relations follow a Zipf law: the most frequent holds the hub's triples and its Zipf share of the rest
    rel = torch.bincount(tr[:, 1]).sort(descending=True).values
    assert rel[0] > 0.06 * m and rel[0] > 2 * rel[1] and rel[1] > rel[10] > rel[100]
    assert torch.equal(wikidata_like_hubs(n, seed=2)[1], mids)  # the same roles whatever else is asked


def test_wikidata_like_triples_degrees_are_skewed():
    n = 50_000
    tr = wikidata_like_triples(n, hub_share=0.0, mid_hub_share=0.0, mid_hubs=0, seed=3)
    deg = torch.bincount(torch.cat([tr[:, 0], tr[:, 2]]), minlength=n).sort(descending=True).values.double()
    mean = deg.mean().item()
    assert abs(mean - 2 * TRIPLES_PER_ENTITY) < 0.01
    assert deg[0] > 50 * mean and deg[n // 2] < mean  # a power-law head and a light median


def test_wikidata_like_triples_rejects_bad_shapes():
    with pytest.raises(ValueError):
        wikidata_like_triples(100, mid_hubs=200)
    with pytest.raises(ValueError):
        wikidata_like_triples(5000, hub_share=0.7, mid_hub_share=0.4)
    with pytest.raises(ValueError):
        wikidata_like_triples(20, num_triples=10_000, num_relations=1, mid_hubs=2)  # more than 20 x 20 distinct
    with pytest.raises(ValueError):
        wikidata_like_triples(1000, num_triples=100_000, hub_share=0.5)  # 50k distinct heads of 1000 entities


def test_wikidata_like_kg_splits_texts_and_determinism():
    kg = wikidata_like_kg(5000, words=WORDS, name_words=(1, 3), desc_words=(4, 6), relation_words=2,
                          num_relations=30, seed=9)
    assert kg.num_entities == 5000 and kg.num_relations == 30
    assert len(kg.train) == round(TRIPLES_PER_ENTITY * 5000)
    assert len(kg.valid) == max(1, round(5000 / WIKIDATA5M["entities"] * WIKIDATA5M["valid"])) == 6
    assert len(kg.test) == 6
    every = torch.cat([kg.train, kg.valid, kg.test])
    assert len(torch.unique(every, dim=0)) == len(every)  # no split overlap
    assert kg.entity_ids[:2] == ["Q0", "Q1"] and kg.relation_ids[-1] == "P29"
    for texts, lo, hi in ((kg.entity_names, 1, 3), (kg.entity_descs, 4, 6), (kg.relation_texts, 2, 2)):
        lengths = [len(t.split(" ")) for t in texts]
        assert min(lengths) == lo and max(lengths) == hi
        assert {w for t in texts for w in t.split(" ")} <= set(WORDS)
    assert len(set(kg.entity_descs)) > 4000  # drawn, not repeated (7 words, 4-6 long: a few collide)
    again = wikidata_like_kg(5000, words=WORDS, name_words=(1, 3), desc_words=(4, 6), relation_words=2,
                             num_relations=30, seed=9)
    assert again.entity_descs == kg.entity_descs and again.relation_texts == kg.relation_texts
    assert torch.equal(again.train, kg.train) and torch.equal(again.test, kg.test)
    other = wikidata_like_kg(5000, words=WORDS, num_relations=30, seed=10, num_triples=9000, num_valid=3, num_test=0)
    assert len(other.train) == 9000 and len(other.valid) == 3 and len(other.test) == 0
    assert other.entity_names != kg.entity_names


def test_wikidata_like_kg_text_lengths_default_to_simkgc_caps():
    kg = wikidata_like_kg(2000, words=WORDS, num_relations=10)
    assert max(len(t.split()) for t in kg.entity_descs) <= 30 and max(len(t.split()) for t in kg.entity_names) <= 10
    with pytest.raises(ValueError):
        wikidata_like_kg(2000, words=[], num_relations=10)
    with pytest.raises(ValueError):
        wikidata_like_kg(2000, words=WORDS, desc_words=(5, 3), num_relations=10)


def test_vocabulary_words_keeps_whole_words():
    from conftest import make_tokenizer

    words = vocabulary_words(make_tokenizer())
    assert "thing" in words and "red" in words
    assert not any(w.startswith("##") or w.startswith("[") or not w.isalpha() or len(w) < 2 for w in words)
    assert words == sorted(words)
