from collections import deque

import pytest
import torch

from kgc_kd.eval.rerank import DEFAULT_MAX_NODES, NeighbourGraph, Neighbourhoods, apply_rerank_


# ---- the readable reference: SimKGC's per-head Python BFS (what kgc_kd did before the tensor version) ------
def reference_adjacency(triples, num_entities: int) -> list[list[int]]:
    """Undirected neighbour lists of (h, r, t) rows."""
    nbrs: list[set[int]] = [set() for _ in range(num_entities)]
    for h, _, t in torch.as_tensor(triples).tolist():
        nbrs[h].add(t)
        nbrs[t].add(h)
    return [sorted(s) for s in nbrs]


def reference_neighbourhood(adjacency, start: int, hops: int, max_nodes: int = DEFAULT_MAX_NODES) -> list[int]:
    """SimKGC's get_n_hop_entity_indices: BFS from `start` (itself included); [] as soon as it outgrows
    max_nodes."""
    seen = {start}
    frontier = deque([start])
    for _ in range(hops):
        for _ in range(len(frontier)):
            node = frontier.popleft()
            for nb in adjacency[node]:
                if nb not in seen:
                    seen.add(nb)
                    frontier.append(nb)
                    if len(seen) > max_nodes:
                        return []
    return sorted(seen)


def reference_rerank_(scores, heads, adjacency, hops, weight, max_nodes=DEFAULT_MAX_NODES):
    """SimKGC's rerank_by_graph: index_add_ of the weight at each head's neighbourhood."""
    for i, h in enumerate(heads.tolist()):
        idx = torch.tensor(reference_neighbourhood(adjacency, h, hops, max_nodes), dtype=torch.long)
        scores[i].index_add_(0, idx, torch.full((len(idx),), weight, dtype=scores.dtype))
    return scores


def random_graph(seed: int):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(5, 200, (1,), generator=g))
    m = int(torch.randint(0, 3 * n, (1,), generator=g))
    triples = torch.stack([torch.randint(0, n, (m,), generator=g), torch.randint(0, 3, (m,), generator=g),
                           torch.randint(0, n, (m,), generator=g)], dim=1)
    return triples, n


# Hand-drawn graph (undirected):
#   0 - 1 - 2 - 3 - 4
#       |
#       5            6 (isolated)
TRIPLES = torch.tensor([[0, 0, 1], [2, 1, 1], [2, 0, 3], [3, 2, 4], [1, 1, 5]])
NUM_ENTITIES = 7


@pytest.fixture
def graph():
    return NeighbourGraph.from_triples(TRIPLES, NUM_ENTITIES)


def test_reference_adjacency_is_undirected():
    assert reference_adjacency(TRIPLES, NUM_ENTITIES) == [[1], [0, 2, 5], [1, 3], [2, 4], [3], [1], []]


@pytest.mark.parametrize(
    "start,hops,expected",
    [
        (1, 0, [1]),
        (6, 3, [6]),
        (1, 1, [0, 1, 2, 5]),
        (0, 1, [0, 1]),
        (0, 2, [0, 1, 2, 5]),
        (2, 2, [0, 1, 2, 3, 4, 5]),
        (4, 2, [2, 3, 4]),
        (4, 10, [0, 1, 2, 3, 4, 5]),
    ],
)
def test_neighbourhoods_hand_computed(graph, start, hops, expected):
    assert reference_neighbourhood(reference_adjacency(TRIPLES, NUM_ENTITIES), start, hops) == expected
    nb = graph.neighbourhoods(torch.arange(NUM_ENTITIES), hops)
    assert nb.members(start) == expected
    assert int(nb.sizes[nb.slots(torch.tensor([start]))]) == len(expected)


def test_max_nodes_cutoff_hand_computed(graph):
    # node 1 reaches 4 nodes (itself included) within one hop
    assert graph.neighbourhoods([1], 1, max_nodes=4).members(1) == [0, 1, 2, 5]
    assert graph.neighbourhoods([1], 1, max_nodes=3).members(1) == []
    assert graph.neighbourhoods([4], 1, max_nodes=2).members(4) == [3, 4]
    # a lone head keeps itself even under max_nodes=0 (SimKGC only checks after adding a node)
    assert graph.neighbourhoods([6], 2, max_nodes=0).members(6) == [6]
    assert graph.neighbourhoods([4], 0, max_nodes=0).members(4) == [4]
    assert graph.neighbourhoods([4], 1, max_nodes=0).members(4) == []


