"""kgc_kd.data.simkgc_json: SimKGC's preprocessed json layout, written by hand in each test."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from kgc_kd.data.io import DataFormatError, DataWarning
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


def test_clean_dir_gives_no_warning_and_no_notes(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kg = load_simkgc_dir(make_dir(tmp_path / "kg"), drop_unknown=True)
    assert kg.notes == {}


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_empty_split_is_an_error(tmp_path, split):
    d = make_dir(tmp_path / "kg", splits={**SPLITS, split: []})
    with pytest.raises(DataFormatError) as err:
        load_simkgc_dir(d)
    assert str(err.value) == (f"{d / f'{split}.txt.json'}: no triples; expected a JSON list of objects with keys "
                              "head_id, relation, tail_id")


def test_empty_entities_is_an_error(tmp_path):
    d = make_dir(tmp_path / "kg", entities=[])
    with pytest.raises(DataFormatError, match=r"entities\.json: no entities; expected a JSON list of objects"):
        load_simkgc_dir(d)


def test_not_a_simkgc_dir(tmp_path):
    assert not is_simkgc_dir(tmp_path)


# ---- errors -------------------------------------------------------------------------------------------
def test_entity_missing_key(tmp_path):
    d = make_dir(tmp_path / "kg", entities=[ENTITIES[0], {"entity_id": "02"}])
    with pytest.raises(DataFormatError) as err:
        load_simkgc_dir(d)
    # indent=2: "[" on line 1, item 0 on lines 2-6 (three keys), item 1 from line 7
    assert str(err.value) == (f"{d / 'entities.json'}:7: item 1: expected an object with keys entity_id, entity; "
                              "found {'entity_id': '02'}")


def test_triple_missing_key(tmp_path):
    bad = {"head_id": "01", "tail_id": "02"}
    d = make_dir(tmp_path / "kg", splits={**SPLITS, "train": [SPLITS["train"][0], bad]})
    with pytest.raises(DataFormatError) as err:
        load_simkgc_dir(d)
    # item 0 has five keys: lines 2-8; item 1 starts on line 9
    assert str(err.value) == (f"{d / 'train.txt.json'}:9: item 1: expected an object with keys head_id, relation, "
                              "tail_id; found {'head_id': '01', 'tail_id': '02'}")


def test_item_that_is_not_an_object(tmp_path):
    d = make_dir(tmp_path / "kg")
    (d / "test.txt.json").write_text('[{"head_id": "01", "relation": "r", "tail_id": "02"},\n\n  ["01", "r", "02"]]',
                                     encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"test\.txt\.json:3: item 1: expected an object with keys head_id"):
        load_simkgc_dir(d)


def test_unknown_head_id(tmp_path):
    d = make_dir(tmp_path / "kg", splits={**SPLITS, "valid": [ex("99", "hypernym", "01")]})
    with pytest.raises(DataFormatError) as err:
        load_simkgc_dir(d)
    assert str(err.value) == (f"{d / 'valid.txt.json'}:2: item 0: head_id '99' is not in entities.json; "
                              "set data.drop_unknown=true to skip such triples")


def test_unknown_tail_id(tmp_path):
    d = make_dir(tmp_path / "kg", splits={**SPLITS, "test": [ex("01", "hypernym", "02"), ex("01", "hypernym", "77")]})
    with pytest.raises(DataFormatError, match=r"test\.txt\.json:9: item 1: tail_id '77' is not in entities\.json"):
        load_simkgc_dir(d)


def test_drop_unknown_skips_counts_and_warns_per_split_file(tmp_path):
    valid = [ex("99", "hypernym", "01"), ex("03", "hypernym", "01"), ex("01", "new relation", "98")]
    test = [ex("4", "also see", "01"), ex("4", "also see", "x")]
    d = make_dir(tmp_path / "kg", splits={**SPLITS, "valid": valid, "test": test})
    with pytest.warns(DataWarning) as record:
        kg = load_simkgc_dir(d, drop_unknown=True)
    assert [str(w.message) for w in record] == [
        f"{d / 'valid.txt.json'}:2: 2 triples skipped: unknown entity/relation ids (data.drop_unknown=true), first "
        "at line 2: item 0: head_id '99' is not in entities.json",
        f"{d / 'test.txt.json'}:9: 1 triple skipped: unknown entity/relation ids (data.drop_unknown=true), first at "
        "line 9: item 1: tail_id 'x' is not in entities.json",
    ]
    assert kg.valid.tolist() == [[2, 0, 0]] and kg.test.tolist() == [[3, 2, 0]]
    assert kg.relation_ids == ["hypernym", "member meronym", "also see"]  # a skipped triple adds no relation
    assert kg.notes == {"valid.unknown_dropped": 2, "test.unknown_dropped": 1}


def test_drop_unknown_leaving_a_split_empty_is_an_error(tmp_path):
    d = make_dir(tmp_path / "kg", splits={**SPLITS, "valid": [ex("99", "hypernym", "01")]})
    with pytest.warns(DataWarning, match=r"valid\.txt\.json:2: 1 triple skipped"):
        with pytest.raises(DataFormatError) as err:
            load_simkgc_dir(d, drop_unknown=True)
    assert str(err.value).startswith(f"{d / 'valid.txt.json'}:2: no triples left: all 1 have unknown")


def test_duplicate_triples_dropped_in_order(tmp_path):
    train = [ex("01", "hypernym", "02"), ex("02", "member meronym", "03"), ex("01", " hypernym", "02"),
             ex("4", "hypernym", "01")]
    d = make_dir(tmp_path / "kg", splits={**SPLITS, "train": train})
    with pytest.warns(DataWarning) as record:
        kg = load_simkgc_dir(d)
    # items of five keys take 7 lines each: item 2 starts on line 2 + 2 * 7 = 16
    assert [str(w.message) for w in record] == [
        f"{d / 'train.txt.json'}:16: 1 duplicate triple removed (the first occurrence is kept), first at line 16: "
        "a repeat of line 2"]
    assert kg.train.tolist() == [[0, 0, 1], [1, 1, 2], [3, 0, 0]]
    assert kg.notes == {"train.duplicates": 1}


def test_duplicates_in_compact_json_found_on_one_line(tmp_path):
    d = make_dir(tmp_path / "kg")
    (d / "valid.txt.json").write_text(json.dumps([ex("03", "hypernym", "01")] * 3), encoding="utf-8")
    with pytest.warns(DataWarning, match=r"valid\.txt\.json:1: 2 duplicate triples removed"):
        kg = load_simkgc_dir(d)
    assert kg.valid.tolist() == [[2, 0, 0]]


def test_empty_entity_name_uses_the_id(tmp_path):
    ents = [*ENTITIES, {"entity_id": "05", "entity": "", "entity_desc": "a thing"}, {"entity_id": "06", "entity": None}]
    d = make_dir(tmp_path / "kg", entities=ents)
    with pytest.warns(DataWarning) as record:
        kg = load_simkgc_dir(d)
    # four items of 3, 3, 2 and 3 keys: lines 2-6, 7-11, 12-15, 16-20; item 4 starts on line 21
    assert [str(w.message) for w in record] == [
        f"{d / 'entities.json'}:21: 2 of 6 entities have an empty \"entity\" name; their ids are used as names, "
        "e.g. '05'"]
    assert kg.entity_names[4:] == ["05", "06"]
    assert kg.entity_descs[4:] == ["a thing", ""]
    assert kg.notes == {"entities_without_text": 2}


def test_duplicate_entity_id(tmp_path):
    d = make_dir(tmp_path / "kg", entities=[*ENTITIES, {"entity_id": "02", "entity": "again"}])
    with pytest.raises(DataFormatError) as err:
        load_simkgc_dir(d)
    assert str(err.value) == f"{d / 'entities.json'}:21: item 4: entity_id '02' appears twice (first at line 7)"


def test_empty_relation(tmp_path):
    d = make_dir(tmp_path / "kg", splits={**SPLITS, "test": [ex("01", "  ", "02")]})
    with pytest.raises(DataFormatError, match=r"test\.txt\.json:2: item 0: empty relation; expected"):
        load_simkgc_dir(d)


def test_invalid_json(tmp_path):
    d = make_dir(tmp_path / "kg")
    (d / "test.txt.json").write_text('[\n  {"head_id": "01",\n', encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        load_simkgc_dir(d)
    assert str(d / "test.txt.json") in str(err.value) and "invalid JSON" in str(err.value)


@pytest.mark.parametrize("text, line", [
    ('[\n  {"head_id": "01", "relation": "r", "tail_id": "02"}\n  {"head_id": "02"}]', 3),  # missing comma
    ('[\n  {"head_id": "01", "relation": "r", "tail_id": "02"},\n\n  {"head_id": 02}]', 4),  # bad number
    ('[{"head_id": "01", "relation": "r", "tail_id": "02"}]\n\n]', 3),  # extra data
    ('[\n  {"head_id": "01", "relation": "r", "tail_id": "02"},\n', 3),  # cut off
])
def test_invalid_json_names_the_line(tmp_path, text, line):
    d = make_dir(tmp_path / "kg")
    (d / "train.txt.json").write_text(text, encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        load_simkgc_dir(d)
    msg = str(err.value)
    assert msg.startswith(f"{d / 'train.txt.json'}:{line}: invalid JSON (")
    assert msg.endswith("expected a JSON list of objects with keys head_id, relation, tail_id")


def test_not_a_list(tmp_path):
    d = make_dir(tmp_path / "kg")
    (d / "entities.json").write_text('{"01": "x"}', encoding="utf-8")
    with pytest.raises(DataFormatError, match="expected a JSON list") as err:
        load_simkgc_dir(d)
    assert "entities.json" in str(err.value)


def test_not_utf8_json(tmp_path):
    d = make_dir(tmp_path / "kg")
    (d / "entities.json").write_bytes(b'[\n {"entity_id": "01", "entity": "caf\xe9"}]')
    with pytest.raises(DataFormatError) as err:
        load_simkgc_dir(d)
    assert str(err.value) == (f"{d / 'entities.json'}:2: not UTF-8 text: byte 0xe9 at column 36 (byte offset 37); "
                              "expected UTF-8 text; re-save the file as UTF-8")


def test_utf8_byte_order_mark_accepted(tmp_path):
    d = make_dir(tmp_path / "kg")
    (d / "valid.txt.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(SPLITS["valid"]).encode())
    assert load_simkgc_dir(d).valid.tolist() == [[2, 0, 0]]


def test_missing_split_file(tmp_path):
    d = make_dir(tmp_path / "kg")
    (d / "valid.txt.json").unlink()
    with pytest.raises(DataFormatError, match=r"missing valid\.txt\.json"):
        load_simkgc_dir(d)
