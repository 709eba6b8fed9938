import math

import pytest
import torch

from kgc_kd.eval.evaluator import build_filter_index, evaluate_queries, rank_all_entities
from kgc_kd.eval.filter import FilterIndex
from kgc_kd.eval.rerank import NeighbourGraph, Neighbourhoods


def _score_queries(rows):
    """Query vectors whose scores against an identity entity matrix are exactly `rows`."""
    q = torch.tensor(rows, dtype=torch.float32)
    return q, torch.eye(q.shape[1])


def reference(query_vecs, entity_vecs, gold, known, boost=None):
    """Unchunked brute force with python loops, independent of kgc_kd.eval."""
    scores = (query_vecs.double() @ entity_vecs.double().T).float()
    if boost is not None:
        scores = scores + boost
    out = []
    for i in range(scores.shape[0]):
        g = int(gold[i])
        known_i = {int(x) for x in known[i]} - {g}
        gs = float(scores[i, g])
        above = tie = 0
        for j in range(scores.shape[1]):
            if j == g or j in known_i:
                continue
            s = float(scores[i, j])
            above += s > gs
            tie += s >= gs
        out.append((1.0 + above, 1.0 + tie, 1.0 + (above + tie) / 2))
    return out


def _random_problem(seed, q=17, e=23, d=6):
    g = torch.Generator().manual_seed(seed)
    # small integer vectors: dot products are exact and tie often
    query_vecs = torch.randint(-2, 3, (q, d), generator=g).float()
    entity_vecs = torch.randint(-2, 3, (e, d), generator=g).float()
    gold = torch.randint(0, e, (q,), generator=g)
    known = []
    for i in range(q):
        ids = torch.nonzero(torch.rand(e, generator=g) < 0.2).flatten()
        if i % 2 == 0:
            ids = torch.cat([ids, gold[i : i + 1]])  # known lists usually contain the gold
        known.append(ids if i % 3 else ids.tolist())
    return query_vecs, entity_vecs, gold, known


def _tuples(ranks):
    return list(zip(ranks.optimistic.tolist(), ranks.pessimistic.tolist(), ranks.realistic.tolist()))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_chunked_matches_brute_force(seed, chunk_size):
    qv, ev, gold, known = _random_problem(seed)
    out = rank_all_entities(qv, ev, gold, known, chunk_size=chunk_size)
    assert _tuples(out.ranks) == reference(qv, ev, gold, known)
    assert out.topk_ids is None and out.topk_scores is None


@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_chunked_with_rerank_matches_brute_force(chunk_size):
    qv, ev, gold, known = _random_problem(7)
    num_e = ev.shape[0]
    g = torch.Generator().manual_seed(1)
    train = torch.stack(
        [torch.randint(0, num_e, (30,), generator=g), torch.zeros(30, dtype=torch.long),
         torch.randint(0, num_e, (30,), generator=g)], dim=1
    )
    heads = torch.randint(0, num_e, (qv.shape[0],), generator=g)
    # reachable within 2 hops (start included) via (I + A)^2 > 0
    a = torch.eye(num_e)
    a[train[:, 0], train[:, 2]] = 1
    a[train[:, 2], train[:, 0]] = 1
    near = (a @ a) > 0
    boost = near[heads].float() * 1.0
    out = rank_all_entities(
        qv, ev, gold, known, heads=heads, adjacency=NeighbourGraph.from_triples(train, num_e),
        rerank_hops=2, rerank_weight=1.0, chunk_size=chunk_size,
    )
    ref = reference(qv, ev, gold, known, boost=boost)
    assert _tuples(out.ranks) == ref
    assert ref != reference(qv, ev, gold, known)  # the boost must matter in this case


def _simkgc_bfs(adj, start, hops, max_nodes):
    """SimKGC's per-head BFS (the pre-tensor implementation; see tests/test_rerank.py)."""
    seen, frontier = {start}, [start]
    for _ in range(hops):
        nxt = []
        for node in frontier:
            for nb in adj[node]:
                if nb not in seen:
                    seen.add(nb)
                    nxt.append(nb)
                    if len(seen) > max_nodes:
                        return []
        frontier = nxt
    return sorted(seen)


