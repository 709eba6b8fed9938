import pytest
import torch

from kgc_kd.eval.rerank import apply_rerank_, build_adjacency, neighbourhood

# Hand-drawn graph (undirected after build_adjacency):
#   0 - 1 - 2 - 3 - 4
#       |
#       5            6 (isolated)
TRIPLES = torch.tensor([[0, 0, 1], [2, 1, 1], [2, 0, 3], [3, 2, 4], [1, 1, 5]])
NUM_ENTITIES = 7


@pytest.fixture
def adj():
    return build_adjacency(TRIPLES, NUM_ENTITIES)


def test_build_adjacency_is_undirected(adj):
    assert adj == [[1], [0, 2, 5], [1, 3], [2, 4], [3], [1], []]


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
        (3, -1, []),
    ],
)
def test_neighbourhood(adj, start, hops, expected):
    assert list(neighbourhood(adj, start, hops)) == expected


def test_neighbourhood_accepts_mapping(adj):
    as_map = {i: set(n) for i, n in enumerate(adj) if n}
    assert list(neighbourhood(as_map, 2, 2)) == [0, 1, 2, 3, 4, 5]
    assert list(neighbourhood(as_map, 6, 2)) == [6]


def test_neighbourhood_max_nodes_cutoff(adj):
    # node 1 reaches 4 nodes (itself included) within one hop
    assert list(neighbourhood(adj, 1, 1, max_nodes=4)) == [0, 1, 2, 5]
    assert list(neighbourhood(adj, 1, 1, max_nodes=3)) == []
    assert list(neighbourhood(adj, 4, 1, max_nodes=2)) == [3, 4]


def test_apply_rerank_adds_weight_once(adj):
    scores = torch.zeros(3, NUM_ENTITIES)
    out = apply_rerank_(scores, torch.tensor([0, 6, 1]), adj, hops=1, weight=0.25)
    assert out is scores
    expected = torch.zeros(3, NUM_ENTITIES)
    expected[0, [0, 1]] = 0.25
    expected[1, 6] = 0.25
    expected[2, [0, 1, 2, 5]] = 0.25
    assert torch.equal(scores, expected)


def test_apply_rerank_on_random_scores_two_hops(adj):
    torch.manual_seed(0)
    base = torch.rand(4, NUM_ENTITIES)
    scores = base.clone()
    heads = torch.tensor([4, 4, 0, 6])
    apply_rerank_(scores, heads, adj, hops=2, weight=0.05)
    mask = torch.zeros(4, NUM_ENTITIES, dtype=torch.bool)
    mask[0, [2, 3, 4]] = True
    mask[1, [2, 3, 4]] = True
    mask[2, [0, 1, 2, 5]] = True
    mask[3, 6] = True
    assert torch.equal(scores, torch.where(mask, base + 0.05, base))


@pytest.mark.parametrize("hops,weight", [(0, 0.5), (2, 0.0), (-1, 0.5)])
def test_apply_rerank_noop(adj, hops, weight):
    scores = torch.rand(2, NUM_ENTITIES)
    before = scores.clone()
    apply_rerank_(scores, torch.tensor([1, 2]), adj, hops=hops, weight=weight)
    assert torch.equal(scores, before)


def test_apply_rerank_uses_and_fills_cache(adj):
    cache = {}
    scores = torch.zeros(3, NUM_ENTITIES)
    apply_rerank_(scores, torch.tensor([0, 0, 4]), adj, hops=1, weight=1.0, cache=cache)
    assert sorted(cache) == [0, 4]
    assert cache[0].tolist() == [0, 1]
    # a pre-filled entry is trusted, proving neighbourhoods are not recomputed
    cache = {3: torch.tensor([6])}
    scores = torch.zeros(1, NUM_ENTITIES)
    apply_rerank_(scores, torch.tensor([3]), adj, hops=1, weight=1.0, cache=cache)
    assert scores[0].tolist() == [0, 0, 0, 0, 0, 0, 1]


def test_apply_rerank_bf16(adj):
    scores = torch.zeros(1, NUM_ENTITIES, dtype=torch.bfloat16)
    apply_rerank_(scores, torch.tensor([5]), adj, hops=1, weight=0.5)
    assert scores.dtype == torch.bfloat16
    assert scores[0].float().tolist() == [0, 0.5, 0, 0, 0, 0.5, 0]