@pytest.mark.parametrize("seed", range(8))
def test_neighbourhoods_equal_the_python_bfs_on_random_graphs(seed):
    triples, n = random_graph(seed)
    adj = reference_adjacency(triples, n)
    graph = NeighbourGraph.from_triples(triples, n)
    heads = torch.arange(n).flip(0)  # order and duplicates of heads do not matter
    heads = torch.cat([heads, heads[:7]])
    for hops in range(4):
        # small caps trigger SimKGC's cut-off on part of the heads; batch_heads=64 searches in several batches
        for max_nodes in (0, 1, 3, 8, 40, DEFAULT_MAX_NODES):
            nb = graph.neighbourhoods(heads, hops, max_nodes, batch_heads=64)
            assert nb.heads.tolist() == list(range(n))
            for h in range(n):
                ref = reference_neighbourhood(adj, h, hops, max_nodes)
                assert nb.members(h) == ref, (seed, hops, max_nodes, h)
                assert int(nb.sizes[h]) == len(ref)


def test_high_degree_nodes_are_padded_correctly():
    # a star of 37 leaves around 0 (degree 37, padded to 64) plus a path 37 - 38 - 39 - 40
    leaves = torch.arange(1, 38)
    star = torch.stack([torch.zeros(37, dtype=torch.long), torch.zeros(37, dtype=torch.long), leaves], dim=1)
    path = torch.tensor([[37, 0, 38], [38, 0, 39], [39, 0, 40]])
    triples = torch.cat([star, path])
    graph = NeighbourGraph.from_triples(triples, 41)
    nb = graph.neighbourhoods(torch.arange(41), 2)
    assert nb.members(5) == list(range(0, 38))
    assert nb.members(38) == [0, 37, 38, 39, 40]
    assert nb.members(0) == list(range(0, 39))


def test_duplicate_and_self_loop_edges_change_nothing():
    triples = torch.tensor([[0, 0, 1], [1, 1, 0], [0, 0, 1], [1, 0, 1], [2, 0, 2]])
    nb = NeighbourGraph.from_triples(triples, 3).neighbourhoods([0, 1, 2], 3)
    assert (nb.members(0), nb.members(1), nb.members(2)) == ([0, 1], [0, 1], [2])


def test_from_adjacency_list_and_mapping_make_the_same_graph(graph):
    adj = reference_adjacency(TRIPLES, NUM_ENTITIES)
    one_way = {0: [1], 1: [2, 5], 2: [3], 3: [4]}  # made undirected
    for g in (NeighbourGraph.from_adjacency(adj), NeighbourGraph.from_adjacency(one_way, NUM_ENTITIES)):
        nb = g.neighbourhoods(torch.arange(NUM_ENTITIES), 2)
        assert [nb.members(h) for h in range(NUM_ENTITIES)] == [
            reference_neighbourhood(adj, h, 2) for h in range(NUM_ENTITIES)]


def test_covering_adds_missing_heads_only(graph):
    nb = graph.neighbourhoods([4, 2], 1)
    assert nb.covering(torch.tensor([2, 4, 4])) is nb
    more = nb.covering(torch.tensor([0, 4]))
    assert more.heads.tolist() == [0, 2, 4] and len(nb) == 2
    assert [more.members(h) for h in (0, 2, 4)] == [[0, 1], [1, 2, 3], [3, 4]]
    orphan = Neighbourhoods(nb.heads, nb.bits, nb.sizes, nb.num_entities, nb.hops, nb.max_nodes)
    with pytest.raises(ValueError, match="no graph to search"):
        orphan.covering(torch.tensor([0]))
    with pytest.raises(KeyError, match="entity 0"):
        nb.mask(torch.tensor([0]))


def test_bad_arguments(graph):
    with pytest.raises(ValueError, match="hops must be >= 0"):
        graph.neighbourhoods([0], -1)
    with pytest.raises(ValueError, match=r"entity ids in \[0, 7\)"):
        graph.neighbourhoods([7], 1)
    with pytest.raises(ValueError, match=r"entity ids in \[0, 3\)"):
        NeighbourGraph.from_triples(torch.tensor([[0, 0, 3]]), 3)