def _random_graph_problem(seed, q=23, e=29):
    qv, ev, gold, known = _random_problem(seed, q=q, e=e)
    g = torch.Generator().manual_seed(50 + seed)
    m = 40
    train = torch.stack([torch.randint(0, e, (m,), generator=g), torch.zeros(m, dtype=torch.long),
                         torch.randint(0, e, (m,), generator=g)], dim=1)
    adj = [set() for _ in range(e)]
    for h, _, t in train.tolist():
        adj[h].add(t)
        adj[t].add(h)
    heads = torch.randint(0, e, (q,), generator=g)
    return qv, ev, gold, known, train, adj, heads


@pytest.mark.parametrize("seed", range(4))
def test_rerank_ranks_equal_the_python_bfs_reference(seed):
    qv, ev, gold, known, train, adj, heads = _random_graph_problem(seed)
    num_q, num_e = qv.shape[0], ev.shape[0]
    graph = NeighbourGraph.from_triples(train, num_e)
    weight = 1.0
    seen = set()
    for hops in range(4):
        for max_nodes in (2, 6, 100_000):  # small caps cut off part of the neighbourhoods
            boost = torch.zeros(num_q, num_e)
            if hops > 0:  # hops=0 re-ranks nothing (SimKGC's n_hop=0 would still boost the head)
                for i, h in enumerate(heads.tolist()):
                    boost[i, _simkgc_bfs(adj, h, hops, max_nodes)] = weight
            out = rank_all_entities(qv, ev, gold, known, heads=heads, rerank_hops=hops, rerank_weight=weight,
                                    adjacency=graph.neighbourhoods(heads, hops, max_nodes), chunk_size=5, topk=4)
            ref = reference(qv, ev, gold, known, boost=boost)
            assert _tuples(out.ranks) == ref, (hops, max_nodes)
            seen.add(tuple(ref))
            # top-k: the best boosted, filtered scores, each id carrying its own score
            scores = qv @ ev.T + boost
            for i in range(num_q):
                bad = {int(x) for x in known[i]} - {int(gold[i])}
                best = sorted((float(scores[i, j]) for j in range(num_e) if j not in bad), reverse=True)[:4]
                assert out.topk_scores[i].tolist() == best
                assert [float(scores[i, j]) for j in out.topk_ids[i].tolist()] == best
    assert len(seen) > 3  # hops and cut-offs changed the ranks


def test_rerank_same_with_neighbourhoods_graph_or_lists():
    qv, ev, gold, known, train, adj, heads = _random_graph_problem(9)
    graph = NeighbourGraph.from_triples(train, ev.shape[0])
    kw = dict(heads=heads, rerank_hops=2, rerank_weight=0.5, chunk_size=4, topk=3)
    outs = [rank_all_entities(qv, ev, gold, known, adjacency=a, **kw)
            for a in (graph.neighbourhoods(heads, 2), graph, [sorted(n) for n in adj],
                      graph.neighbourhoods(heads[:3], 2))]  # the last one searches the other heads on demand
    for o in outs[1:]:
        assert _tuples(o.ranks) == _tuples(outs[0].ranks)
        assert torch.equal(o.topk_ids, outs[0].topk_ids) and torch.equal(o.topk_scores, outs[0].topk_scores)


def test_rerank_neighbourhoods_must_match_hops_and_entities():
    qv, ev, gold, known, train, adj, heads = _random_graph_problem(1)
    nbrs = NeighbourGraph.from_triples(train, ev.shape[0]).neighbourhoods(heads, 2)
    with pytest.raises(ValueError, match="built for 2 hops, the re-ranking asks 3"):
        rank_all_entities(qv, ev, gold, known, heads=heads, adjacency=nbrs, rerank_hops=3, rerank_weight=0.1)
    small = NeighbourGraph.from_triples(train, ev.shape[0] + 1)
    with pytest.raises(ValueError, match=f"graph has {ev.shape[0] + 1} entities"):
        rank_all_entities(qv, ev, gold, known, heads=heads, adjacency=small, rerank_hops=2, rerank_weight=0.1)


