import math

import pytest
import torch

from kgc_kd.eval.ranks import RankCounter, Ranks, rank_gold


def _as_tuple(r: Ranks, i: int = 0) -> tuple[float, float, float]:
    return (float(r.optimistic[i]), float(r.pessimistic[i]), float(r.realistic[i]))


def slow_ranks(scores: torch.Tensor, gold: torch.Tensor, exclude: torch.Tensor | None):
    """Reference: plain python loop over candidates."""
    out = []
    for i in range(scores.shape[0]):
        g = int(gold[i])
        gs = float(scores[i, g])
        if math.isnan(gs):
            gs = -math.inf
        above = ties_or_above = 0
        for j in range(scores.shape[1]):
            if j == g or (exclude is not None and bool(exclude[i, j])):
                continue
            s = float(scores[i, j])
            if math.isnan(s):
                continue
            above += s > gs
            ties_or_above += s >= gs
        out.append((1 + above, 1 + ties_or_above, (2 + above + ties_or_above) / 2))
    return out


def test_hand_computed_no_ties():
    scores = torch.tensor([[0.9, 0.5, 0.7, 0.1], [0.9, 0.5, 0.7, 0.1]])
    r = rank_gold(scores, torch.tensor([1, 0]))
    assert _as_tuple(r, 0) == (3.0, 3.0, 3.0)
    assert _as_tuple(r, 1) == (1.0, 1.0, 1.0)


def test_hand_computed_with_ties():
    scores = torch.tensor([[0.5, 0.5, 0.9, 0.5, 0.1]])
    # one strictly better (0.9), two tied with the gold
    assert _as_tuple(rank_gold(scores, torch.tensor([0]))) == (2.0, 4.0, 3.0)


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_all_equal_scores(n):
    scores = torch.full((3, n), 0.25)
    r = rank_gold(scores, torch.tensor([0, n - 1, n // 2]))
    assert torch.equal(r.optimistic, torch.ones(3))
    assert torch.equal(r.pessimistic, torch.full((3,), float(n)))
    assert torch.equal(r.realistic, torch.full((3,), (n + 1) / 2))
    assert r.realistic.dtype == torch.float32


def test_excluded_candidates_do_not_count():
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.1]])
    gold = torch.tensor([1])
    assert _as_tuple(rank_gold(scores, gold)) == (2.0, 3.0, 2.5)
    # excluding the better one and the tied one leaves the gold on top
    exclude = torch.tensor([[True, False, True, False]])
    assert _as_tuple(rank_gold(scores, gold, exclude)) == (1.0, 1.0, 1.0)
    # excluding only the tied one
    exclude = torch.tensor([[False, False, True, False]])
    assert _as_tuple(rank_gold(scores, gold, exclude)) == (2.0, 2.0, 2.0)


def test_nan_candidates_do_not_count():
    scores = torch.tensor([[float("nan"), 0.5, 0.3, float("nan")]])
    assert _as_tuple(rank_gold(scores, torch.tensor([1]))) == (1.0, 1.0, 1.0)
    assert _as_tuple(rank_gold(scores, torch.tensor([2]))) == (2.0, 2.0, 2.0)


def test_nan_gold_gets_worst_rank():
    scores = torch.tensor([[0.1, float("nan"), 0.3, float("nan")]])
    assert _as_tuple(rank_gold(scores, torch.tensor([1]))) == (3.0, 3.0, 3.0)


def test_exclude_at_gold_is_ignored():
    scores = torch.tensor([[0.9, 0.5, 0.7, 0.1]])
    gold = torch.tensor([1])
    only_gold = torch.tensor([[False, True, False, False]])
    assert _as_tuple(rank_gold(scores, gold, only_gold)) == (3.0, 3.0, 3.0)
    everything = torch.ones(1, 4, dtype=torch.bool)
    assert _as_tuple(rank_gold(scores, gold, everything)) == (1.0, 1.0, 1.0)


