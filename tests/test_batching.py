"""kgc_kd.data.batching: collate functions (train with/without entity de-duplication, queries, entities)."""

from __future__ import annotations

import pytest
import torch
from conftest import entity_reference, hr_reference, link_kg, make_tokenizer, minilm_tokenizer, simkgc_vectorize

from kgc_kd.data.batching import EntityCollator, QueryCollator, RowDataset, TrainCollator
from kgc_kd.data.builtin import load_builtin
from kgc_kd.data.kg import KG
from kgc_kd.data.negatives import KnownTriples, in_batch_mask
from kgc_kd.data.synthetic import synthetic_kg
from kgc_kd.data.tokens import TokenCache

NAMES = ["red", "green thing", "blue small thing", "old", "new fast slow thing", "warm", "cold soft", "hard"]
DESCS = ["", "number 1", "", "a b c d e f g h i j k l m n o p", "", "is bright", "", "dark and cold"]


def make_kg() -> KG:
    train = [(0, 0, 1), (0, 0, 2), (1, 1, 3), (2, 0, 2), (3, 1, 0), (4, 0, 5), (5, 1, 6), (6, 0, 7), (7, 1, 4)]
    return KG(name="b", entity_ids=[f"e{i}" for i in range(8)], entity_names=NAMES, entity_descs=DESCS,
              relation_ids=["r0", "r1"], relation_texts=["part of", "has color"], train=torch.tensor(train),
              valid=torch.tensor([[1, 0, 4]]), test=torch.tensor([[2, 1, 7]]))


@pytest.fixture(scope="module")
def setup():
    kg = make_kg()
    tokens = TokenCache.build(kg, make_tokenizer(), 12)
    known = KnownTriples.train_of(kg)
    # repeated heads/tails, inverse rows, a row repeated verbatim
    batch = torch.tensor([(0, 0, 1), (0, 0, 2), (2, 0, 2), (3, 1, 0), (1, 2, 0), (4, 0, 5), (0, 0, 1), (7, 3, 6)])
    return kg, tokens, known, batch


