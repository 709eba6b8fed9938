"""kgc_kd.data.tokens: cached token ids must equal what the tokenizer itself produces."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import WORDS, make_tokenizer, tiny_vocab

from kgc_kd.data.kg import KG
from kgc_kd.data.text import entity_text, entity_texts, relation_texts
from kgc_kd.data.tokens import TokenCache, pad, tokenizer_fingerprint, truncate_longest_first


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


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


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
    assert len(cache.entity) == kg.num_entities
    assert len(cache.relation) == 2 * kg.num_relations
    inv = tok.convert_tokens_to_ids("inverse")
    assert all(cache.relation[r + kg.num_relations][0] == inv for r in range(kg.num_relations))


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