def test_does_not_modify_inputs_and_upcasts_low_precision():
    torch.manual_seed(0)
    base = torch.randint(0, 4, (6, 9)).float() / 4
    gold = torch.randint(0, 9, (6,))
    exclude = torch.rand(6, 9) < 0.3
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        scores = base.to(dtype)
        before = scores.clone()
        excl_before = exclude.clone()
        r = rank_gold(scores, gold, exclude)
        assert torch.equal(scores, before)
        assert torch.equal(exclude, excl_before)
        assert r.realistic.dtype == torch.float32
        ref = rank_gold(base, gold, exclude)
        assert torch.equal(r.optimistic, ref.optimistic)
        assert torch.equal(r.pessimistic, ref.pessimistic)


@pytest.mark.parametrize("seed", range(5))
def test_brute_force_many_ties(seed):
    g = torch.Generator().manual_seed(seed)
    q, e = 25, 13
    scores = torch.randint(0, 4, (q, e), generator=g).float()
    scores[torch.rand(q, e, generator=g) < 0.1] = float("nan")
    gold = torch.randint(0, e, (q,), generator=g)
    for exclude in (None, torch.rand(q, e, generator=g) < 0.3):
        r = rank_gold(scores, gold, exclude)
        ref = slow_ranks(scores, gold, exclude)
        assert [_as_tuple(r, i) for i in range(q)] == [tuple(map(float, x)) for x in ref]


def _pairs(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = mask.nonzero(as_tuple=True)
    return rows, cols


@pytest.mark.parametrize("seed", range(5))
def test_excluded_pairs_equal_the_mask(seed):
    g = torch.Generator().manual_seed(seed)
    q, e = 25, 13
    scores = torch.randint(0, 4, (q, e), generator=g).float()
    scores[torch.rand(q, e, generator=g) < 0.1] = float("nan")  # NaN candidates and NaN golds among them
    scores[torch.rand(q, e, generator=g) < 0.1] = float("-inf")
    gold = torch.randint(0, e, (q,), generator=g)
    exclude = torch.rand(q, e, generator=g) < 0.3
    exclude[::3, :] |= torch.nn.functional.one_hot(gold[::3], e).bool()  # the gold among its known answers
    ref = slow_ranks(scores, gold, exclude)
    ws = torch.full((q, e), 5.0)
    for r in (rank_gold(scores, gold, exclude), rank_gold(scores, gold, _pairs(exclude), workspace=ws)):
        assert [_as_tuple(r, i) for i in range(q)] == [tuple(map(float, x)) for x in ref]


def test_excluded_pairs_hand_computed():
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.1], [0.9, 0.5, 0.5, 0.1]])
    gold = torch.tensor([1, 3])
    # row 0: exclude the better one and the gold itself; row 1: exclude the tied pair (not ties of row 1's gold)
    pairs = (torch.tensor([0, 0, 1]), torch.tensor([0, 1, 2]))
    r = rank_gold(scores, gold, pairs)
    assert _as_tuple(r, 0) == (1.0, 2.0, 1.5)
    assert _as_tuple(r, 1) == (3.0, 3.0, 3.0)
    empty = torch.empty(0, dtype=torch.long)
    assert _as_tuple(rank_gold(scores, gold, (empty, empty)), 1) == (4.0, 4.0, 4.0)


@pytest.mark.parametrize("seed", range(3))
def test_rank_counter_in_chunks_equals_the_reference(seed):
    g = torch.Generator().manual_seed(seed)
    q, e = 23, 11
    scores = torch.randint(0, 4, (q, e), generator=g).float()
    scores[torch.rand(q, e, generator=g) < 0.1] = float("nan")
    gold = torch.randint(0, e, (q,), generator=g)
    exclude = torch.rand(q, e, generator=g) < 0.3
    rows, cols = exclude.nonzero(as_tuple=True)
    shuffle = torch.randperm(len(rows), generator=g)  # pairs in any order
    counter = RankCounter(gold, e, rows[shuffle], cols[shuffle])
    for start, stop in [(10, 23), (0, 4), (4, 10)]:  # chunks in any order; a non-contiguous block
        counter.add(start, scores[start:stop].T.contiguous().T)
    r = counter.ranks()
    assert [_as_tuple(r, i) for i in range(q)] == [tuple(map(float, x)) for x in slow_ranks(scores, gold, exclude)]