# ---- apply_rerank_ -----------------------------------------------------------------------------------------
def test_apply_rerank_adds_weight_once(graph):
    nb = graph.neighbourhoods([0, 6, 1], 1)
    scores = torch.zeros(3, NUM_ENTITIES)
    out = apply_rerank_(scores, torch.tensor([0, 6, 1]), nb, weight=0.25)
    assert out is scores
    expected = torch.zeros(3, NUM_ENTITIES)
    expected[0, [0, 1]] = 0.25
    expected[1, 6] = 0.25
    expected[2, [0, 1, 2, 5]] = 0.25
    assert torch.equal(scores, expected)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_rerank_equals_simkgc_index_add(seed, dtype):
    triples, n = random_graph(seed)
    adj = reference_adjacency(triples, n)
    g = torch.Generator().manual_seed(seed)
    heads = torch.randint(0, n, (9,), generator=g)
    base = torch.randn(9, n, generator=g).to(dtype)
    for hops, max_nodes in ((1, DEFAULT_MAX_NODES), (2, 5), (3, 30)):
        nb = NeighbourGraph.from_triples(triples, n).neighbourhoods(heads, hops, max_nodes)
        ours = apply_rerank_(base.clone(), heads, nb, 0.05)
        ref = reference_rerank_(base.clone(), heads, adj, hops, 0.05, max_nodes)
        assert ours.dtype == dtype and torch.equal(ours, ref)


def test_apply_rerank_workspace_is_used(graph):
    nb = graph.neighbourhoods([3], 1)
    assert nb.unpacked_width == 64  # 7 entities, one int64 word of bits per head
    ws = torch.full((64,), 7.0)
    scores = apply_rerank_(torch.zeros(1, NUM_ENTITIES), torch.tensor([3]), nb, 0.5, workspace=ws)
    assert scores[0].tolist() == [0, 0, 0.5, 0.5, 0.5, 0, 0]
    assert ws.tolist() == scores[0].tolist() + [0.0] * 57
    for bad in (torch.zeros(63), torch.zeros(64, dtype=torch.float64), torch.zeros(128)[::2]):
        with pytest.raises(ValueError, match="contiguous torch.float32 tensor of at least 64 elements"):
            apply_rerank_(torch.zeros(1, NUM_ENTITIES), torch.tensor([3]), nb, 0.5, workspace=bad)


def test_apply_rerank_noop_and_checks(graph):
    nb = graph.neighbourhoods([1, 2], 2)
    scores = torch.rand(2, NUM_ENTITIES)
    before = scores.clone()
    apply_rerank_(scores, torch.tensor([1, 2]), nb, weight=0.0)
    apply_rerank_(scores, torch.tensor([1, 2]), None, weight=0.5)
    assert torch.equal(scores, before)
    with pytest.raises(ValueError, match="3 entries for 2 score rows"):
        apply_rerank_(scores, torch.tensor([1, 2, 2]), nb, weight=0.5)
    with pytest.raises(ValueError, match="scores cover 5 entities"):
        apply_rerank_(torch.zeros(2, 5), torch.tensor([1, 2]), nb, weight=0.5)


def test_groups_gather_at_most_one_word_matrix_and_a_budget_only_batches_the_search():
    """A graph with hubs and many same-degree nodes: every group's gather is at most N + 1 rows (large groups
    are split by nodes), and a budget that holds one word of 64 heads searches in batches of 64 with the same
    neighbourhoods as one batch of all heads, all equal to the Python BFS."""
    from kgc_kd.eval.memory_plan import search_bytes_per_64_heads

    g = torch.Generator().manual_seed(3)
    n = 150
    ring = torch.stack([torch.arange(n), torch.zeros(n, dtype=torch.long), (torch.arange(n) + 1) % n], dim=1)
    hubs = torch.stack([torch.randint(0, 3, (120,), generator=g), torch.ones(120, dtype=torch.long),
                        torch.randint(0, n, (120,), generator=g)], dim=1)
    triples = torch.cat([ring, hubs])
    graph = NeighbourGraph.from_triples(triples, n)
    assert max(len(nbr) for _, _, _, nbr in graph.groups) <= n + 1
    assert len(graph.groups) > len({w for _, _, w, _ in graph.groups})  # some group was split
    heads = torch.arange(n)
    whole = graph.neighbourhoods(heads, 3, max_nodes=90)
    budget = search_bytes_per_64_heads(n)  # one word of heads: three batches
    batched = graph.neighbourhoods(heads, 3, max_nodes=90, memory_budget=budget)
    assert torch.equal(whole.bits, batched.bits) and torch.equal(whole.sizes, batched.sizes)
    adj = reference_adjacency(triples, n)
    for h in range(n):
        assert batched.members(h) == reference_neighbourhood(adj, h, 3, 90)
