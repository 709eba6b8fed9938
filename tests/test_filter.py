"""kgc_kd.eval.filter: the tensor FilterIndex must answer exactly like a plain dict of known answers."""

from __future__ import annotations

import pytest
import torch

from kgc_kd.data.builtin import load_builtin
from kgc_kd.data.kg import SPLITS
from kgc_kd.eval import FilterIndex, QueryAnswers, build_filter_index, evaluate_queries


def naive_index(triples: torch.Tensor) -> dict[tuple[int, int], list[int]]:
    """(h, r) -> sorted distinct t, with a Python loop: the reference."""
    acc: dict[tuple[int, int], set[int]] = {}
    for h, r, t in triples.tolist():
        acc.setdefault((h, r), set()).add(t)
    return {k: sorted(v) for k, v in acc.items()}


def naive_both_directions(triples: torch.Tensor, num_relations: int) -> dict[tuple[int, int], list[int]]:
    h, r, t = triples.unbind(1)
    return naive_index(torch.cat([triples, torch.stack([t, r + num_relations, h], 1)]))


def random_triples(seed: int, n: int = 400, e: int = 15, r: int = 4) -> torch.Tensor:
    """Few entities and relations for many rows: lots of duplicate triples and shared (h, r) keys."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.stack([torch.randint(0, e, (n,), generator=g), torch.randint(0, r, (n,), generator=g),
                        torch.randint(0, e, (n,), generator=g)], 1)
    return torch.cat([rows, rows[: n // 4]])[torch.randperm(n + n // 4, generator=g)]


def assert_matches(idx: FilterIndex, ref: dict[tuple[int, int], list[int]]) -> None:
    assert len(idx) == len(ref)
    assert list(idx) == sorted(ref)  # keys in (h, r) order
    assert list(idx.keys()) == sorted(ref)
    for key, answers in ref.items():
        assert key in idx
        assert idx[key].dtype == torch.long
        assert idx[key].tolist() == answers, key
        assert idx.get(key).tolist() == answers
    assert {k: v.tolist() for k, v in idx.items()} == ref


def naive_mask(ref: dict[tuple[int, int], list[int]], h: torch.Tensor, r: torch.Tensor, e: int) -> torch.Tensor:
    mask = torch.zeros(len(h), e, dtype=torch.bool)
    for i, key in enumerate(zip(h.tolist(), r.tolist())):
        for t in ref.get(key, []):
            mask[i, t] = True
    return mask


# ---- construction ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_from_triples_equals_naive_dict(seed):
    triples = random_triples(seed)
    idx = FilterIndex.from_triples(triples, 4)
    assert_matches(idx, naive_index(triples))
    assert idx.answers.dtype == idx.codes.dtype == idx.offsets.dtype == torch.long
    assert idx.offsets[0] == 0 and idx.offsets[-1] == len(idx.answers)


@pytest.mark.parametrize("seed", range(3))
def test_from_triples_with_hubs_and_sparse_large_ids_equals_naive_dict(seed):
    """A hub key with hundreds of answers, ids up to 10^6 and unused ids in between: the 1-D keys
    (h * R + r) * E + t decode back to the same CSR layout as a dict built in Python."""
    g = torch.Generator().manual_seed(seed)
    hub = torch.stack([torch.full((500,), 999_999), torch.full((500,), 2), torch.randint(0, 10**6, (500,), generator=g)], 1)
    rest = torch.stack([torch.randint(0, 10**6, (300,), generator=g), torch.randint(0, 3, (300,), generator=g),
                        torch.randint(0, 10**6, (300,), generator=g)], 1)
    triples = torch.cat([hub, rest, hub[:50]])
    idx = FilterIndex.from_triples(triples, 3)
    assert_matches(idx, naive_index(triples))
    assert len(idx[(999_999, 2)]) == len(set(hub[:, 2].tolist()))


def test_from_triples_rejects_keys_that_overflow_int64():
    with pytest.raises(ValueError, match="overflow"):
        FilterIndex.from_triples(torch.tensor([[0, 0, 2**31]]), 2**5)


@pytest.mark.parametrize("seed", range(5))
def test_from_forward_and_build_filter_index_add_both_directions(seed):
    triples = random_triples(seed)
    ref = naive_both_directions(triples, 4)
    idx = FilterIndex.from_forward(triples, 4)
    assert idx.num_relations_total == 8
    assert_matches(idx, ref)
    # build_filter_index: the same index from split parts, tensors or nested lists
    parts = [triples[:100], triples[100:300].tolist(), triples[300:]]
    assert build_filter_index(parts, 4) == idx
    assert FilterIndex.from_forward(triples.flip(0), 4) == idx  # row order does not matter


def test_kg_filter_index_equals_naive_dict_over_all_splits():
    kg = load_builtin("nations")
    every = torch.cat([kg.split(s) for s in SPLITS])
    assert isinstance(kg.filter_index, FilterIndex)
    assert_matches(kg.filter_index, naive_both_directions(every, kg.num_relations))


def test_empty_index():
    for idx in (FilterIndex.from_triples(torch.zeros(0, 3, dtype=torch.long), 4),
                FilterIndex.from_forward(torch.zeros(0, 3, dtype=torch.long), 2), build_filter_index([], 2)):
        assert len(idx) == 0 and list(idx) == [] and dict(idx.items()) == {}
        assert (0, 0) not in idx and idx.get((0, 0)) is None
        with pytest.raises(KeyError):
            idx[(0, 0)]
        h, r = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3])
        assert idx.lookup(h, r).count.tolist() == [0, 0, 0]
        mask = idx.exclusion_mask(h, r, 5)
        assert mask.shape == (3, 5) and mask.dtype == torch.bool and not mask.any()


def test_absent_and_malformed_keys():
    idx = FilterIndex.from_triples(torch.tensor([[0, 0, 1], [0, 2, 4], [1, 0, 3], [3, 2, 0]]), 3)
    empty = torch.empty(0, dtype=torch.long)
    for key in [(0, 1), (2, 0), (3, 0), (9, 2), (4, 0)]:
        assert key not in idx
        assert idx.get(key, empty) is empty
        with pytest.raises(KeyError):
            idx[key]
    # relation ids out of range must not alias another key: (0, 3) would encode like (1, 0)
    for key in [(0, 3), (0, -1), (-1, 2), (1, -3)]:
        assert key not in idx
    assert idx.lookup(torch.tensor([0, 0, 1]), torch.tensor([3, -1, 0])).count.tolist() == [0, 0, 1]
    for key in ["ab", (1,), (1, 2, 3), None, ("a", "b")]:
        assert key not in idx
    assert idx[(0, 2)].tolist() == [4] and idx[(torch.tensor(1), torch.tensor(0))].tolist() == [3]


def test_validation():
    with pytest.raises(ValueError, match=r"relation id 2 outside \[0, 2\); pass forward triples only"):
        FilterIndex.from_forward(torch.tensor([[0, 0, 1], [0, 2, 1], [0, 3, 1]]), 2)
    with pytest.raises(ValueError, match=r"relation id -1 outside \[0, 2\)"):
        build_filter_index([[[0, -1, 1]]], 2)
    with pytest.raises(ValueError, match=r"relation ids in \[0, 4\)"):
        FilterIndex.from_triples(torch.tensor([[0, 4, 1]]), 4)
    with pytest.raises(ValueError, match="entity ids >= 0"):
        FilterIndex.from_triples(torch.tensor([[-1, 0, 1]]), 4)


def test_equality():
    a = FilterIndex.from_triples(torch.tensor([[0, 0, 1], [0, 0, 2]]), 2)
    assert a == FilterIndex.from_triples(torch.tensor([[0, 0, 2], [0, 0, 1], [0, 0, 1]]), 2)
    assert a != FilterIndex.from_triples(torch.tensor([[0, 0, 1]]), 2)
    assert a != FilterIndex.from_triples(torch.tensor([[0, 0, 1], [0, 0, 2]]), 3)
    assert a != {(0, 0): torch.tensor([1, 2])}  # compare dict views explicitly: {k: v.tolist() ...}


# ---- exclusion masks -------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_exclusion_mask_equals_naive(seed):
    triples = random_triples(seed, e=15, r=4)
    idx = FilterIndex.from_forward(triples, 4)
    ref = naive_both_directions(triples, 4)
    g = torch.Generator().manual_seed(100 + seed)
    # queries: known keys (repeated), and random keys many of which are absent
    known = torch.tensor(list(ref))[torch.randint(0, len(ref), (60,), generator=g)]
    h = torch.cat([known[:, 0], torch.randint(0, 20, (60,), generator=g)])
    r = torch.cat([known[:, 1], torch.randint(0, 8, (60,), generator=g)])
    expected = naive_mask(ref, h, r, 15)
    assert torch.equal(idx.exclusion_mask(h, r, 15), expected)
    answers = idx.lookup(h, r)
    assert isinstance(answers, QueryAnswers) and len(answers) == 120
    for start, stop in [(0, 1), (5, 17), (59, 61), (100, 120), (7, 7)]:  # chunks as rank_all_entities slices them
        assert torch.equal(answers[start:stop].mask(15), expected[start:stop])
        rows, cols = answers[start:stop].pairs()
        assert torch.equal(torch.stack([rows, cols], 1), expected[start:stop].nonzero())  # sorted, each once


# ---- evaluation: FilterIndex and dict give the same numbers ---------------------------------------------
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_evaluate_queries_same_with_dict_and_filter_index(seed, chunk_size):
    e, num_r = 15, 4
    triples = random_triples(seed, e=e, r=num_r)
    idx = FilterIndex.from_forward(triples, num_r)
    g = torch.Generator().manual_seed(seed)
    queries = torch.cat([triples[:40], torch.stack([torch.randint(0, e, (30,), generator=g),
                                                    torch.randint(0, num_r, (30,), generator=g),
                                                    torch.randint(0, e, (30,), generator=g)], 1)])
    queries = torch.cat([queries, torch.stack([queries[:, 2], queries[:, 1] + num_r, queries[:, 0]], 1)])
    qv = torch.randint(-2, 3, (len(queries), 6), generator=g).float()  # small integers: exact, frequent ties
    ev = torch.randint(-2, 3, (e, 6), generator=g).float()
    as_dict = {k: torch.tensor(v) for k, v in naive_both_directions(triples, num_r).items()}
    m_idx, out_idx = evaluate_queries(qv, ev, queries, num_r, idx, chunk_size=chunk_size, topk=4)
    m_dict, out_dict = evaluate_queries(qv, ev, queries, num_r, as_dict, chunk_size=chunk_size, topk=4)
    assert m_idx == m_dict
    for kind in ("optimistic", "pessimistic", "realistic"):
        assert torch.equal(getattr(out_idx.ranks, kind), getattr(out_dict.ranks, kind))
    assert torch.equal(out_idx.topk_ids, out_dict.topk_ids) and torch.equal(out_idx.topk_scores, out_dict.topk_scores)
    # and filtering happened: without it some ranks are worse
    m_none, _ = evaluate_queries(qv, ev, queries, num_r, {}, chunk_size=chunk_size)
    assert m_none["mrr"] < m_idx["mrr"]


def test_evaluate_queries_rejects_an_index_for_other_relations():
    idx = FilterIndex.from_forward(torch.tensor([[0, 0, 1]]), 3)
    with pytest.raises(ValueError, match="covers 6 relation ids"):
        evaluate_queries(torch.eye(2), torch.eye(2), torch.tensor([[0, 0, 1], [1, 2, 0]]), 2, idx)


def test_on_a_device_copies_once_and_is_never_pickled():
    import pickle

    idx = FilterIndex.from_triples(torch.tensor([[0, 0, 1], [0, 0, 2], [1, 1, 0]]), 2)
    assert idx.on("cpu") is idx  # the CPU index is itself
    meta = idx.on("meta")  # a non-CPU device that exists on every machine
    assert meta is idx.on(torch.device("meta")) and meta.codes.device.type == "meta"
    assert meta.answers.device.type == "meta" and meta.num_relations_total == 2
    clone = pickle.loads(pickle.dumps(idx))
    assert "_on" not in clone.__dict__ and clone == idx