def strip(ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    n = int(mask.sum())
    assert mask[:n].all() and not mask[n:].any()  # right padding
    return ids[:n].tolist()


def check_encoding(enc: dict, expected: list[list[int]], types: list[list[int]] | None, pad_id: int):
    assert set(enc) == {"input_ids", "attention_mask", "token_type_ids"}
    ids, mask, tt = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    assert ids.shape == mask.shape == tt.shape == (len(expected), max(len(e) for e in expected))
    for i, exp in enumerate(expected):
        assert strip(ids[i], mask[i]) == exp
        assert (ids[i, len(exp):] == pad_id).all()
        want_types = types[i] if types is not None else [0] * len(exp)
        assert tt[i, : len(exp)].tolist() == want_types
        assert (tt[i, len(exp):] == 0).all()


def test_row_dataset():
    rows = torch.arange(12).reshape(4, 3)
    ds = RowDataset(rows)
    assert len(ds) == 4 and ds[2].tolist() == [6, 7, 8]


def test_train_collator_without_dedup(setup):
    kg, tokens, known, batch = setup
    out = TrainCollator(tokens, known, dedup_entities=False)(list(batch))
    assert set(out) == {"triples", "hr", "fn_mask", "self_mask", "tail", "head"}
    assert torch.equal(out["triples"], batch)
    b = len(batch)
    check_encoding(out["hr"], [tokens.hr_ids(h, r)[0] for h, r, _ in batch.tolist()],
                   [tokens.hr_ids(h, r)[1] for h, r, _ in batch.tolist()], tokens.pad_id)
    check_encoding(out["tail"], [tokens.entity_ids(t) for t in batch[:, 2].tolist()], None, tokens.pad_id)
    check_encoding(out["head"], [tokens.entity_ids(h) for h in batch[:, 0].tolist()], None, tokens.pad_id)
    fn, self_fn = in_batch_mask(batch, known)
    assert out["fn_mask"].shape == (b, b) and torch.equal(out["fn_mask"], fn)
    assert out["self_mask"].shape == (b,) and torch.equal(out["self_mask"], self_fn)
    assert out["self_mask"][2]  # (2, 0, 2) is a train self loop


def test_train_collator_dedup_reproduces_per_row_inputs(setup):
    kg, tokens, known, batch = setup
    plain = TrainCollator(tokens, known, dedup_entities=False)(list(batch))
    dedup = TrainCollator(tokens, known, dedup_entities=True)(list(batch))
    assert set(dedup) == {"triples", "hr", "fn_mask", "self_mask", "entities", "tail_index", "head_index"}
    for key in ("triples", "fn_mask", "self_mask"):
        assert torch.equal(dedup[key], plain[key])
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(dedup["hr"][key], plain["hr"][key])

    ents = dedup["entities"]
    distinct = set(batch[:, 0].tolist()) | set(batch[:, 2].tolist())
    assert ents["input_ids"].shape[0] == len(distinct)  # each entity encoded once
    assert (ents["token_type_ids"] == 0).all()
    assert dedup["tail_index"].shape == dedup["head_index"].shape == (len(batch),)
    for side, col, idx in (("tail", 2, dedup["tail_index"]), ("head", 0, dedup["head_index"])):
        for i in range(len(batch)):
            j = int(idx[i])
            got = strip(ents["input_ids"][j], ents["attention_mask"][j])
            assert got == strip(plain[side]["input_ids"][i], plain[side]["attention_mask"][i]), (side, i)
            assert got == tokens.entity_ids(int(batch[i, col]))
    # rows of `entities` are distinct entities
    rows = [tuple(strip(ents["input_ids"][j], ents["attention_mask"][j])) for j in range(len(distinct))]
    assert len(set(rows)) == len(rows)


def test_dedup_with_all_entities_distinct(setup):
    kg, tokens, known, _ = setup
    batch = torch.tensor([(0, 0, 1), (2, 0, 3), (4, 0, 5)])
    out = TrainCollator(tokens, known)(list(batch))
    assert out["entities"]["input_ids"].shape[0] == 6
    assert sorted(out["tail_index"].tolist() + out["head_index"].tolist()) == list(range(6))


def test_query_collator(setup):
    kg, tokens, _, batch = setup
    out = QueryCollator(tokens)(list(batch))
    assert set(out) == {"triples", "hr"}
    assert torch.equal(out["triples"], batch)
    check_encoding(out["hr"], [tokens.hr_ids(h, r)[0] for h, r, _ in batch.tolist()],
                   [tokens.hr_ids(h, r)[1] for h, r, _ in batch.tolist()], tokens.pad_id)


def test_entity_collator(setup):
    kg, tokens, _, _ = setup
    rows = [torch.tensor(e) for e in (3, 0, 7, 4)]
    out = EntityCollator(tokens)(rows)
    assert set(out) == {"entity_ids", "entity"}
    assert out["entity_ids"].tolist() == [3, 0, 7, 4]
    check_encoding(out["entity"], [tokens.entity_ids(e) for e in (3, 0, 7, 4)], None, tokens.pad_id)


def test_query_collator_keeps_the_query_index_column(setup):
    kg, tokens, _, batch = setup
    rows = torch.cat([batch, torch.arange(len(batch)).unsqueeze(1) + 10], dim=1)
    out = QueryCollator(tokens)(list(rows))
    assert torch.equal(out["triples"], batch) and out["query_index"].tolist() == list(range(10, 10 + len(batch)))


# ---- the vectorised collators reproduce the original per-example ones -----------------------------------
def _assert_equal_batches(got: dict, ref: dict) -> None:
    assert set(got) == set(ref)
    for key, value in ref.items():
        if isinstance(value, dict):
            _assert_equal_batches(got[key], value)
        else:
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            assert torch.equal(got[key], value), key


@pytest.mark.parametrize("kg_name", ["nations", "synthetic"])
@pytest.mark.parametrize("max_length", [5, 8, 16, 50])
def test_collators_equal_the_per_example_reference(kg_name, max_length):
    kg = load_builtin("nations") if kg_name == "nations" else synthetic_kg(40, 4, 300, seed=3)
    tokens = TokenCache.build(kg, make_tokenizer(), max_length)
    known = KnownTriples.train_of(kg)
    rows = kg.with_inverse(kg.train)[torch.randperm(2 * len(kg.train), generator=torch.Generator().manual_seed(0))]
    for batch in rows[:4 * 64].split(64):
        b = len(batch)
        for dedup in (False, True):
            got = TrainCollator(tokens, known, dedup_entities=dedup)(list(batch))
            ref = {"triples": batch, "hr": hr_reference(tokens, batch[:, 0], batch[:, 1])}
            ref["fn_mask"], ref["self_mask"] = in_batch_mask(batch, known)
            if dedup:
                ents, index = torch.unique(torch.cat([batch[:, 2], batch[:, 0]]), return_inverse=True)
                ref.update(entities=entity_reference(tokens, ents), tail_index=index[:b], head_index=index[b:])
            else:
                ref.update(tail=entity_reference(tokens, batch[:, 2]), head=entity_reference(tokens, batch[:, 0]))
            _assert_equal_batches(got, ref)
        numbered = torch.cat([batch, torch.arange(b).unsqueeze(1)], dim=1)
        _assert_equal_batches(QueryCollator(tokens)(list(numbered)),
                              {"triples": batch, "hr": hr_reference(tokens, batch[:, 0], batch[:, 1]), "query_index": torch.arange(b)})
    ids = torch.arange(kg.num_entities)
    _assert_equal_batches(EntityCollator(tokens)(list(ids)),
                          {"entity_ids": ids, "entity": entity_reference(tokens, ids)})


# ---- data.link_graph: the collators leave out the training partner, evaluation shows every neighbour ----
@pytest.fixture(scope="module")
def link_setup():
    kg = link_kg()
    tok = minilm_tokenizer()
    return kg, tok, TokenCache.build(kg, tok, 24, link_graph=True, warn=False), KnownTriples.train_of(kg)


@pytest.mark.parametrize("dedup", [False, True])
def test_train_collator_link_graph_equals_simkgc(link_setup, dedup):
    kg, tok, tokens, known = link_setup
    rows = kg.with_inverse(kg.train)
    # every training example, in batches that repeat entities with and without their partner listed
    batches = [rows, rows[:12], torch.cat([rows[:5], rows[:5], rows[-3:]]), rows[[0, 17, 0, 17, 5]]]
    for batch in batches:
        out = TrainCollator(tokens, known, dedup_entities=dedup)(list(batch))
        refs = [simkgc_vectorize(kg, tok, h, r, t, 24, is_test=False) for h, r, t in batch.tolist()]
        check_encoding(out["hr"], [x["hr"] for x in refs], [x["hr_types"] for x in refs], tokens.pad_id)
        if dedup:
            enc = out["entities"]
            rows_ids = [strip(enc["input_ids"][i], enc["attention_mask"][i]) for i in range(len(enc["input_ids"]))]
            assert [rows_ids[i] for i in out["tail_index"].tolist()] == [x["tail"] for x in refs]
            assert [rows_ids[i] for i in out["head_index"].tolist()] == [x["head"] for x in refs]
            # one input per distinct (entity, whole text): an entity shown with and without its partner is two
            # (texts compared before truncation: cut at 24 pieces, different neighbour lists can look alike)
            full = [simkgc_vectorize(kg, tok, h, r, t, 10**6, is_test=False) for h, r, t in batch.tolist()]
            texts = {(t, tuple(x["tail"])) for t, x in zip(batch[:, 2].tolist(), full)}
            texts |= {(h, tuple(x["head"])) for h, x in zip(batch[:, 0].tolist(), full)}
            assert len(rows_ids) == len(texts)
            check_encoding(enc, rows_ids, None, tokens.pad_id)  # padded to the longest of the batch
        else:
            check_encoding(out["tail"], [x["tail"] for x in refs], None, tokens.pad_id)
            check_encoding(out["head"], [x["head"] for x in refs], None, tokens.pad_id)


def test_train_collator_link_graph_dedup_keeps_distinct_texts_apart(link_setup):
    kg, _, tokens, known = link_setup
    hub, n12, n8 = 0, kg.entity_ids.index("n12"), kg.entity_ids.index("n8")
    # the hub as head of (hub, n12): n12 left out; of (hub, n8): n8 is 11th, not listed -> the full text,
    # the same as the hub as tail of the inverse of (hub, n8)
    batch = torch.tensor([[hub, 1, n12], [hub, 1, n8], [n8, 3, hub]])
    out = TrainCollator(tokens, known, dedup_entities=True)(list(batch))
    head, tail = out["head_index"].tolist(), out["tail_index"].tolist()
    assert head[0] != head[1] and head[1] == tail[2]
    assert len(out["entities"]["input_ids"]) == 4  # hub without n12, hub, n12 without hub, n8 (no names shown)


def test_eval_collators_link_graph_equal_simkgc_without_exclusion(link_setup):
    kg, tok, tokens, _ = link_setup
    rows = kg.with_inverse(torch.cat([kg.valid, kg.test, kg.train[:4]]))  # a training triple too: no exclusion
    numbered = torch.cat([rows, torch.arange(len(rows)).unsqueeze(1)], dim=1)
    out = QueryCollator(tokens)(list(numbered))
    refs = [simkgc_vectorize(kg, tok, h, r, t, 24, is_test=True) for h, r, t in rows.tolist()]
    check_encoding(out["hr"], [x["hr"] for x in refs], [x["hr_types"] for x in refs], tokens.pad_id)
    ids = torch.tensor([13, 0, 15, 4, 6, 8])
    out = EntityCollator(tokens)(list(ids))
    check_encoding(out["entity"], [simkgc_vectorize(kg, tok, -1, 0, e, 24, is_test=True)["tail"] for e in ids.tolist()],
                   None, tokens.pad_id)


# ---- the training collate runs on one intra-op thread ------------------------------------------------------
from kgc_kd.data.batching import one_thread  # noqa: E402


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_one_thread_restores_the_count_also_on_errors(two_threads):
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="boom"):
        with one_thread():
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 1


class _ThreadsSeen(KnownTriples):
    """The real known-triple set, noting the intra-op thread count each mask is built with."""

    seen: list[int]

    def answers_among(self, h, r, candidates):
        self.seen.append(torch.get_num_threads())
        return super().answers_among(h, r, candidates)


def test_train_collator_masks_on_one_thread_and_restores_the_count(setup, two_threads):
    kg, tokens, known, batch = setup
    spy = _ThreadsSeen(kg.with_inverse(kg.train), kg.num_entities, 2 * kg.num_relations)
    spy.seen = []
    out = TrainCollator(tokens, spy)(list(batch))
    assert spy.seen == [1] and torch.get_num_threads() == 2
    assert torch.equal(out["fn_mask"], in_batch_mask(batch, known)[0])
    with pytest.raises(IndexError):  # an entity id beyond the token table fails inside the collate ...
        TrainCollator(tokens, spy)(list(torch.tensor([[0, 0, 1], [99, 0, 2]])))
    assert torch.get_num_threads() == 2  # ... and the thread count is restored all the same
