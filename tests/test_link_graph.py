"""kgc_kd.data.link_graph: SimKGC's neighbour lists (train graph, id-string order, first 10, leakage guard)."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import LINK_WORDS, link_kg

from kgc_kd.data.kg import KG
from kgc_kd.data.link_graph import LinkGraph, is_short


@pytest.fixture(scope="module")
def kg():
    return link_kg()


@pytest.fixture(scope="module")
def graph(kg):
    return LinkGraph.of(kg)


def ids(kg: KG, entities: list[int]) -> list[str]:
    return [kg.entity_ids[e] for e in entities]


def test_neighbours_sorted_as_id_strings_first_ten(kg, graph):
    # 12 neighbours n1..n12 (plus none else): as strings n1 < n10 < n11 < n12 < n2 < ... < n7 | n8 n9 dropped
    assert ids(kg, graph.neighbour_ids(0)) == ["n1", "n10", "n11", "n12", "n2", "n3", "n4", "n5", "n6", "n7"]
    assert graph.neighbours.shape == (16, 10)
    assert ids(kg, graph.neighbour_ids(12)) == ["h", "y"]  # undirected: n5 is a head of (n5, r1, y) only
    assert ids(kg, graph.neighbour_ids(14)) == ["n5", "x"]  # y is only ever a tail
    assert graph.neighbours[12].tolist()[2:] == [-1] * 8


def test_train_triples_only_and_self_loop(kg, graph):
    assert graph.neighbour_ids(13) == []  # "lonely" is only in valid and test
    assert 13 not in graph.neighbours[0].tolist()
    assert ids(kg, graph.neighbour_ids(8)) == ["h", "n9"]  # (n9, r1, n9): an entity is its own neighbour


def test_short_description_rule(kg, graph):
    assert is_short(" ".join(LINK_WORDS[:19])) and not is_short(" ".join(LINK_WORDS[:20]))
    assert is_short("") and is_short("  a\tb\nc ")  # str.split(): any whitespace
    assert graph.augmented.tolist() == [len(d.split()) < 20 for d in kg.entity_descs]
    assert not graph.augmented[6] and not graph.augmented[7]  # 20 and 25 words
    assert graph.neighbour_ids(6) == [] and graph.neighbour_ids(7) == []  # long: no names whatever the graph


def test_exclusion_is_applied_after_the_first_ten(kg, graph):
    full = graph.neighbour_ids(0)
    inside = kg.entity_ids.index("n12")
    assert graph.neighbour_ids(0, inside) == [n for n in full if n != inside] and len(graph.neighbour_ids(0, inside)) == 9
    outside = kg.entity_ids.index("n8")  # 11th by id: not listed, so all 10 stay (SimKGC does not refill)
    assert graph.neighbour_ids(0, outside) == full
    assert graph.neighbour_ids(8, 8) == [0]  # the self-loop's partner is the entity itself
    assert graph.neighbour_ids(15, 14) == []  # dog's only neighbour is its partner


def test_vectorised_shown_and_effective_exclude_match_the_per_example_lists(kg, graph):
    n = kg.num_entities
    pairs = torch.tensor(list(itertools.product(range(n), range(-1, n))))
    e, x = pairs[:, 0], pairs[:, 1]
    shown = graph.shown(e, x)
    eff = graph.effective_exclude(e, x.clamp(min=0))
    for i, (a, b) in enumerate(pairs.tolist()):
        want = graph.neighbour_ids(a, None if b < 0 else b)
        assert graph.neighbours[a][shown[i]].tolist() == want
        # the effective exclusion gives the same text as the partner and is -1 exactly when nothing changes
        partner = max(b, 0)
        assert graph.neighbour_ids(a, None if eff[i] < 0 else int(eff[i])) == graph.neighbour_ids(a, partner)
        assert (int(eff[i]) == -1) == (graph.neighbour_ids(a, partner) == graph.neighbour_ids(a))
    assert graph.shown(e).equal(graph.shown(e, torch.full_like(e, -1)))


def test_order_is_string_order_not_index_or_numeric():
    # ids chosen so that index order, numeric order and string order all differ
    kg = KG(name="o", entity_ids=["5", "10", "9", "100"], entity_names=["a", "b", "c", "d"],
            entity_descs=["", "", "", ""], relation_ids=["r"], relation_texts=["r"],
            train=torch.tensor([[0, 0, 1], [0, 0, 2], [3, 0, 0]]), valid=torch.zeros(0, 3), test=torch.zeros(0, 3))
    g = LinkGraph.of(kg)
    assert ids(kg, g.neighbour_ids(0)) == sorted(["10", "9", "100"]) == ["10", "100", "9"]


def test_max_neighbours_and_min_words_are_parameters(kg):
    g = LinkGraph.of(kg, max_neighbours=3, min_words=1)
    assert ids(kg, g.neighbour_ids(1)) == ["h"]  # empty description: 0 words < 1
    assert ids(kg, g.neighbour_ids(2)) == []  # "a jointly owned shop": 4 words
    assert ids(kg, g.neighbours[0].tolist()) == ["n1", "n10", "n11"]  # listed, though the hub's text is long now