def test_filtering_hand_computed():
    qv, ev = _score_queries([[0.5, 0.4, 0.3, 0.2], [0.5, 0.4, 0.3, 0.2], [0.5, 0.4, 0.3, 0.2]])
    gold = torch.tensor([2, 2, 2])
    known = [[], [0, 2], torch.tensor([0, 1, 2, 3])]
    out = rank_all_entities(qv, ev, gold, known)
    assert out.ranks.realistic.tolist() == [3.0, 2.0, 1.0]


def test_rerank_happens_before_filtering():
    qv, ev = _score_queries([[0.5, 0.4, 0.3, 0.2]] * 2)
    adj = [[], [], [3], [2]]  # edge 2 - 3
    # query 0: gold 2 boosted above everything except filtered-out candidate 0
    # query 1: known answer 3 boosted above the gold but it is filtered anyway
    out = rank_all_entities(
        qv, ev, torch.tensor([2, 1]), [[0, 2], [3]], heads=torch.tensor([3, 2]),
        adjacency=adj, rerank_hops=1, rerank_weight=0.25, topk=4,
    )
    # scores after boost: [0.5, 0.4, 0.55, 0.45] for both rows
    assert out.ranks.realistic.tolist() == [1.0, 3.0]
    assert out.topk_ids.tolist() == [[2, 3, 1, -1], [2, 0, 1, -1]]
    assert torch.allclose(out.topk_scores[:, :3], torch.tensor([[0.55, 0.45, 0.4], [0.55, 0.5, 0.4]]))


def test_rerank_requires_heads_and_adjacency():
    qv, ev = _score_queries([[0.5, 0.4]])
    with pytest.raises(ValueError):
        rank_all_entities(qv, ev, torch.tensor([0]), [[]], rerank_hops=1, rerank_weight=0.1)
    # inactive rerank needs neither
    rank_all_entities(qv, ev, torch.tensor([0]), [[]], rerank_hops=0, rerank_weight=0.1)


def test_topk_excludes_known_but_keeps_gold():
    qv, ev = _score_queries([[0.9, 0.8, 0.7, 0.6, 0.5], [0.9, 0.8, 0.7, 0.6, 0.5]])
    gold = torch.tensor([3, 0])
    known = [[0, 3, 2], [0]]
    out = rank_all_entities(qv, ev, gold, known, topk=3, chunk_size=1)
    assert out.topk_ids.tolist() == [[1, 3, 4], [0, 1, 2]]
    assert torch.allclose(out.topk_scores, torch.tensor([[0.8, 0.6, 0.5], [0.9, 0.8, 0.7]]))
    assert out.ranks.realistic.tolist() == [2.0, 1.0]

    # k larger than the number of surviving candidates: padded with -1 / -inf
    out = rank_all_entities(qv, ev, gold, known, topk=10)
    assert out.topk_ids.tolist()[0] == [1, 3, 4, -1, -1]
    assert out.topk_scores[0, 3:].tolist() == [-math.inf, -math.inf]


def test_topk_chunked_matches_unchunked():
    torch.manual_seed(3)
    qv = torch.nn.functional.normalize(torch.randn(11, 8), dim=1)
    ev = torch.nn.functional.normalize(torch.randn(40, 8), dim=1)
    gold = torch.randint(0, 40, (11,))
    known = [torch.randint(0, 40, (5,)) for _ in range(11)]
    full = rank_all_entities(qv, ev, gold, known, topk=5, chunk_size=1000)
    scores = qv @ ev.T
    for i in range(11):
        bad = set(known[i].tolist()) - {int(gold[i])}
        expect = [j for j in scores[i].argsort(descending=True).tolist() if j not in bad][:5]
        assert full.topk_ids[i].tolist() == expect
    for cs in (1, 4):
        part = rank_all_entities(qv, ev, gold, known, topk=5, chunk_size=cs)
        assert torch.equal(part.topk_ids, full.topk_ids)
        assert torch.allclose(part.topk_scores, full.topk_scores)
        assert torch.equal(part.ranks.realistic, full.ranks.realistic)


