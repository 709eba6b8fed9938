"""kgc_kd.data.negatives: membership and SimKGC's false-negative masks against brute-force references."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
import torch

from kgc_kd.data.kg import KG
from kgc_kd.data.negatives import KnownTriples, false_negative_mask, in_batch_mask


def train_hr2tails_ref(kg: KG) -> dict[tuple[int, int], set[int]]:
    """SimKGC's train_triplet_dict, built here with plain loops: train + inverse triples."""
    acc: dict[tuple[int, int], set[int]] = defaultdict(set)
    R = kg.num_relations
    for h, r, t in kg.train.tolist():
        acc[(h, r)].add(t)
        acc[(t, r + R)].add(h)
    return acc


def brute_in_batch(triples: list[tuple[int, int, int]], hr2tails) -> tuple[list[list[bool]], list[bool]]:
    fn = [[i != j and (tj == ti or tj in hr2tails.get((hi, ri), set())) for j, (_, _, tj) in enumerate(triples)]
          for i, (hi, ri, ti) in enumerate(triples)]
    self_fn = [h in hr2tails.get((h, r), set()) for h, r, _ in triples]
    return fn, self_fn


def random_kg(seed: int, n: int = 8, r: int = 2, m: int = 40) -> KG:
    """Random triples (self loops and many tails per (h, r) allowed), unlike the permutation-based synthetic KG."""
    g = torch.Generator().manual_seed(seed)
    t = torch.unique(torch.stack([torch.randint(0, n, (m,), generator=g), torch.randint(0, r, (m,), generator=g),
                                  torch.randint(0, n, (m,), generator=g)], 1), dim=0)
    t = t[torch.randperm(len(t), generator=g)]
    return KG(name="rand", entity_ids=[f"e{i}" for i in range(n)], entity_names=[f"n{i}" for i in range(n)],
              entity_descs=[""] * n, relation_ids=[f"r{k}" for k in range(r)], relation_texts=[f"t{k}" for k in range(r)],
              train=t[6:], valid=t[:3], test=t[3:6])


def hand_kg() -> KG:
    # 6 entities, 2 relations; (2, 0, 2) is a self loop, (0, 0, *) has several train tails
    train = [(0, 0, 1), (0, 0, 2), (0, 0, 3), (2, 0, 2), (4, 1, 0), (5, 1, 0), (1, 1, 4)]
    return KG(name="h", entity_ids=[f"e{i}" for i in range(6)], entity_names=[f"n{i}" for i in range(6)],
              entity_descs=[""] * 6, relation_ids=["r0", "r1"], relation_texts=["a", "b"],
              train=torch.tensor(train), valid=torch.tensor([[3, 1, 5]]), test=torch.tensor([[5, 0, 4]]))


