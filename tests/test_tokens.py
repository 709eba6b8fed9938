"""kgc_kd.data.tokens: cached token ids must equal what the tokenizer itself produces."""

from __future__ import annotations

import random
import warnings

import pytest
import torch
from conftest import (
    WORDS,
    entity_reference,
    hr_reference,
    link_kg,
    make_tokenizer,
    minilm_tokenizer,
    pad_reference,
    simkgc_vectorize,
    tiny_vocab,
)

from kgc_kd.data import tokens as tokens_module
from kgc_kd.data.io import DataWarning
from kgc_kd.data.kg import KG
from kgc_kd.data.link_graph import LinkGraph
from kgc_kd.data.text import entity_text, entity_texts, linked_texts, relation_texts
from kgc_kd.data.tokens import (
    TokenCache,
    cut_text,
    pad,
    tokenizer_fingerprint,
    truncate_longest_first,
    truncate_longest_first_batch,
    word_pieces,
)


def random_text(rng: random.Random, lo: int, hi: int) -> str:
    """Words from the vocab, letter strings (split into word pieces), digits, punctuation, upper case."""
    out = []
    for _ in range(rng.randint(lo, hi)):
        kind = rng.random()
        if kind < 0.5:
            w = rng.choice(WORDS)
        elif kind < 0.8:
            w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 6)))
        elif kind < 0.9:
            w = str(rng.randint(0, 999))
        else:
            w = rng.choice([",", ".", "-", ":"])
        out.append(w.upper() if rng.random() < 0.1 else w)
    return " ".join(out)


def random_kg(seed: int, n: int = 24, r: int = 5) -> KG:
    rng = random.Random(seed)
    names = [random_text(rng, 1, 4) + f" {i}" for i in range(n)]  # distinct names
    descs = [random_text(rng, 0, 30) if rng.random() < 0.8 else "" for _ in range(n)]
    rels = [random_text(rng, 1, 5) for _ in range(r)]
    return KG(
        name=f"rand{seed}",
        entity_ids=[f"e{i}" for i in range(n)],
        entity_names=names,
        entity_descs=descs,
        relation_ids=[f"r{i}" for i in range(r)],
        relation_texts=rels,
        train=torch.tensor([[0, 0, 1]]),
        valid=torch.zeros(0, 3, dtype=torch.long),
        test=torch.zeros(0, 3, dtype=torch.long),
    )


def one_kg(ent: str, rel: str) -> KG:
    return KG(name="one", entity_ids=["a"], entity_names=[ent], entity_descs=[""], relation_ids=["r"],
              relation_texts=[rel], train=torch.tensor([[0, 0, 0]]), valid=torch.zeros(0, 3), test=torch.zeros(0, 3))


# most tests here tokenise deliberately long texts: the truncation warning is tested on its own below
pytestmark = pytest.mark.filterwarnings("ignore::kgc_kd.data.io.DataWarning")


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture
def whole_texts(monkeypatch):
    """No text cut before tokenising: for the comparisons with the tokenizer's untruncated lengths of whole
    texts (`varied_kg`'s texts of up to ~300 characters are longer than 20 x the small max_lengths tried)."""
    monkeypatch.setattr(tokens_module, "TEXT_CHARS_PER_TOKEN", 10**9)


@pytest.fixture(scope="module")
def kg():
    return random_kg(0)


# ---- against the tokenizer itself ----------------------------------------------------------------------
@pytest.mark.parametrize("max_length", [5, 6, 7, 8, 9, 10, 11, 13, 16, 21, 32, 64])
def test_hr_ids_equal_tokenizer_pair_encoding(tok, kg, max_length):
    cache = TokenCache.build(kg, tok, max_length)
    ents, rels = entity_texts(kg), relation_texts(kg)
    checked = truncated = 0
    for h, e_text in enumerate(ents):
        for r, r_text in enumerate(rels):
            if len(tok.tokenize(r_text)) >= max_length:
                continue  # documented separately: test_hr_ids_relation_longer_than_max_length
            ref = tok(e_text, r_text, truncation=True, max_length=max_length)
            ids, types = cache.hr_ids(h, r)
            assert ids == ref["input_ids"], (max_length, e_text, r_text)
            assert types == ref["token_type_ids"], (max_length, e_text, r_text)
            assert len(ids) <= max_length
            checked += 1
            truncated += len(ids) == max_length
    assert checked >= len(ents) * len(rels) // 2
    if max_length < 32:
        assert truncated > 0  # the truncation path was exercised


@pytest.mark.parametrize("seed", [1, 2])
def test_hr_ids_other_random_kgs(tok, seed):
    kg = random_kg(seed, n=12, r=4)
    rng = random.Random(seed)
    for _ in range(4):
        max_length = rng.randint(5, 40)
        cache = TokenCache.build(kg, tok, max_length)
        for h in range(kg.num_entities):
            for r in range(2 * kg.num_relations):
                r_text = kg.relation_text(r)
                if len(tok.tokenize(r_text)) >= max_length:
                    continue
                e_text = entity_text(kg.entity_names[h], kg.entity_descs[h])
                ref = tok(e_text, r_text, truncation=True, max_length=max_length)
                assert cache.hr_ids(h, r) == (ref["input_ids"], ref["token_type_ids"])


def test_hr_ids_relation_longer_than_max_length(tok):
    ent, rel = " ".join(["red"] * 14), " ".join(["blue"] * 11)
    cache = TokenCache.build(one_kg(ent, rel), tok, 8)
    ref = tok(ent, rel, truncation=True, max_length=8)
    assert cache.hr_ids(0, 0) == (ref["input_ids"], ref["token_type_ids"])