def test_bf16_inputs_computed_in_float32():
    qv, ev, gold, known = _random_problem(11)
    out = rank_all_entities(qv.bfloat16(), ev.bfloat16(), gold, known, chunk_size=4, topk=2)
    assert _tuples(out.ranks) == reference(qv, ev, gold, known)  # small ints are exact in bf16
    assert out.topk_scores.dtype == torch.float32


def test_input_validation():
    qv, ev = _score_queries([[0.5, 0.4]])
    with pytest.raises(ValueError):
        rank_all_entities(qv, ev, torch.tensor([0, 1]), [[]])
    with pytest.raises(ValueError):
        rank_all_entities(qv, ev, torch.tensor([0]), [[]], chunk_size=0)
    with pytest.raises(ValueError):
        rank_all_entities(qv, torch.eye(3), torch.tensor([0]), [[]])


# --- evaluate_queries ---------------------------------------------------------

R = 2  # relations; ids >= R are inverses


def test_build_filter_index_both_directions():
    idx = build_filter_index([torch.tensor([[0, 0, 1], [0, 0, 2]]), [[3, 1, 1]]], num_relations=R)
    assert isinstance(idx, FilterIndex) and len(idx) == 5
    assert idx[(0, 0)].tolist() == [1, 2]
    assert idx[(1, 0 + R)].tolist() == [0]
    assert idx[(2, 0 + R)].tolist() == [0]
    assert idx[(3, 1)].tolist() == [1]
    assert idx[(1, 1 + R)].tolist() == [3]
    with pytest.raises(ValueError, match=rf"relation id {R} outside \[0, {R}\)"):
        build_filter_index([[[0, R, 1]]], num_relations=R)


def test_evaluate_queries_splits_directions():
    # 4 entities; scores given directly per query
    qv, ev = _score_queries(
        [
            [0.1, 0.9, 0.8, 0.2],  # (0, r0, 2) tail query, 1 is another known tail -> rank 1
            [0.9, 0.1, 0.8, 0.7],  # (1, r1, 3) tail query, unfiltered -> rank 3
            [0.4, 0.3, 0.2, 0.9],  # (2, r0+R, 0) head query -> rank 2
            [0.5, 0.5, 0.5, 0.5],  # (3, r0+R, 1) head query, all tied, key missing -> 2.5
        ]
    )
    triples = torch.tensor([[0, 0, 2], [1, 1, 3], [2, 0 + R, 0], [3, 0 + R, 1]])
    filter_index = build_filter_index([torch.tensor([[0, 0, 1], [0, 0, 2], [1, 1, 3]])], num_relations=R)
    assert (3, 0 + R) not in filter_index
    metrics, out = evaluate_queries(qv, ev, triples, R, filter_index, chunk_size=3, topk=2)
    assert out.ranks.realistic.tolist() == [1.0, 3.0, 2.0, 2.5]
    assert metrics["tail/count"] == 2 and metrics["head/count"] == 2
    assert metrics["tail/mrr"] == pytest.approx((1 + 1 / 3) / 2)
    assert metrics["head/mrr"] == pytest.approx((1 / 2 + 1 / 2.5) / 2)
    assert metrics["mrr"] == pytest.approx(((1 + 1 / 3) / 2 + (1 / 2 + 1 / 2.5) / 2) / 2)
    assert metrics["tail/hits@1"] == 0.5 and metrics["head/hits@1"] == 0.0
    assert metrics["hits@1"] == pytest.approx(0.25)
    assert metrics["tail/mr"] == 2.0 and metrics["head/mr"] == 2.25
    assert out.topk_ids[0].tolist() == [2, 3]  # known tail 1 removed


def test_evaluate_queries_rejects_bad_relations():
    qv, ev = _score_queries([[0.5, 0.4]])
    with pytest.raises(ValueError):
        evaluate_queries(qv, ev, torch.tensor([[0, 2 * R, 1]]), R, {})
    with pytest.raises(ValueError):
        evaluate_queries(qv, ev, torch.tensor([[0, 0, 1], [0, 0, 1]]), R, {})