# ---- KnownTriples ------------------------------------------------------------------------------------------
def test_contains_vs_python_set():
    g = torch.Generator().manual_seed(0)
    n, r = 17, 6
    known = torch.stack([torch.randint(0, n, (300,), generator=g), torch.randint(0, r, (300,), generator=g),
                         torch.randint(0, n, (300,), generator=g)], 1)
    kt = KnownTriples(known, n, r)
    ref = {tuple(x) for x in known.tolist()}
    queries = torch.cat([known[:100], torch.stack([torch.randint(0, n, (2000,), generator=g),
                                                   torch.randint(0, r, (2000,), generator=g),
                                                   torch.randint(0, n, (2000,), generator=g)], 1)])
    got = kt.contains(queries[:, 0], queries[:, 1], queries[:, 2])
    assert got.dtype == torch.bool
    assert got.tolist() == [tuple(q) in ref for q in queries.tolist()]
    assert got[:100].all()
    # extremes of the key range (first and last possible keys)
    lo = kt.contains(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    hi = kt.contains(torch.tensor([n - 1]), torch.tensor([r - 1]), torch.tensor([n - 1]))
    assert lo.item() == ((0, 0, 0) in ref) and hi.item() == ((n - 1, r - 1, n - 1) in ref)


def test_contains_broadcasts():
    kt = KnownTriples(torch.tensor([[0, 1, 2], [3, 0, 1], [3, 0, 4]]), 5, 2)
    h = torch.tensor([[0], [3]])
    r = torch.tensor([[1], [0]])
    t = torch.arange(5)[None, :]
    got = kt.contains(h, r, t)
    assert got.shape == (2, 5)
    assert got.tolist() == [[False, False, True, False, False], [False, True, False, False, True]]


def test_train_of_includes_inverses_only_from_train():
    kg = hand_kg()
    kt = KnownTriples.train_of(kg)
    ref = {(h, r, t) for (h, r), ts in train_hr2tails_ref(kg).items() for t in ts}
    every = [(h, r, t) for h in range(6) for r in range(4) for t in range(6)]
    q = torch.tensor(every)
    assert kt.contains(q[:, 0], q[:, 1], q[:, 2]).tolist() == [x in ref for x in every]
    assert (3, 1, 5) not in ref and (5, 3, 3) not in ref  # valid stays out


# ---- in-batch masks -------------------------------------------------------------------------------------
def test_in_batch_mask_hand_kg():
    kg = hand_kg()
    kt = KnownTriples.train_of(kg)
    batch = [(0, 0, 1), (0, 0, 2), (2, 0, 2), (4, 1, 0), (5, 1, 0), (0, 2, 4), (3, 1, 5), (1, 1, 4), (2, 2, 0)]
    fn, self_fn = in_batch_mask(torch.tensor(batch), kt)
    ref_fn, ref_self = brute_in_batch(batch, train_hr2tails_ref(kg))
    assert fn.tolist() == ref_fn
    assert self_fn.tolist() == ref_self
    # hand-checked entries
    assert fn[0, 1] and fn[1, 0]  # tail 2 is a train tail of (0, 0) and vice versa
    assert fn[0, 2]  # tail_2 == 2 == a train tail of (0, 0)
    assert fn[3, 4] and fn[4, 3]  # same tail entity 0
    assert fn[5, 7] and fn[7, 5]  # same tail entity 4
    assert not fn[6, 0]  # (3, 1) has no train tails; tail 1 != 5
    assert self_fn.tolist() == [False, False, True, False, False, False, False, False, True]  # (2,0,2), (2,2,0)
    assert not fn.diagonal().any()


def test_in_batch_mask_random_vs_brute_force():
    kg = random_kg(4)  # few entities: many repeated tails, shared (h, r) and self loops
    kt = KnownTriples.train_of(kg)
    hr2tails = train_hr2tails_ref(kg)
    pool = torch.cat([kg.with_inverse(kg.train), kg.with_inverse(kg.valid), kg.with_inverse(kg.test)])
    rng = random.Random(0)
    n_tail_rule = n_self = 0
    for _ in range(20):
        idx = [rng.randrange(len(pool)) for _ in range(24)]
        batch = pool[idx]
        fn, self_fn = in_batch_mask(batch, kt)
        rows = [tuple(x) for x in batch.tolist()]
        ref_fn, ref_self = brute_in_batch(rows, hr2tails)
        assert fn.shape == (24, 24) and fn.dtype == torch.bool
        assert fn.tolist() == ref_fn
        assert self_fn.tolist() == ref_self
        assert not fn.diagonal().any()  # even for duplicated rows, whose tails are equal
        n_self += sum(ref_self)
        n_tail_rule += sum(ref_fn[i][j] and rows[i][2] != rows[j][2] for i in range(24) for j in range(24))
    assert n_tail_rule > 0  # the train-tail branch (not only "same tail") was exercised
    assert n_self > 0


def test_diagonal_free_even_for_duplicate_rows():
    kg = hand_kg()
    fn, _ = in_batch_mask(torch.tensor([(0, 0, 1), (0, 0, 1), (0, 0, 1)]), KnownTriples.train_of(kg))
    assert fn.tolist() == [[False, True, True], [True, False, True], [True, True, False]]


def test_self_mask():
    kg = hand_kg()
    kt = KnownTriples.train_of(kg)
    # (2, 0): train tails {2} -> head 2 is its own answer; (2, 2) = inverse r0 from 2: train heads of (*, 0, 2) = {0, 2}
    # (0, 0): train tails {1, 2, 3} -> 0 not among them; (4, 1): {0}
    _, self_fn = in_batch_mask(torch.tensor([(2, 0, 2), (2, 2, 0), (0, 0, 1), (4, 1, 0)]), kt)
    assert self_fn.tolist() == [True, True, False, False]


@pytest.mark.parametrize("seed", [0, 1])
def test_false_negative_mask_pre_batch_style(seed):
    """Rows = queries, columns = arbitrary candidates (e.g. a pre-batch buffer): no diagonal exemption."""
    kg = random_kg(seed)
    kt = KnownTriples.train_of(kg)
    hr2tails = train_hr2tails_ref(kg)
    ex = kg.with_inverse(kg.train)
    g = torch.Generator().manual_seed(seed)
    q = ex[torch.randint(0, len(ex), (10,), generator=g)]
    cand = torch.randint(0, kg.num_entities, (15,), generator=g)
    got = false_negative_mask(q[:, :2], q[:, 2], cand, kt)
    ref = [[c == t or c in hr2tails.get((h, r), set()) for c in cand.tolist()] for h, r, t in q.tolist()]
    assert got.tolist() == ref


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_answers_among_equals_the_dense_search(seed):
    """The CPU path (answers read as slices of the sorted keys) against every (query, candidate) key searched
    at once; queries without train answers, repeated candidates and a one-candidate batch included."""
    g = torch.Generator().manual_seed(seed)
    n, r = 300, 4
    tr = torch.stack([torch.randint(0, n, (2000,), generator=g), torch.randint(0, r, (2000,), generator=g),
                      torch.randint(0, 40, (2000,), generator=g)], 1)  # tails crowd into 40 entities
    kt = KnownTriples(tr, n, r)
    h, rel = torch.randint(0, n, (64,), generator=g), torch.randint(0, r, (64,), generator=g)
    for cand in (torch.randint(0, 60, (97,), generator=g), torch.tensor([7]), torch.empty(0, dtype=torch.long)):
        dense = kt.contains(h[:, None], rel[:, None], cand[None, :])
        got = kt.answers_among(h, rel, cand)
        assert got.shape == (64, len(cand)) and torch.equal(got, dense)
    assert kt.answers_among(h, rel, torch.arange(40)).any()  # the slices are not all empty


def _hub_graph(seed: int, n: int = 500, r: int = 3):
    """A graph with hubs: entity 0 is the head of 300 (0, 0, t) triples, entities 1-4 of 60 each with relation 1,
    and a sparse random remainder, so some queries have far more known answers than a batch has candidates."""
    g = torch.Generator().manual_seed(seed)
    hub = torch.stack([torch.zeros(300, dtype=torch.long), torch.zeros(300, dtype=torch.long),
                       torch.randperm(n, generator=g)[:300]], 1)
    mids = torch.cat([torch.stack([torch.full((60,), e), torch.ones(60, dtype=torch.long),
                                   torch.randperm(n, generator=g)[:60]], 1) for e in range(1, 5)])
    rest = torch.stack([torch.randint(0, n, (800,), generator=g), torch.randint(0, r, (800,), generator=g),
                        torch.randint(0, n, (800,), generator=g)], 1)
    return torch.cat([hub, mids, rest]), n, r


@pytest.mark.parametrize("seed", [0, 1])
def test_hub_queries_take_the_dense_search_and_give_the_same_mask(seed):
    """Queries with more known answers than distinct candidates are searched candidate by candidate, the
    rest read their slices; every row equals the brute-force set membership either way."""
    tr, n, r = _hub_graph(seed)
    kt = KnownTriples(tr, n, r)
    g = torch.Generator().manual_seed(seed + 10)
    h = torch.cat([torch.tensor([0, 0, 1, 2, 3, 4]), torch.randint(0, n, (26,), generator=g)])
    rel = torch.cat([torch.tensor([0, 0, 1, 1, 1, 1]), torch.randint(0, r, (26,), generator=g)])
    cand = torch.cat([tr[:20, 2], torch.randint(0, n, (30,), generator=g)])  # hub answers among the candidates
    _, counts = kt.answer_counts(h, rel)
    distinct = len(torch.unique(cand))
    assert (counts > distinct).sum() >= 2 and (counts <= distinct).sum() >= 20  # both paths are taken
    ref = {tuple(x) for x in tr.tolist()}
    expected = [[(hi, ri, c) in ref for c in cand.tolist()] for hi, ri in zip(h.tolist(), rel.tolist())]
    got = kt.answers_among(h, rel, cand)
    assert got.tolist() == expected
    assert got[0].sum() >= 20  # the hub's row found its answers


def test_keys_are_cached_per_device_and_not_pickled():
    import pickle

    kt = KnownTriples(torch.tensor([[0, 1, 2], [3, 0, 1]]), 5, 2)
    assert kt.keys_on("cpu") is kt.keys
    meta = kt.keys_on("meta")  # a non-CPU device that exists everywhere: copied once, then reused
    assert meta.device.type == "meta" and kt.keys_on(torch.device("meta")) is meta
    clone = pickle.loads(pickle.dumps(kt))  # what a data-loader worker receives
    assert clone._on == {} and torch.equal(clone.keys, kt.keys)


def test_empty_known_set_masks_only_the_gold_tail():
    kt = KnownTriples(torch.empty(0, 3, dtype=torch.long), 5, 2)
    got = false_negative_mask(torch.tensor([[0, 1], [2, 0]]), torch.tensor([3, 4]), torch.tensor([3, 4, 0]), kt)
    assert got.tolist() == [[True, False, False], [False, True, False]]
    assert not kt.contains(torch.tensor([0]), torch.tensor([0]), torch.tensor([0])).any()


# ---- the mask against the implementation it replaced -----------------------------------------------------
def reference_answers_among(kt: KnownTriples, h: torch.Tensor, r: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """answers_among as it was before queries were de-duplicated (kept verbatim as the reference): every
    query row searched on its own, slices or dense by its answer count, the (B, M) matrix gathered by column."""
    keys = kt.keys_on(h.device)
    base = (h.long() * kt.r + r.long()) * kt.n
    lo = torch.searchsorted(keys, base)
    counts = torch.searchsorted(keys, base + kt.n) - lo
    distinct, column = torch.unique(candidates.long(), return_inverse=True)
    found = torch.zeros(len(h), len(distinct), dtype=torch.bool, device=h.device)
    if len(distinct) == 0 or len(keys) == 0:
        return found[:, column]
    dense = counts > len(distinct)
    hubs = dense.nonzero().squeeze(1)
    if len(hubs):
        key = base[hubs, None] + distinct[None, :]
        pos = torch.searchsorted(keys, key).clamp_(max=len(keys) - 1)
        found[hubs] = keys[pos] == key
    counts = counts.masked_fill(dense, 0)
    rows = torch.repeat_interleave(torch.arange(len(h), device=h.device), counts)
    if len(rows):
        starts = torch.repeat_interleave(lo - (torch.cumsum(counts, 0) - counts), counts)
        answers = keys[starts + torch.arange(len(rows), device=h.device)] - base[rows]
        pos = torch.searchsorted(distinct, answers).clamp_(max=len(distinct) - 1)
        hit = distinct[pos] == answers
        found[rows[hit], pos[hit]] = True
    return found[:, column]


def reference_in_batch_mask(triples: torch.Tensor, kt: KnownTriples) -> tuple[torch.Tensor, torch.Tensor]:
    fn = (triples[None, :, 2] == triples[:, 2, None]) | reference_answers_among(kt, triples[:, 0], triples[:, 1], triples[:, 2])
    fn.fill_diagonal_(False)
    return fn, kt.contains(triples[:, 0], triples[:, 1], triples[:, 0])


def _wikidata_like_batches(seed: int):
    """A Wikidata-shaped graph (train + inverse rows), its KnownTriples, a generator and batches drawn at random,
    from the heaviest queries only, and with repeated rows."""
    from experiments.bench.wikidata_like import wikidata_like_triples

    n, r = 3000, 12
    tr = wikidata_like_triples(n, num_relations=r, mid_hubs=20, seed=seed)
    rows = torch.cat([tr, torch.stack([tr[:, 2], tr[:, 1] + r, tr[:, 0]], 1)])
    kt = KnownTriples(rows, n, 2 * r)
    _, counts = kt.answer_counts(rows[:, 0], rows[:, 1])
    g = torch.Generator().manual_seed(seed)
    heavy = rows[counts > 20]
    batches = [rows[torch.randint(0, len(rows), (b,), generator=g)] for b in (256, 64, 7, 1)]
    batches += [heavy[torch.randint(0, len(heavy), (128,), generator=g)], rows[torch.tensor([0, 0, 1, 0])]]
    return rows, kt, g, batches


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_in_batch_mask_equals_the_reference_on_wikidata_like_graphs(seed):
    """Hubs with far more answers than a batch has candidates, mid-size hubs, Zipf degrees; batches of train +
    inverse rows drawn at random, from the heaviest queries only, and with repeated rows."""
    rows, kt, g, batches = _wikidata_like_batches(seed)
    paths = set()
    for batch in batches:
        distinct = len(torch.unique(batch[:, 2]))
        _, c = kt.answer_counts(batch[:, 0], batch[:, 1])
        paths |= {"dense" if x > distinct else "slices" for x in c.tolist()}
        got, ref = in_batch_mask(batch, kt), reference_in_batch_mask(batch, kt)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
        assert got[0].is_contiguous() and got[0].shape == (len(batch), len(batch))
    assert paths == {"dense", "slices"}


@pytest.mark.parametrize("answers", [9, 10, 11])
def test_answers_among_at_the_dense_boundary(answers):
    """A query with exactly as many known answers as distinct candidates reads its slice, one answer more
    takes the dense search: the same rows either way, repeated candidates and repeated queries included."""
    n, r = 50, 2
    hub = torch.stack([torch.full((answers,), 3), torch.zeros(answers, dtype=torch.long), torch.arange(answers) * 4], 1)
    kt = KnownTriples(torch.cat([hub, torch.tensor([[5, 1, 7], [5, 1, 8], [6, 0, 8]])]), n, r)
    cand = torch.tensor([0, 4, 4, 8, 12, 16, 20, 7, 8, 9, 11, 13, 44, 36, 40])  # 15 entries, 13 distinct
    h, rel = torch.tensor([3, 5, 3, 6, 0, 3]), torch.tensor([0, 1, 0, 0, 0, 0])
    _, counts = kt.answer_counts(h, rel)
    assert counts.tolist() == [answers, 2, answers, 1, 0, answers]
    seen = set()
    for m in range(1, len(cand) + 1):  # candidate sets with 1 to 13 distinct entities: both sides of the boundary
        c = cand[:m]
        distinct = len(torch.unique(c))
        seen |= {distinct - answers} & {-1, 0}  # -1: the hub searched densely (one answer more); 0: exactly as many
        got = kt.answers_among(h, rel, c)
        assert torch.equal(got, reference_answers_among(kt, h, rel, c)), m
        assert torch.equal(got, kt.contains(h[:, None], rel[:, None], c[None, :])), m
    assert seen == {-1, 0}


@pytest.mark.parametrize("search", ["cost-bounded", "fixed-size"])
def test_answers_among_empty_cases_equal_the_reference(search, monkeypatch):
    """Both searches: the CPU's cost-bounded one, and the fixed size one of a CUDA device (the CPU in its place)."""
    if search == "fixed-size":
        import kgc_kd.data.negatives as neg

        monkeypatch.setattr(neg, "FIXED_SIZE_DEVICE_TYPES", {"cpu"})
    kt = KnownTriples(torch.tensor([[0, 1, 2], [3, 0, 1]]), 5, 2)
    empty = KnownTriples(torch.empty(0, 3, dtype=torch.long), 5, 2)
    h, rel, cand = torch.tensor([0, 3, 0]), torch.tensor([1, 0, 1]), torch.tensor([2, 1, 2, 4])
    none = torch.empty(0, dtype=torch.long)
    for k in (kt, empty):
        for args in ((h, rel, cand), (h, rel, none), (none, none, cand), (none, none, none)):
            got = k.answers_among(*args)
            assert got.shape == (len(args[0]), len(args[2])) and got.dtype == torch.bool
            assert torch.equal(got, reference_answers_among(k, *args))
    assert kt.answers_among(h, rel, cand).tolist() == [[True, False, True, False], [False, True, False, False],
                                                       [True, False, True, False]]


# ---- the fixed-size search of a CUDA device (no size read back), run here with the CPU in its place -------------
@pytest.fixture
def fixed_size(monkeypatch):
    import kgc_kd.data.negatives as neg

    monkeypatch.setattr(neg, "FIXED_SIZE_DEVICE_TYPES", {"cpu"})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fixed_size_masks_equal_the_reference_on_wikidata_like_graphs(seed, fixed_size):
    rows, kt, g, batches = _wikidata_like_batches(seed)
    for batch in batches:
        got, ref = in_batch_mask(batch, kt), reference_in_batch_mask(batch, kt)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
        # pre-batch style: other candidates than the batch's tails, repeats included
        cand = rows[torch.randint(0, len(rows), (300,), generator=g), 2]
        assert torch.equal(kt.answers_among(batch[:, 0], batch[:, 1], cand),
                           reference_answers_among(kt, batch[:, 0], batch[:, 1], cand))


def test_fixed_size_masks_read_no_size_or_value_back(fixed_size, monkeypatch):
    """What would make the host wait on a CUDA device: data-dependent output sizes and values read on the host."""
    tr, n, r = _hub_graph(0)
    kt = KnownTriples(tr, n, r)
    batch = tr[torch.randint(0, len(tr), (64,), generator=torch.Generator().manual_seed(0))]
    want = reference_in_batch_mask(batch, kt)

    def refuse(*_a, **_k):
        raise AssertionError("a data-dependent size or a value was read")

    for name in ("unique", "repeat_interleave", "nonzero", "masked_select"):
        monkeypatch.setattr(torch, name, refuse)
    for name in ("nonzero", "item", "__bool__", "__int__", "tolist", "unique", "repeat_interleave"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    got = in_batch_mask(batch, kt)
    pre = false_negative_mask(batch[:, :2], batch[:, 2], batch[:16, 2].flip(0), kt)
    monkeypatch.undo()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert pre.shape == (64, 16)