def test_rank_counter_checks():
    counter = RankCounter(torch.tensor([0, 1, 2]), 4)
    counter.add(0, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="1 of 3 queries got no score rows"):
        counter.ranks()
    with pytest.raises(ValueError, match=r"rows \[2, 4\) outside the 3 queries"):
        counter.add(2, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"scores must be \(n, 4\)"):
        counter.add(2, torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"gold ids must lie in \[0, 4\)"):
        RankCounter(torch.tensor([4]), 4)


def test_input_validation():
    with pytest.raises(ValueError):
        rank_gold(torch.zeros(3), torch.tensor([0]))
    with pytest.raises(ValueError):
        rank_gold(torch.zeros(2, 3), torch.tensor([0]))
    with pytest.raises(ValueError):
        rank_gold(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError):
        rank_gold(torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="differ in length"):
        rank_gold(torch.zeros(2, 3), torch.tensor([0, 1]), (torch.tensor([0, 1]), torch.tensor([2])))
    with pytest.raises(ValueError, match=r"\[0, 2\) x \[0, 3\)"):
        rank_gold(torch.zeros(2, 3), torch.tensor([0, 1]), (torch.tensor([0]), torch.tensor([3])))
    with pytest.raises(ValueError, match="float32 tensor of shape"):
        rank_gold(torch.zeros(2, 3), torch.tensor([0, 1]), workspace=torch.zeros(2, 3, dtype=torch.bool))


def test_ranks_cat_and_select():
    a = rank_gold(torch.tensor([[0.5, 0.5]]), torch.tensor([0]))
    b = rank_gold(torch.tensor([[0.1, 0.9], [0.9, 0.1]]), torch.tensor([0, 0]))
    c = Ranks.cat([a, b])
    assert len(c) == 3
    assert c.optimistic.tolist() == [1.0, 2.0, 1.0]
    assert c.pessimistic.tolist() == [2.0, 2.0, 1.0]
    assert c.realistic.tolist() == [1.5, 2.0, 1.0]
    s = c.select(torch.tensor([False, True, True]))
    assert s.realistic.tolist() == [2.0, 1.0]
    assert len(Ranks.cat([])) == 0
    assert c.get("pessimistic") is c.pessimistic
    with pytest.raises(ValueError):
        c.get("median")


# --- PyKEEN as independent reference -----------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_matches_pykeen_ranks_from_scores(seed):
    pytest.importorskip("pykeen")
    from pykeen.evaluation.ranks import Ranks as PKRanks

    g = torch.Generator().manual_seed(seed)
    q, e = 40, 30
    scores = torch.randint(0, 5, (q, e), generator=g).float()
    gold = torch.randint(0, e, (q,), generator=g)
    exclude = torch.rand(q, e, generator=g) < 0.25
    exclude[torch.arange(q), gold] = False

    # PyKEEN's filtered protocol: filtered candidates set to NaN, gold kept.
    pk_scores = scores.masked_fill(exclude, float("nan"))
    true = scores[torch.arange(q), gold].unsqueeze(1)
    pk = PKRanks.from_scores(true_score=true, all_scores=pk_scores)

    for ours in (rank_gold(scores, gold, exclude), rank_gold(pk_scores, gold)):
        assert torch.equal(ours.optimistic, pk.optimistic.float())
        assert torch.equal(ours.pessimistic, pk.pessimistic.float())
        assert torch.equal(ours.realistic, pk.realistic.float())