def test_evaluate_queries_matches_pykeen_rank_based_evaluator():
    pytest.importorskip("pykeen")
    from pykeen.evaluation import RankBasedEvaluator
    from pykeen.evaluation.evaluator import create_sparse_positive_filter_, filter_scores_

    g = torch.Generator().manual_seed(0)
    num_e, num_r, dim = 15, 3, 4

    def rand_triples(n):
        return torch.stack(
            [torch.randint(0, num_e, (n,), generator=g), torch.randint(0, num_r, (n,), generator=g),
             torch.randint(0, num_e, (n,), generator=g)], dim=1
        )

    train, test = rand_triples(60), rand_triples(20)
    all_pos = torch.cat([train, test]).unique(dim=0)
    ent = torch.randint(-2, 3, (num_e, dim), generator=g).float()
    q_tail = torch.randint(-2, 3, (len(test), dim), generator=g).float()
    q_head = torch.randint(-2, 3, (len(test), dim), generator=g).float()

    # ours: forward queries then inverse queries
    queries = torch.cat([test, torch.stack([test[:, 2], test[:, 1] + num_r, test[:, 0]], dim=1)])
    ours, _ = evaluate_queries(
        torch.cat([q_tail, q_head]), ent, queries, num_r, build_filter_index([train, test], num_r), chunk_size=7
    )

    # PyKEEN: same scores, its own filtering and metric code
    evaluator = RankBasedEvaluator(filtered=True)
    rows = torch.arange(len(test))
    for target, col, qv in (("tail", 2, q_tail), ("head", 0, q_head)):
        scores = qv @ ent.T
        pos_filter, _ = create_sparse_positive_filter_(hrt_batch=test, all_pos_triples=all_pos, filter_col=col)
        true = scores[rows, test[:, col]].clone()
        scores = filter_scores_(scores, pos_filter)
        scores[rows, test[:, col]] = true
        evaluator.process_scores_(hrt_batch=test, target=target, scores=scores, true_scores=true.unsqueeze(1))
    pk = evaluator.finalize()

    names = {"mrr": "inverse_harmonic_mean_rank", "mr": "arithmetic_mean_rank",
             "hits@1": "hits_at_1", "hits@3": "hits_at_3", "hits@10": "hits_at_10"}
    for ours_name, pk_name in names.items():
        for side in ("tail", "head"):
            assert ours[f"{side}/{ours_name}"] == pytest.approx(pk.get_metric(f"{side}.realistic.{pk_name}"), rel=1e-6)
        # equal head/tail counts: PyKEEN's micro "both" equals our macro mean
        assert ours[ours_name] == pytest.approx(pk.get_metric(f"both.realistic.{pk_name}"), rel=1e-6)


def test_evaluate_queries_reranks_around_query_head():
    # train graph 0 - 3 - 2; query (0, r0, ?) with gold 2, one hop
    qv, ev = _score_queries([[0.1, 0.5, 0.4, 0.2]])
    triples = torch.tensor([[0, 0, 2]])
    adj = NeighbourGraph.from_triples(torch.tensor([[0, 1, 3], [3, 0, 2]]), 4)
    _, plain = evaluate_queries(qv, ev, triples, R, {})
    assert plain.ranks.realistic.tolist() == [2.0]
    # boost {0, 3} (around the query head, not the gold): [0.35, 0.5, 0.4, 0.45]
    metrics, out = evaluate_queries(qv, ev, triples, R, {}, adjacency=adj, rerank_hops=1, rerank_weight=0.25)
    assert out.ranks.realistic.tolist() == [3.0]
    assert metrics["mrr"] == pytest.approx(1 / 3)
    # two hops reach the gold too: [0.35, 0.5, 0.65, 0.45]
    _, out = evaluate_queries(qv, ev, triples, R, {}, adjacency=adj, rerank_hops=2, rerank_weight=0.25)
    assert out.ranks.realistic.tolist() == [1.0]


# --- the memory-bounded ranking against today's path (before eval.memory_budget_gb) -----------------------
from kgc_kd.eval.evaluator import _known_pairs  # noqa: E402
from kgc_kd.eval.memory_plan import (  # noqa: E402
    UPCAST_BLOCK_ROWS,
    chunk_fixed_bytes,
    chunk_row_bytes,
    query_chunk_rows,
)
from kgc_kd.eval.ranks import RankCounter  # noqa: E402


