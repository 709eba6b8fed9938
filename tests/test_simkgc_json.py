"""kgc_kd.data.simkgc_json: SimKGC's preprocessed json layout, written by hand in each test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kgc_kd.data.io import DataFormatError
from kgc_kd.data.simkgc_json import is_simkgc_dir, load_simkgc_dir, wordnet_name

ENTITIES = [
    {"entity_id": "01", "entity": "__family_alcidae_NN_1", "entity_desc": "seabirds of northern seas"},
    {"entity_id": "02", "entity": "__dog_NN_1", "entity_desc": ""},
    {"entity_id": "03", "entity": "cat"},  # no description key at all
    {"entity_id": 4, "entity": "__run_VB_12", "entity_desc": None},  # numeric id, null description
]


def ex(h, r, t):
    return {"head_id": h, "head": "", "relation": r, "tail_id": t, "tail": ""}


SPLITS = {
    "train": [ex("01", "hypernym", "02"), ex("02", " member meronym ", "03")],
    "valid": [ex("03", "hypernym", "01")],
    "test": [ex("4", "also see", "01")],
}


def make_dir(d: Path, entities=ENTITIES, splits=SPLITS) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "entities.json").write_text(json.dumps(entities, indent=2), encoding="utf-8")
    for split, rows in splits.items():
        (d / f"{split}.txt.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return d


@pytest.mark.parametrize(
    "raw, name",
    [
        ("__family_alcidae_NN_1", "family alcidae"),
        ("__dog_NN_1", "dog"),
        ("__run_VB_12", "run"),
        ("__mid-atlantic_JJ_1", "mid-atlantic"),
        ("dog", "dog"),  # not WordNet-shaped: unchanged
        ("Barack Obama", "Barack Obama"),
        ("", ""),
    ],
)
def test_wordnet_name(raw, name):
    assert wordnet_name(raw) == name


def test_wordnet_name_as_written_by_simkgc_preprocess():
    assert wordnet_name("family_alcidae_NN_1") == "family alcidae"


def test_load(tmp_path):
    d = make_dir(tmp_path / "WN18RR")
    assert is_simkgc_dir(d)
    kg = load_simkgc_dir(d)
    assert kg.name == "WN18RR" and kg.source == f"simkgc:{d}"
    assert kg.entity_ids == ["01", "02", "03", "4"]
    assert kg.entity_names == ["family alcidae", "dog", "cat", "run"]
    assert kg.entity_descs == ["seabirds of northern seas", "", "", ""]
    # relations in order of first appearance over train, valid, test; text stripped; text doubles as id
    assert kg.relation_ids == ["hypernym", "member meronym", "also see"]
    assert kg.relation_texts == kg.relation_ids
    assert kg.train.tolist() == [[0, 0, 1], [1, 1, 2]]
    assert kg.valid.tolist() == [[2, 0, 0]]
    assert kg.test.tolist() == [[3, 2, 0]]


def test_empty_valid_split(tmp_path):
    kg = load_simkgc_dir(make_dir(tmp_path / "kg", splits={**SPLITS, "valid": []}))
    assert kg.valid.shape == (0, 3)


def test_not_a_simkgc_dir(tmp_path):
    assert not is_simkgc_dir(tmp_path)


# ---- errors -------------------------------------------------------------------------------------------
def test_entity_missing_key(tmp_path):
    d = make_dir(tmp_path / "kg", entities=[ENTITIES[0], {"entity_id": "02"}])
    with pytest.raises(DataFormatError) as err:
        load_simkgc_dir(d)
    msg = str(err.value)
    assert str(d / "entities.json") in msg and "item 1" in msg and "entity_id, entity" in msg


def test_triple_missing_key(tmp_path):
    bad = {"head_id": "01", "tail_id": "02"}
    d = make_dir(tmp_path / "kg", splits={**SPLITS, "train": [SPLITS["train"][0], bad]})
    with pytest.raises(DataFormatError) as err:
        load_simkgc_dir(d)
    assert str(d / "train.txt.json") in str(err.value) and "item 1" in str(err.value)


def test_unknown_head_id(tmp_path):
    d = make_dir(tmp_path / "kg", splits={**SPLITS, "valid": [ex("99", "hypernym", "01")]})
    with pytest.raises(DataFormatError) as err:
        load_simkgc_dir(d)
    msg = str(err.value)
    assert str(d / "valid.txt.json") in msg and "head_id" in msg and "'99'" in msg


def test_unknown_tail_id(tmp_path):
    d = make_dir(tmp_path / "kg", splits={**SPLITS, "test": [ex("01", "hypernym", "77")]})
    with pytest.raises(DataFormatError, match="tail_id '77'"):
        load_simkgc_dir(d)


def test_invalid_json(tmp_path):
    d = make_dir(tmp_path / "kg")
    (d / "test.txt.json").write_text('[\n  {"head_id": "01",\n', encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        load_simkgc_dir(d)
    assert str(d / "test.txt.json") in str(err.value) and "invalid JSON" in str(err.value)


def test_not_a_list(tmp_path):
    d = make_dir(tmp_path / "kg")
    (d / "entities.json").write_text('{"01": "x"}', encoding="utf-8")
    with pytest.raises(DataFormatError, match="expected a JSON list") as err:
        load_simkgc_dir(d)
    assert "entities.json" in str(err.value)


def test_missing_split_file(tmp_path):
    d = make_dir(tmp_path / "kg")
    (d / "valid.txt.json").unlink()
    with pytest.raises(DataFormatError, match=r"missing valid\.txt\.json"):
        load_simkgc_dir(d)
