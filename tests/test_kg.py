"""kgc_kd.data.kg.KG: validation, inverse triples, text look-ups and the indexes built on the splits."""

from __future__ import annotations

import pytest
import torch

from kgc_kd.data.kg import KG
from kgc_kd.eval.filter import FilterIndex

# A hand-built KG: 4 entities, 2 relations (ids 2 and 3 are their inverses).
TRAIN = [(0, 0, 2), (0, 0, 1), (1, 0, 2), (0, 1, 3)]
VALID = [(2, 1, 3)]
TEST = [(3, 0, 0), (0, 0, 3)]


def make_kg(**overrides) -> KG:
    kw = dict(
        name="tiny",
        entity_ids=["e0", "e1", "e2", "e3"],
        entity_names=["alpha", "Beta", "gamma ray", "Gamma Ray"],
        entity_descs=["first", "", "a ray", "another ray"],
        relation_ids=["r0", "r1"],
        relation_texts=["part of", "has color"],
        train=torch.tensor(TRAIN),
        valid=torch.tensor(VALID),
        test=torch.tensor(TEST),
    )
    kw.update(overrides)
    return KG(**kw)


# ---- validation ------------------------------------------------------------------------------------------
def test_valid_kg_normalises_splits_to_long_n_by_3():
    kg = make_kg(valid=[[2, 1, 3]], test=[3, 0, 0, 0, 0, 3])  # python lists / flat lists are accepted
    for split in ("train", "valid", "test"):
        t = kg.split(split)
        assert t.dtype == torch.long and t.shape[1] == 3
    assert kg.valid.tolist() == [[2, 1, 3]]
    assert kg.test.tolist() == [[3, 0, 0], [0, 0, 3]]
    assert kg.num_entities == 4 and kg.num_relations == 2


@pytest.mark.parametrize(
    "overrides",
    [
        {"entity_names": ["alpha", "Beta", "gamma ray"]},
        {"entity_descs": ["", "", "", "", ""]},
        {"relation_texts": ["part of"]},
    ],
)
def test_length_mismatch_raises(overrides):
    with pytest.raises(ValueError, match="differ in length"):
        make_kg(**overrides)


def test_duplicate_entity_ids_raise():
    with pytest.raises(ValueError, match="duplicate entity ids"):
        make_kg(entity_ids=["e0", "e1", "e1", "e3"])


@pytest.mark.parametrize(
    "split, bad",
    [
        ("train", (4, 0, 1)),  # head == num_entities
        ("valid", (0, 0, 4)),  # tail == num_entities
        ("test", (-1, 0, 1)),  # negative head
        ("train", (0, 2, 1)),  # relation == num_relations (inverse ids are not stored)
        ("valid", (0, -1, 1)),  # negative relation
    ],
)
def test_out_of_range_ids_raise(split, bad):
    base = {"train": TRAIN, "valid": VALID, "test": TEST}[split]
    with pytest.raises(ValueError, match=f"{split} triples reference unknown"):
        make_kg(**{split: torch.tensor(base + [bad])})


def test_empty_train_raises_but_empty_valid_is_fine():
    with pytest.raises(ValueError, match="train split is empty"):
        make_kg(train=torch.zeros(0, 3, dtype=torch.long))
    kg = make_kg(valid=torch.zeros(0, 3, dtype=torch.long))
    assert kg.valid.shape == (0, 3)


def test_split_unknown_name():
    with pytest.raises(KeyError, match="unknown split"):
        make_kg().split("dev")


# ---- inverse triples and relation text --------------------------------------------------------------------
def test_with_inverse():
    kg = make_kg()
    got = kg.with_inverse(torch.tensor([[0, 0, 2], [0, 1, 3]]))
    assert got.tolist() == [[0, 0, 2], [0, 1, 3], [2, 2, 0], [3, 3, 0]]


def test_relation_text_forward_and_inverse():
    kg = make_kg()
    assert [kg.relation_text(r) for r in range(4)] == ["part of", "has color", "inverse part of", "inverse has color"]


# ---- indexes -------------------------------------------------------------------------------------------
def test_filter_index_covers_all_splits_both_directions():
    kg = make_kg()
    expected = {
        # forward: train + valid + test
        (0, 0): [1, 2, 3],
        (1, 0): [2],
        (0, 1): [3],
        (2, 1): [3],
        (3, 0): [0],
        # inverse (t, r + 2, h)
        (2, 2): [0, 1],
        (1, 2): [0],
        (3, 3): [0, 2],
        (0, 2): [3],
        (3, 2): [0],
    }
    got = kg.filter_index
    assert isinstance(got, FilterIndex) and len(got) == len(expected)
    assert set(got) == set(expected)
    for key, tails in expected.items():
        assert got[key].dtype == torch.long
        assert got[key].tolist() == tails, key


# ---- look-ups ------------------------------------------------------------------------------------------
def test_entity_index_by_id_and_case_insensitive_name():
    kg = make_kg()
    assert kg.entity_index("e2") == 2
    assert kg.entity_index("alpha") == 0
    assert kg.entity_index("BETA") == 1
    assert kg.entity_index("beta") == 1


def test_entity_index_id_wins_over_name():
    kg = make_kg(entity_names=["e1", "Beta", "gamma ray", "Gamma Ray"])  # entity 0 is *named* like entity 1's id
    assert kg.entity_index("e1") == 1


def test_entity_index_ambiguous_name():
    kg = make_kg()
    with pytest.raises(KeyError, match="ambiguous") as err:
        kg.entity_index("GAMMA RAY")
    assert "e2" in str(err.value) and "e3" in str(err.value)


def test_entity_index_missing_with_and_without_suggestion():
    kg = make_kg()
    with pytest.raises(KeyError, match="did you mean") as err:
        kg.entity_index("gamma")
    assert "gamma ray" in str(err.value) and "Gamma Ray" in str(err.value)
    with pytest.raises(KeyError) as err:
        kg.entity_index("zzz")
    assert "no entity 'zzz'" in str(err.value) and "did you mean" not in str(err.value)


def test_relation_index():
    kg = make_kg()
    assert kg.relation_index("r0") == 0
    assert kg.relation_index("r1") == 1
    assert kg.relation_index("part of") == 0
    assert kg.relation_index("has color") == 1
    assert kg.relation_index("inverse part of") == 2
    assert kg.relation_index("inverse has color") == 3
    with pytest.raises(KeyError, match="no relation 'is near'"):
        kg.relation_index("is near")


def test_summary_mentions_sizes():
    assert make_kg().summary() == "tiny: 4 entities, 2 relations, 4 / 1 / 2 train/valid/test triples"


def test_notes_default_empty_and_outside_repr():  # and not saved in an export: tests/test_kg_export.py
    kg = make_kg()
    assert kg.notes == {}
    noted = make_kg(notes={"valid.unknown_dropped": 2})
    assert noted.notes == {"valid.unknown_dropped": 2}
    assert "notes" not in repr(noted) and "unknown_dropped" not in repr(noted)
    assert make_kg().notes is not kg.notes  # not a shared default