@pytest.mark.parametrize("max_length", [5, 6, 9, 16, 50])
def test_entity_ids_equal_tokenizer_single_encoding(tok, kg, max_length):
    cache = TokenCache.build(kg, tok, max_length)
    for e, text in enumerate(entity_texts(kg)):
        assert cache.entity_ids(e) == tok(text, truncation=True, max_length=max_length)["input_ids"], text


def test_special_ids_and_relation_count(tok, kg):
    cache = TokenCache.build(kg, tok, 20)
    assert (cache.cls_id, cache.sep_id, cache.pad_id, cache.mask_id) == (
        tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id)
    assert cache.num_entities == len(cache.entity_table) == len(cache.entity_lengths) == kg.num_entities
    assert len(cache.relation_table) == len(cache.relation_lengths) == 2 * kg.num_relations
    inv = tok.convert_tokens_to_ids("inverse")
    assert all(cache.relation_table[r + kg.num_relations, 0] == inv for r in range(kg.num_relations))


def test_hr_ids_hand_example(tok):
    cache = TokenCache.build(one_kg("red thing", "part of"), tok, 16)
    v = tiny_vocab()
    ids, types = cache.hr_ids(0, 0)
    assert ids == [v["[CLS]"], v["red"], v["thing"], v["[SEP]"], v["p"], v["##a"], v["##r"], v["##t"], v["of"],
                   v["[SEP]"]]
    assert types == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    ids, types = cache.hr_ids(0, 1)  # inverse relation
    assert ids[4] == v["inverse"] and types.count(1) == 7


def test_build_rejects_short_max_length(tok, kg):
    with pytest.raises(ValueError, match="data.max_length=4"):
        TokenCache.build(kg, tok, 4)


def truncation_kg() -> KG:
    # one-token words: entity texts of 1, 4 and 6 word pieces, relation "blue" (1) and "inverse blue" (2)
    return KG(name="trunc", entity_ids=["a", "b", "c"], entity_names=["red", "red red red red", " ".join(["red"] * 6)],
              entity_descs=["", "", ""], relation_ids=["r"], relation_texts=["blue"],
              train=torch.tensor([[0, 0, 1], [1, 0, 2], [2, 0, 0]]), valid=torch.zeros(0, 3), test=torch.zeros(0, 3))


def test_truncation_counted_and_reported_once(tok):
    # max_length 7: entity texts over 5 pieces are cut (c). Queries are cut past 4 pieces of head + relation:
    # forward heads a, b, c + "blue": 1+1, 4+1, 6+1 -> b, c; inverse (tail as head) b, c, a + "inverse blue":
    # 4+2, 6+2, 1+2 -> b, c. 4 of the 6 training queries.
    with pytest.warns(DataWarning) as record:
        cache = TokenCache.build(truncation_kg(), tok, 7)
    assert [str(w.message) for w in record] == [
        "data.max_length=7: 1 of 3 entity texts and 4 of 6 training queries are truncated (word pieces past the "
        "limit are cut; a larger data.max_length keeps them)"]
    assert cache.truncated == {"entity_texts": 1, "train_queries": 4}
    # agrees with the ids themselves: a query is truncated iff hr_ids fills max_length and drops pieces
    h_r = [(h, r) for h, r, _ in truncation_kg().with_inverse(truncation_kg().train).tolist()]
    assert sum(cache.entity_lengths[h] + cache.relation_lengths[r] + 3 > len(cache.hr_ids(h, r)[0])
               for h, r in h_r) == 4


def test_truncation_of_queries_only_and_quiet_build(tok):
    with pytest.warns(DataWarning, match=r"data\.max_length=9: 0 of 3 entity texts and 2 of 6 training queries"):
        cache = TokenCache.build(truncation_kg(), tok, 9)  # only c + relation (6+1+3, 6+2+3) exceed 9
    assert cache.truncated == {"entity_texts": 0, "train_queries": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TokenCache.build(truncation_kg(), tok, 7, warn=False).truncated == {"entity_texts": 1,
                                                                                    "train_queries": 4}
        none = TokenCache.build(truncation_kg(), tok, 11)  # 6 + 2 + 3 = 11 fits: nothing cut, no warning
    assert none.truncated == {"entity_texts": 0, "train_queries": 0}


def test_truncation_counts_every_training_query(tok):
    kg = truncation_kg()
    kg.train = torch.tensor([[2, 0, 0]] * 600)  # repeated triples still count: forward 6+1+3 > 9, inverse 1+2+3 not
    with pytest.warns(DataWarning, match=r"^data\.max_length=9: 0 of 3 entity texts and 600 of 1,200 training "):
        TokenCache.build(kg, tok, 9)


def test_truncated_is_not_part_of_equality(tok):
    a = TokenCache.build(truncation_kg(), tok, 11)
    b = TokenCache.build(truncation_kg(), tok, 11)
    b.truncated = {"entity_texts": 9, "train_queries": 9}
    assert a == b


# ---- truncate_longest_first ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "na, nb, budget, expected",
    [
        (3, 4, 10, (3, 4)),  # fits
        (3, 4, 7, (3, 4)),  # fits exactly
        (10, 2, 6, (4, 2)),  # short side fits in half: kept whole
        (2, 10, 6, (2, 4)),
        (5, 3, 7, (4, 3)),  # short side exactly <= half after rounding up
        (10, 8, 6, (3, 3)),  # both long, even budget
        (10, 8, 7, (4, 3)),  # both long, odd budget: longer side gets ceil
        (8, 10, 7, (3, 4)),
        (9, 9, 7, (3, 4)),  # tie: the second side gets ceil
        (4, 4, 7, (3, 4)),
        (9, 9, 6, (3, 3)),
        (6, 5, 9, (5, 4)),  # short side does not fit in half: longer side keeps ceil
        (5, 6, 9, (4, 5)),
        (20, 1, 2, (1, 1)),
    ],
)
def test_truncate_longest_first_hand_cases(tok, na, nb, budget, expected):
    assert truncate_longest_first(na, nb, budget) == expected
    # and the tokenizer agrees: "red" and "blue" are single tokens
    enc = tok(" ".join(["red"] * na), " ".join(["blue"] * nb), truncation=True, max_length=budget + 3)
    red, blue = tok.convert_tokens_to_ids(["red", "blue"])
    assert (enc["input_ids"].count(red), enc["input_ids"].count(blue)) == expected