def todays_rank_all_entities(query_vecs, entity_vecs, gold, known, *, heads=None, nbrs=None, weight=0.0,
                             chunk_size=256, topk=0):
    """rank_all_entities as it was before the memory plan: the whole entity matrix upcast to float32 once,
    `chunk_size` queries at a time, fresh buffers sized by chunk_size alone."""
    num_q, num_e = query_vecs.shape[0], entity_vecs.shape[0]
    rows_max = min(chunk_size, num_q)
    score_buf = torch.empty(rows_max, num_e)
    compare_buf = torch.empty(rows_max, num_e)
    counter = RankCounter(gold, num_e, *_known_pairs(known, torch.device("cpu")))
    if nbrs is not None:
        slots = nbrs.checked_slots(heads)
        table = nbrs.table(float(weight), torch.float32)
        bonus_buf = torch.empty(rows_max * nbrs.unpacked_width)
    k = min(topk, num_e)
    ids, tops = [], []
    ent = entity_vecs.float()
    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        scores = torch.mm(query_vecs[start:stop].float(), ent.T, out=score_buf[: stop - start])
        if nbrs is not None:
            scores.add_(nbrs.unpack(slots[start:stop], table, out=bonus_buf))
        counter.add(start, scores, compare_buf[: stop - start])
        if k > 0:
            rows, cols = counter.excluded(start, stop)
            scores[rows, cols] = float("-inf")
            top_s, top_i = scores.nan_to_num_(nan=float("-inf")).topk(k, dim=1)
            ids.append(top_i.masked_fill(torch.isneginf(top_s), -1))
            tops.append(top_s)
    return counter.ranks(), (torch.cat(ids) if k else None), (torch.cat(tops) if k else None)


def _tied_problem(seed, num_e=300, num_q=41, dim=12, num_rel=3):
    """Random unit vectors with exact ties (entities 50-99 copy 0-49; some queries copy an entity), a filter
    with a hub (entity 0 is the tail of a fifth of the triples), and a train graph with a hub for the
    re-ranking."""
    g = torch.Generator().manual_seed(seed)
    ent = torch.nn.functional.normalize(torch.randn(num_e, dim, generator=g), dim=1)
    ent[50:100] = ent[:50]
    qv = torch.nn.functional.normalize(torch.randn(num_q, dim, generator=g), dim=1)
    qv[::5] = ent[torch.randint(0, num_e, (len(qv[::5]),), generator=g)]
    m = 4 * num_e
    tails = torch.where(torch.rand(m, generator=g) < 0.2, 0, torch.randint(0, num_e, (m,), generator=g))
    train = torch.stack([torch.randint(0, num_e, (m,), generator=g), torch.randint(0, num_rel, (m,), generator=g),
                         tails], dim=1)
    queries = train[torch.randperm(m, generator=g)[:num_q]]
    queries[1::2] = torch.stack([queries[1::2, 2], queries[1::2, 1] + num_rel, queries[1::2, 0]], dim=1)
    known = FilterIndex.from_forward(train, num_rel).lookup(queries[:, 0], queries[:, 1])
    return qv, ent, queries, known, train


def _same(new, old):
    ranks, ids, scores = old
    for name in ("optimistic", "pessimistic", "realistic"):
        assert torch.equal(getattr(new.ranks, name), getattr(ranks, name)), name
    if ids is None:
        assert new.topk_ids is None
    else:
        assert torch.equal(new.topk_ids, ids) and torch.equal(new.topk_scores, scores)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rerank", [False, True])
@pytest.mark.parametrize("budget_rows", [None, 1, 3, 7, 0])
def test_budgeted_ranking_equals_todays(seed, dtype, rerank, budget_rows):
    """Budgets of 1, 3 and 7 rows force many chunks (0: a budget below one row still scores one at a time);
    ranks and top-k equal today's path on the same stored vectors, bf16 included, with today's chunk_size set
    to the rows the budget allows (a float32 product of 1 row and of 16 may round differently in the last bit,
    today as before: the chunk a budget picks is what `eval.chunk_size` picked)."""
    qv, ent, queries, known, train = _tied_problem(seed)
    ent, qv = ent.to(dtype), qv.to(dtype)
    num_e, dim = ent.shape
    heads = queries[:, 0]
    nbrs = NeighbourGraph.from_triples(train, num_e).neighbourhoods(heads, 2, max_nodes=120) if rerank else None
    budget, expect = None, 16
    if budget_rows is not None:
        row = chunk_row_bytes(num_e, dim, rerank=rerank)
        budget = chunk_fixed_bytes(num_e, dim, dtype_bytes=ent.element_size()) + max(budget_rows * row, 1)
        expect = max(budget_rows, 1)
        assert query_chunk_rows(num_e, dim, len(qv), chunk_size=16, memory_budget=budget, rerank=rerank,
                                dtype_bytes=ent.element_size()) == expect
    new = rank_all_entities(qv, ent, queries[:, 2], known, heads=heads, adjacency=nbrs, rerank_hops=2 if rerank else 0,
                            rerank_weight=0.05 if rerank else 0.0, chunk_size=16, memory_budget=budget, topk=5)
    old = todays_rank_all_entities(qv, ent, queries[:, 2], known, heads=heads, nbrs=nbrs, weight=0.05,
                                   chunk_size=expect, topk=5)
    _same(new, old)
    unbounded = todays_rank_all_entities(qv, ent, queries[:, 2], known, heads=heads, nbrs=nbrs, weight=0.05,
                                         chunk_size=16, topk=5)
    assert _tuples(new.ranks) == _tuples(unbounded[0]) and torch.equal(new.topk_ids, unbounded[1])
    assert bool((new.ranks.pessimistic > new.ranks.optimistic).any())  # the ties took part


def test_bf16_matrix_larger_than_one_upcast_block_equals_todays():
    """More entities than one float32 block: the matrix is upcast block by block (ties across the block
    boundary included); the scores, so ranks and top-k, equal those of the matrix upcast whole."""
    g = torch.Generator().manual_seed(5)
    num_e, dim, num_q = 2 * UPCAST_BLOCK_ROWS + 1000, 8, 23
    ent = torch.nn.functional.normalize(torch.randn(num_e, dim, generator=g), dim=1).bfloat16()
    ent[UPCAST_BLOCK_ROWS: UPCAST_BLOCK_ROWS + 500] = ent[:500]  # copies in the next block
    qv = ent[torch.randint(0, 500, (num_q,), generator=g)].float()
    gold = torch.randint(0, num_e, (num_q,), generator=g)
    known = [torch.randint(0, num_e, (4,), generator=g) for _ in range(num_q)]
    new = rank_all_entities(qv, ent, gold, known, chunk_size=5, topk=4)
    _same(new, todays_rank_all_entities(qv, ent, gold, known, chunk_size=5, topk=4))
    assert new.topk_scores[:, 0].eq(new.topk_scores[:, 1]).all()  # every query's best entity has its copy


def test_evaluate_queries_with_a_budget_equals_without():
    qv, ent, queries, _, train = _tied_problem(9)
    filt = FilterIndex.from_forward(train, 3)
    m0, o0 = evaluate_queries(qv, ent, queries, 3, filt, topk=3)
    two_rows = 2 * chunk_row_bytes(300, 12, rerank=False)
    m1, o1 = evaluate_queries(qv, ent, queries, 3, filt, topk=3, memory_budget=two_rows)
    assert m0 == m1 and torch.equal(o0.topk_ids, o1.topk_ids) and _tuples(o0.ranks) == _tuples(o1.ranks)
    assert torch.allclose(o0.topk_scores, o1.topk_scores, rtol=0, atol=1e-6)  # chunks of 2 rows, not 41


def test_no_queries_with_topk():
    out = rank_all_entities(torch.empty(0, 4), torch.eye(4), torch.empty(0, dtype=torch.long), [], topk=3)
    assert len(out.ranks) == 0 and out.topk_ids.shape == (0, 3) and out.topk_scores.shape == (0, 3)