@pytest.mark.parametrize("na, nb, budget, expected", [(0, 10, 4, (0, 4)), (10, 0, 4, (4, 0)), (0, 0, 3, (0, 0))])
def test_truncate_longest_first_empty_side(na, nb, budget, expected):
    assert truncate_longest_first(na, nb, budget) == expected


def test_truncate_longest_first_invariants():
    for na in range(0, 15):
        for nb in range(0, 15):
            for budget in range(1, 20):
                ka, kb = truncate_longest_first(na, nb, budget)
                assert 0 <= ka <= na and 0 <= kb <= nb
                assert ka + kb == min(na + nb, budget)


def test_truncate_longest_first_batch_equals_scalar():
    na, nb = torch.meshgrid(torch.arange(20), torch.arange(20), indexing="ij")
    na, nb = na.flatten(), nb.flatten()
    for budget in range(1, 24):
        ka, kb = truncate_longest_first_batch(na, nb, budget)
        assert ka.dtype == kb.dtype == torch.long
        ref = [truncate_longest_first(a, b, budget) for a, b in zip(na.tolist(), nb.tolist())]
        assert list(zip(ka.tolist(), kb.tolist())) == ref, budget


# ---- vectorised batches against the per-example reference -----------------------------------------------
def assert_same_batch(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(ref) == {"input_ids", "attention_mask", "token_type_ids"}
    for key in ref:
        assert got[key].dtype == ref[key].dtype == torch.long, key
        assert got[key].shape == ref[key].shape, key
        assert torch.equal(got[key], ref[key]), key


def grid_kg(n: int = 13) -> KG:
    """Entity texts of exactly 0..n-1 tokens and relation texts of 0..n-1 tokens (inverses: 1..n): every
    pair of lengths, ties, empty texts, and either side alone longer than max_length."""
    return KG(name="grid", entity_ids=[f"e{i}" for i in range(n)],
              entity_names=[" ".join(["red"] * k) for k in range(n)], entity_descs=[""] * n,
              relation_ids=[f"r{k}" for k in range(n)], relation_texts=[" ".join(["blue"] * k) for k in range(n)],
              train=torch.tensor([[0, 0, 0]]), valid=torch.zeros(0, 3), test=torch.zeros(0, 3))


def all_pairs(kg: KG) -> tuple[torch.Tensor, torch.Tensor]:
    h, r = torch.meshgrid(torch.arange(kg.num_entities), torch.arange(2 * kg.num_relations), indexing="ij")
    return h.flatten(), r.flatten()


@pytest.mark.parametrize("max_length", [5, 6, 7, 8, 11, 16])
def test_batches_equal_reference_on_every_length_pair(tok, max_length):
    kg = grid_kg()
    cache = TokenCache.build(kg, tok, max_length)
    assert cache.entity_lengths.tolist() == list(range(13))
    assert cache.relation_lengths.tolist() == list(range(13)) + list(range(1, 14))
    h, r = all_pairs(kg)
    assert_same_batch(cache.hr_batch(h, r), hr_reference(cache, h, r))
    for i in range(len(h)):  # one row at a time: padded to its own length, no padding column
        assert_same_batch(cache.hr_batch(h[i:i + 1], r[i:i + 1]), hr_reference(cache, h[i:i + 1], r[i:i + 1]))
    e = torch.arange(kg.num_entities)
    assert_same_batch(cache.entity_batch(e), entity_reference(cache, e))
    for i in range(len(e)):
        assert_same_batch(cache.entity_batch(e[i:i + 1]), entity_reference(cache, e[i:i + 1]))


@pytest.mark.parametrize("seed", range(4))
def test_batches_equal_reference_on_random_kgs(tok, seed):
    kg = random_kg(seed, n=30, r=6)
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    for max_length in (5, 8, rng.randint(9, 20), 50):
        cache = TokenCache.build(kg, tok, max_length)
        assert cache.entity_lengths.max() > max_length  # truncated entity texts are exercised
        h, r = all_pairs(kg)
        assert_same_batch(cache.hr_batch(h, r), hr_reference(cache, h, r))
        for _ in range(10):  # random batches with repeats, of random sizes
            b = rng.randint(1, 40)
            h = torch.randint(0, kg.num_entities, (b,), generator=g)
            r = torch.randint(0, 2 * kg.num_relations, (b,), generator=g)
            assert_same_batch(cache.hr_batch(h, r), hr_reference(cache, h, r))
            assert_same_batch(cache.entity_batch(h), entity_reference(cache, h))


def test_batches_with_long_relation_texts(tok):
    # relation texts longer than max_length on their own, entities short, long, or empty
    kg = KG(name="long", entity_ids=["a", "b", "c"], entity_names=["red", " ".join(["red"] * 20), ""],
            entity_descs=["", "", ""], relation_ids=["r0", "r1"],
            relation_texts=[" ".join(["blue"] * 30), "blue"], train=torch.tensor([[0, 0, 1]]),
            valid=torch.zeros(0, 3), test=torch.zeros(0, 3))
    for max_length in (5, 8, 12):
        cache = TokenCache.build(kg, tok, max_length)
        h, r = all_pairs(kg)
        assert_same_batch(cache.hr_batch(h, r), hr_reference(cache, h, r))
        e = torch.tensor([2, 2, 0, 1])
        assert_same_batch(cache.entity_batch(e), entity_reference(cache, e))


def test_empty_batch(tok, kg):
    cache = TokenCache.build(kg, tok, 8)
    none = torch.zeros(0, dtype=torch.long)
    for enc in (cache.hr_batch(none, none), cache.entity_batch(none)):
        assert all(v.shape == (0, 0) and v.dtype == torch.long for v in enc.values())


# ---- fingerprint and padding --------------------------------------------------------------------------
def test_tokenizer_fingerprint():
    from transformers import BertTokenizer

    a, b = make_tokenizer(), make_tokenizer()
    assert a is not b
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    vocab = tiny_vocab()
    vocab["zebra"] = len(vocab)
    c = BertTokenizer(vocab=vocab, do_lower_case=True)
    assert tokenizer_fingerprint(c) != tokenizer_fingerprint(a)
    swapped = dict(tiny_vocab())
    swapped["red"], swapped["blue"] = swapped["blue"], swapped["red"]
    d = BertTokenizer(vocab=swapped, do_lower_case=True)
    assert tokenizer_fingerprint(d) != tokenizer_fingerprint(a)
    assert len(tokenizer_fingerprint(a)) == 16


def test_pad():
    ids, mask = pad([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    ids, mask = pad([[1, 2], [3, 4]], pad_id=99)
    assert ids.tolist() == [[1, 2], [3, 4]] and mask.tolist() == [[1, 1], [1, 1]]
    ids, _ = pad([[1], [2, 3]], pad_id=99)
    assert ids.tolist() == [[1, 99], [2, 3]]


def test_pad_equals_reference_loop():
    rng = random.Random(0)
    for _ in range(50):
        seqs = [[rng.randint(1, 99) for _ in range(rng.randint(0, 9))] for _ in range(rng.randint(1, 8))]
        ids, mask = pad(seqs, pad_id=0)
        ref_ids, ref_mask = pad_reference(seqs, pad_id=0)
        assert ids.dtype == mask.dtype == torch.long
        assert torch.equal(ids, ref_ids) and torch.equal(mask, ref_mask), seqs
    ids, mask = pad([[], []], pad_id=7)
    assert ids.shape == mask.shape == (2, 0)


# ---- data.link_graph: SimKGC's neighbour text, assembled from cached pieces ------------------------------
@pytest.fixture(scope="module")
def minilm():
    return minilm_tokenizer()


def train_and_eval_rows(kg: KG) -> tuple[torch.Tensor, torch.Tensor]:
    return kg.with_inverse(kg.train), kg.with_inverse(torch.cat([kg.valid, kg.test]))


@pytest.mark.parametrize("max_length", [12, 16, 24, 50, 128])
def test_link_graph_ids_equal_simkgc_tokenized_strings(minilm, max_length):
    """hr, tail and head-only inputs of every training example (partner left out) and evaluation query (all
    neighbours), and every ranking candidate, against the real tokenizer on SimKGC's own strings."""
    kg = link_kg()
    cache = TokenCache.build(kg, minilm, max_length, link_graph=True, warn=False)
    train, evaluation = train_and_eval_rows(kg)
    for h, r, t in train.tolist():
        ref = simkgc_vectorize(kg, minilm, h, r, t, max_length, is_test=False)
        assert cache.hr_ids(h, r, exclude=t) == (ref["hr"], ref["hr_types"]), (h, r, t)
        assert cache.entity_ids(t, exclude=h) == ref["tail"], (h, r, t)
        assert cache.entity_ids(h, exclude=t) == ref["head"], (h, r, t)
    for h, r, t in evaluation.tolist():
        ref = simkgc_vectorize(kg, minilm, h, r, t, max_length, is_test=True)
        assert cache.hr_ids(h, r) == (ref["hr"], ref["hr_types"]), (h, r, t)
    for e in range(kg.num_entities):
        assert cache.entity_ids(e) == simkgc_vectorize(kg, minilm, -1, 0, e, max_length, is_test=True)["tail"]


def test_link_graph_hand_checked_texts(minilm):
    """A few of the texts above spelled out: the 10 names in id-string order, the partner's name left out,
    ":" kept for an empty description, dropped for a description that is only the name."""
    kg = link_kg()
    cache = TokenCache.build(kg, minilm, 128, link_graph=True, warn=False)

    def text(e, exclude=None):
        return minilm.decode(cache.entity_ids(e, exclude)[1:-1])

    hub = ("hub : a central station, busy o ' neill co - op new york x - ray naive cafe rock ' n ' roll e - mail "
           "dogs zurich st. louis")
    assert text(0) == hub  # n1 n10 n11 n12 n2 n3 n4 n5 n6 n7: 10 of 12, by id string
    assert text(0, exclude=kg.entity_ids.index("n12")) == hub.replace(" x - ray", "")  # 9 names
    assert text(0, exclude=kg.entity_ids.index("n9")) == hub  # not among the 10: nothing changes
    assert text(13) == "lonely :"  # no description, no neighbour
    assert text(15) == "dog : cat" and text(15, exclude=14) == "dog"
    assert text(4) == "x - ray : hub" and text(4, exclude=0) == "x - ray"
    assert text(6) == "new york : " + " ".join(LONG[:20])  # 20 words: no names
    assert text(8, exclude=8) == "3. 5 inch : hub"  # the self-loop's partner is itself


LONG = "the quick brown fox jumps over a lazy dog while seven old owls sing softly".split() + \
    "near an open river under grey winter clouds tonight".split()


def random_link_kg(seed: int, n: int = 30, r: int = 4, edges: int = 90) -> KG:
    """Random texts (tiny vocabulary) and a random train graph in which some entities have > 10 neighbours."""
    rng = random.Random(seed)
    base = random_kg(seed, n=n, r=r)
    hubs = [0, 1]
    train = [(rng.choice(hubs) if rng.random() < 0.4 else rng.randrange(n), rng.randrange(r), rng.randrange(n))
             for _ in range(edges)]
    return KG(name=f"link{seed}", entity_ids=[str(rng.randrange(10**6)) + f"-{i}" for i in range(n)],
              entity_names=base.entity_names, entity_descs=base.entity_descs, relation_ids=base.relation_ids,
              relation_texts=base.relation_texts, train=torch.tensor(train), valid=torch.zeros(0, 3),
              test=torch.zeros(0, 3))


def hr_reference_excluding(cache, h, r, x):
    pairs = [cache.hr_ids(a, b, None if c < 0 else c) for a, b, c in zip(h.tolist(), r.tolist(), x.tolist())]
    ids, mask = pad_reference([p[0] for p in pairs], cache.pad_id)
    types, _ = pad_reference([p[1] for p in pairs], 0)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def entity_reference_excluding(cache, e, x):
    ids, mask = pad_reference([cache.entity_ids(a, None if c < 0 else c) for a, c in zip(e.tolist(), x.tolist())],
                              cache.pad_id)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


@pytest.mark.parametrize("seed", range(3))
def test_link_graph_batches_equal_reference(tok, seed):
    kg = random_link_kg(seed)
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    for max_length in (5, 8, rng.randint(9, 20), 50):
        cache = TokenCache.build(kg, tok, max_length, link_graph=True, warn=False)
        assert cache.link.graph.shown(torch.arange(kg.num_entities)).sum(1).max() == 10  # capped lists exercised
        h, r = all_pairs(kg)
        none = torch.full_like(h, -1)
        assert_same_batch(cache.hr_batch(h, r), hr_reference_excluding(cache, h, r, none))
        assert_same_batch(cache.hr_batch(h, r, none), hr_reference_excluding(cache, h, r, none))
        for _ in range(10):
            b = rng.randint(1, 40)
            rows = kg.with_inverse(kg.train)[torch.randint(0, 2 * len(kg.train), (b,), generator=g)]
            h, r, t = rows.unbind(1)
            for x in (t, cache.exclusion(h, t)):  # the raw partner and the effective one give the same inputs
                assert_same_batch(cache.hr_batch(h, r, x), hr_reference_excluding(cache, h, r, x))
                assert_same_batch(cache.entity_batch(h, x), entity_reference_excluding(cache, h, x))
            x = torch.randint(-1, kg.num_entities, (b,), generator=g)  # any exclusion, listed or not
            assert_same_batch(cache.entity_batch(t, x), entity_reference_excluding(cache, t, x))
            for i in range(b):  # one row at a time: padded to its own length
                assert_same_batch(cache.entity_batch(t[i:i + 1], x[i:i + 1]),
                                  entity_reference_excluding(cache, t[i:i + 1], x[i:i + 1]))
    empty = torch.zeros(0, dtype=torch.long)
    for enc in (cache.hr_batch(empty, empty, empty), cache.entity_batch(empty, empty)):
        assert all(v.shape == (0, 0) for v in enc.values())


def test_link_graph_truncation_counts(minilm):
    kg = link_kg()
    for max_length in (12, 24, 128):
        cache = TokenCache.build(kg, minilm, max_length, link_graph=True, warn=False)
        full = 10**6  # SimKGC's texts, not truncated
        long_entities = sum(len(simkgc_vectorize(kg, minilm, -1, 0, e, full, True)["tail"]) > max_length
                            for e in range(kg.num_entities))
        long_queries = sum(len(simkgc_vectorize(kg, minilm, h, r, t, full, False)["hr"]) > max_length
                           for h, r, t in kg.with_inverse(kg.train).tolist())
        assert cache.truncated == {"entity_texts": long_entities, "train_queries": long_queries}
    assert long_entities == long_queries == 0  # 128 keeps everything


def test_link_graph_used_ids_cover_the_colon_of_empty_descriptions(tok):
    # no description anywhere: plain texts are bare names, but with neighbours SimKGC reads "name: ..."
    kg = KG(name="c", entity_ids=["a", "b"], entity_names=["red", "blue"], entity_descs=["", ""],
            relation_ids=["r"], relation_texts=["green"], train=torch.tensor([[0, 0, 1]]), valid=torch.zeros(0, 3),
            test=torch.zeros(0, 3))
    colon = tok.convert_tokens_to_ids(":")
    plain = TokenCache.build(kg, tok, 16)
    linked = TokenCache.build(kg, tok, 16, link_graph=True)
    (ent, _), (rel, _) = reference_lists(kg, tok, 16)
    assert plain.link is None and plain.used_ids().tolist() == sorted(set(sum(ent + rel, [])))
    assert colon not in plain.used_ids() and colon not in sum(ent + rel, [])
    assert colon in linked.used_ids() and colon in linked.entity_ids(0)
    assert linked != plain


def test_link_graph_warns_where_a_name_continues_into_its_neighbours(tok):
    # "red blue" with description "red": SimKGC strips the name from "red blue green" (neighbour "blue green")
    kg = KG(name="w", entity_ids=["a", "b", "c"], entity_names=["red blue", "blue green", "old"],
            entity_descs=["red", "", ""], relation_ids=["r"], relation_texts=["of"],
            train=torch.tensor([[0, 0, 1], [2, 0, 0]]), valid=torch.zeros(0, 3), test=torch.zeros(0, 3))
    with pytest.warns(DataWarning, match=r"data\.link_graph: 1 entities .* \(e\.g\. a: 'red blue'\)"):
        TokenCache.build(kg, tok, 16, link_graph=True)
    kg.entity_names[1] = "green"  # no longer continues the name: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TokenCache.build(kg, tok, 16, link_graph=True)


def test_link_graph_rejects_a_tokenizer_that_keeps_punctuation_on_words():
    from tokenizers.pre_tokenizers import WhitespaceSplit

    kg = KG(name="p", entity_ids=["a", "b"], entity_names=["red", "blue"], entity_descs=["red", ""],
            relation_ids=["r"], relation_texts=["of"], train=torch.tensor([[0, 0, 1]]), valid=torch.zeros(0, 3),
            test=torch.zeros(0, 3))
    # split at whitespace only, "red:" is one word ([UNK]), so "red" is not a prefix of "red:"
    raw = make_tokenizer()
    raw.backend_tokenizer.pre_tokenizer = WhitespaceSplit()
    assert raw.tokenize("red:") == ["[UNK]"]
    with pytest.raises(ValueError, match=r"data\.link_graph: the word pieces of 'red' are not a prefix .*entity a"):
        TokenCache.build(kg, raw, 16, link_graph=True)


def test_link_graph_assembly_check_catches_a_mismatch(tok):
    from transformers import BertTokenizer

    kg = KG(name="m", entity_ids=["a", "b"], entity_names=["RED", "BLUE"], entity_descs=["", ""],
            relation_ids=["r"], relation_texts=["of"], train=torch.tensor([[0, 0, 1]]), valid=torch.zeros(0, 3),
            test=torch.zeros(0, 3))
    cache = TokenCache.build(kg, tok, 16, link_graph=True)  # passes its own check
    cased = BertTokenizer(vocab=tiny_vocab(), do_lower_case=False)  # "RED" -> [UNK]: other pieces
    with pytest.raises(ValueError, match="data.link_graph: entity a: the word pieces assembled"):
        cache.link.check_assembly(kg, cased, cache)


def test_link_graph_off_is_the_plain_cache(tok, kg):
    plain = TokenCache.build(kg, tok, 16)
    assert TokenCache.build(kg, tok, 16, link_graph=False) == plain and plain.link is None
    e = torch.arange(kg.num_entities)
    assert plain.exclusion(e, e.flip(0)).tolist() == [-1] * kg.num_entities
    (ent, ent_len), _ = reference_lists(kg, tok, 16)
    assert plain.text_ids(3, exclude=5) == (ent[3], ent_len[3])


# ---- the list-based implementation before the int32 tables, kept as the reference ------------------------
def reference_lists(kg: KG, tok, max_length: int):
    """What TokenCache.build kept per text: ids cut at max_length and untruncated lengths, for the entities
    and the 2R relation texts."""
    def ids(texts):
        full = tok(texts, add_special_tokens=False)["input_ids"]
        return [x[:max_length] for x in full], [len(x) for x in full]

    return ids(entity_texts(kg)), ids(relation_texts(kg))


def reference_table(seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """Its padded table: (N, max(1, longest)) long, right-padded with pad_id."""
    return pad([[pad_id], *seqs], pad_id)[0][1:]


def reference_link_lists(kg: KG, tok, max_length: int):
    """Its LinkedTokens lists: heads, names (cut at max_length), untruncated head, bare-head and name lengths."""
    def wp(texts):
        return tok(texts, add_special_tokens=False)["input_ids"] if texts else []

    graph, texts, parts = LinkGraph.of(kg), entity_texts(kg), linked_texts(kg)
    (plain, plain_len), _ = reference_lists(kg, tok, max_length)
    prefix, prefix_len, bare_len = list(plain), list(plain_len), list(plain_len)
    new = [e for e, a in enumerate(graph.augmented.tolist()) if a and parts[e][0] != texts[e]]
    for e, ids in zip(new, wp([parts[e][0] for e in new])):
        prefix[e], prefix_len[e], bare_len[e] = ids[:max_length], len(ids), len(ids)
    differ = [e for e in new if parts[e][1] != parts[e][0]]
    for e, ids in zip(differ, wp([parts[e][1] for e in differ])):
        bare_len[e] = len(ids)
    names = wp(list(kg.entity_names))
    return graph, prefix, [x[:max_length] for x in names], prefix_len, bare_len, [len(x) for x in names]


class ReferenceInputs:
    """Its per-example hr_ids / entity_ids, on the reference lists."""

    def __init__(self, kg: KG, tok, max_length: int, link_graph: bool):
        (self.ent, self.ent_len), (self.rel, self.rel_len) = reference_lists(kg, tok, max_length)
        self.link = reference_link_lists(kg, tok, max_length) if link_graph else None
        self.max_length, self.cls, self.sep = max_length, tok.cls_token_id, tok.sep_token_id

    def text_ids(self, e, exclude):
        if self.link is None:
            return self.ent[e], self.ent_len[e]
        graph, prefix, names, prefix_len, bare_len, name_len = self.link
        shown = graph.neighbour_ids(e, exclude)
        if not shown:
            return prefix[e][:bare_len[e]], bare_len[e]
        ids = prefix[e] + [i for n in shown for i in names[n]]
        return ids[:self.max_length], prefix_len[e] + sum(name_len[n] for n in shown)

    def hr_ids(self, h, r, exclude=None):
        (a, a_len), b = self.text_ids(h, exclude), self.rel[r]
        na, nb = truncate_longest_first(a_len, self.rel_len[r], self.max_length - 3)
        return [self.cls, *a[:na], self.sep, *b[:nb], self.sep], [0] * (na + 2) + [1] * (nb + 1)

    def entity_ids(self, e, exclude=None):
        return [self.cls, *self.text_ids(e, exclude)[0][: self.max_length - 2], self.sep]


def varied_kg(seed: int) -> KG:
    """Random texts of 0 to ~60 word pieces (many cut at the lengths below), some empty descriptions and
    empty names, and a train graph with two hubs (so link-graph lists are capped at 10)."""
    kg = random_link_kg(seed, n=40, r=5, edges=120)
    kg.entity_names[3] = ""
    kg.entity_descs[3] = ""
    return kg


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("chunk", [7, 65_536])
def test_tables_equal_the_reference_lists(tok, seed, chunk, monkeypatch, whole_texts):
    monkeypatch.setattr(tokens_module, "CHUNK_TEXTS", chunk)  # 7: the texts go through the tokenizer in chunks
    kg = varied_kg(seed)
    for max_length in (5, 8, 17, 64):
        cache = TokenCache.build(kg, tok, max_length)
        (ent, ent_len), (rel, rel_len) = reference_lists(kg, tok, max_length)
        assert max(ent_len) > max_length and min(ent_len) == 0 or max_length == 64  # cut and empty texts
        for table, lengths, seqs, full in ((cache.entity_table, cache.entity_lengths, ent, ent_len),
                                           (cache.relation_table, cache.relation_lengths, rel, rel_len)):
            assert table.dtype == lengths.dtype == torch.int32 and table.is_contiguous()
            assert torch.equal(table.long(), reference_table(seqs, tok.pad_token_id))  # same width and padding
            assert lengths.tolist() == full


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("link_graph", [False, True])
def test_batches_equal_the_reference_implementation(tok, seed, link_graph, monkeypatch, whole_texts):
    monkeypatch.setattr(tokens_module, "CHUNK_TEXTS", 5)
    kg = varied_kg(seed)
    g = torch.Generator().manual_seed(seed)
    for max_length in (5, 9, 16, 50):
        cache = TokenCache.build(kg, tok, max_length, link_graph=link_graph, warn=False)
        ref = ReferenceInputs(kg, tok, max_length, link_graph)
        rows = kg.with_inverse(kg.train)[torch.randint(0, 2 * len(kg.train), (64,), generator=g)]
        h, r, t = rows.unbind(1)
        x = cache.exclusion(h, t)
        want = [ref.hr_ids(a, b, None if c < 0 else c) for a, b, c in zip(h.tolist(), r.tolist(), x.tolist())]
        ids, mask = pad_reference([w[0] for w in want], tok.pad_token_id)
        assert_same_batch(cache.hr_batch(h, r, x), {"input_ids": ids, "attention_mask": mask,
                                                    "token_type_ids": pad_reference([w[1] for w in want], 0)[0]})
        e = torch.arange(kg.num_entities)
        ids, mask = pad_reference([ref.entity_ids(a) for a in e.tolist()], tok.pad_token_id)
        assert_same_batch(cache.entity_batch(e), {"input_ids": ids, "attention_mask": mask,
                                                  "token_type_ids": torch.zeros_like(ids)})
        for a in range(kg.num_entities):
            assert cache.text_ids(a) == ref.text_ids(a, None)


@pytest.mark.parametrize("seed", range(2))
def test_link_tables_equal_the_reference_lists(tok, seed, whole_texts):
    kg = varied_kg(seed)
    for max_length in (6, 12, 50):
        link = TokenCache.build(kg, tok, max_length, link_graph=True, warn=False).link
        _, prefix, names, prefix_len, bare_len, name_len = reference_link_lists(kg, tok, max_length)
        rows = prefix + names
        assert link.table.dtype == torch.int32 and link.table.shape == (len(rows), max(1, *map(len, rows)))
        assert [link.table[i, :len(s)].tolist() for i, s in enumerate(rows)] == rows
        assert link.lengths.tolist() == prefix_len + name_len and link.bare.tolist() == bare_len


def test_used_ids_are_the_ids_of_every_text(tok):
    kg = varied_kg(0)
    for max_length in (5, 30):
        (ent, _), (rel, _) = reference_lists(kg, tok, max_length)
        cache = TokenCache.build(kg, tok, max_length)
        used = cache.used_ids()
        assert used.dtype == torch.long and used.tolist() == sorted(set(sum(ent + rel, [])))
        assert tok.pad_token_id not in used  # padding is not a used id (the tiny texts never contain [PAD])


def test_cache_equality_compares_ids_not_storage(tok, kg):
    a, b = TokenCache.build(kg, tok, 16), TokenCache.build(kg, tok, 16)
    assert a == b and a != TokenCache.build(kg, tok, 17)
    b.entity_table = b.entity_table.clone()
    b.entity_table[0, 0] += 1
    assert a != b


@pytest.mark.parametrize("link_graph", [False, True])
def test_truncation_counts_and_used_ids_in_steps_equal_the_reference(tok, link_graph, monkeypatch):
    kg = varied_kg(1)
    whole = TokenCache.build(kg, tok, 20, link_graph=link_graph, warn=False)
    monkeypatch.setattr(tokens_module, "ROWS_PER_STEP", 4)  # 120 triples and 40 entities: many steps
    stepped = TokenCache.build(kg, tok, 20, link_graph=link_graph, warn=False)
    assert stepped.truncated == whole.truncated and torch.equal(stepped.used_ids(), whole.used_ids())
    ref = ReferenceInputs(kg, tok, 20, link_graph)
    queries = kg.with_inverse(kg.train).tolist()
    long_queries = sum(ref.text_ids(h, t)[1] + ref.rel_len[r] + 3 > 20 for h, r, t in queries)
    long_texts = sum(ref.text_ids(e, None)[1] > 18 for e in range(kg.num_entities))
    assert whole.truncated == {"entity_texts": long_texts, "train_queries": long_queries}
    assert 0 < long_queries < len(queries)
    pieces = [i for e in range(kg.num_entities) for i in ref.text_ids(e, None)[0]] + sum(ref.rel, [])
    if link_graph:
        _, prefix, names, *_ = ref.link
        pieces += sum(prefix + names, [])
    assert whole.used_ids().tolist() == sorted(set(pieces))


# ---- texts cut before tokenising (TEXT_CHARS_PER_TOKEN x max_length characters) ------------------------------
def test_cut_text_at_a_space_else_at_the_limit():
    assert cut_text("red thing", 9) == "red thing"  # not longer than the limit: whole
    assert cut_text("red thing blue", 10) == "red thing"  # the space at the limit itself: no word is cut
    assert cut_text("red thing blue", 12) == "red thing"  # the last space among the first 12 characters
    assert cut_text("red\tthing\nblue", 12) == "red\tthing"  # any whitespace
    assert cut_text("reddish thingy", 12) == "reddish"  # the space at 7 is in the second half (> 6)
    assert cut_text("a bcdefghijklmnop", 10) == "a bcdefghi"  # a space only in the first half: cut at the limit


class CountingTokenizer:
    """The tokenizer, recording the longest text it was given."""

    def __init__(self, tok):
        self.tok, self.longest = tok, 0

    def __call__(self, texts, **kwargs):
        self.longest = max([self.longest, *map(len, texts)])
        return self.tok(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_a_huge_description_is_cut_before_tokenising(tok):
    """A 400,000-character description: the tokenizer sees at most 20 x max_length characters of it, its
    row holds the first max_length pieces of the whole text and its length is at least max_length (so it
    counts as truncated), the other rows as before."""
    huge = " ".join(["red thing", "blue", "abc", "7"] * 30_000)
    kg = KG(name="huge", entity_ids=["a", "b"], entity_names=["small 1", "large 2"], entity_descs=[huge, "old"],
            relation_ids=["r"], relation_texts=["is a"], train=torch.tensor([[0, 0, 1]]),
            valid=torch.zeros(0, 3), test=torch.zeros(0, 3))
    counting = CountingTokenizer(tok)
    with pytest.warns(DataWarning, match="1 of 2 entity texts"):
        cache = TokenCache.build(kg, counting, 16)
    assert 10 * 16 < counting.longest <= 20 * 16  # cut at a space
    whole = tok([entity_text("small 1", huge)], add_special_tokens=False)["input_ids"][0]
    assert len(whole) > 100_000
    assert cache.entity_table[0].tolist() == whole[:16]
    assert 16 <= int(cache.entity_lengths[0]) < len(whole)
    short = tok(["large 2: old"], add_special_tokens=False)["input_ids"][0]
    assert cache.entity_table[1, :len(short)].tolist() == short and int(cache.entity_lengths[1]) == len(short)
    assert cache.truncated == {"entity_texts": 1, "train_queries": 1}  # (a, r, b); not its inverse (b, r^-1, a)


def test_a_cut_with_too_few_pieces_is_read_once_more_16_times_longer(tok):
    """max_length 5: texts are cut at 100 characters; 150 spaces then words give no piece within 100, so the
    text is read again up to 1,600 characters (exact); 2,000 spaces then words give none within 1,600 either
    and are read as those spaces (the documented bound); a short text is read whole."""
    late = " " * 150 + "red thing blue old new fast"
    too_late = " " * 2000 + "red thing"
    got = word_pieces(tok, [late, too_late, "red thing"], 5)
    assert got[0] == tok([late], add_special_tokens=False)["input_ids"][0]  # 6 pieces: the 1,600-character cut
    assert len(got[0]) == 6
    assert got[1] == []
    assert got[2] == tok(["red thing"], add_special_tokens=False)["input_ids"][0]
    assert word_pieces(tok, [too_late]) == tok([too_late], add_special_tokens=False)["input_ids"]  # no max_length
