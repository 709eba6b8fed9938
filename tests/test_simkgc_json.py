"""kgc_kd.data.simkgc_json: SimKGC's preprocessed json layout, written by hand in each test."""

from __future__ import annotations

import json
import random
import re
import warnings
from pathlib import Path

import pytest

from kgc_kd.data.io import DataFormatError, DataWarning, read_utf8
from kgc_kd.data.simkgc_json import JsonError, NotAList, is_simkgc_dir, iter_json_items, load_simkgc_dir, wordnet_name

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


# ---- streaming: blocks of any size give the items, lines and errors of a whole-text decode --------------
_WS = re.compile(r"[ \t\n\r]*")


def reference_items(text: str) -> list[tuple[int, object]] | None:
    """The whole-text decoder this module used before it streamed: (line, item) of a top-level array,
    None if the text is not an array; raises json.JSONDecodeError (positions in `text`)."""
    dec = json.JSONDecoder()
    i = _WS.match(text).end()
    if not text.startswith("[", i):
        return None
    items, line, counted = [], 1, 0
    i = _WS.match(text, i + 1).end()
    if text.startswith("]", i):
        i += 1
    else:
        while True:
            obj, end = dec.raw_decode(text, i)
            line += text.count("\n", counted, i)
            counted = i
            items.append((line, obj))
            i = _WS.match(text, end).end()
            if text.startswith(",", i):
                i = _WS.match(text, i + 1).end()
            elif text.startswith("]", i):
                i += 1
                break
            else:
                raise json.JSONDecodeError("Expecting ',' delimiter or ']'", text, i)
    i = _WS.match(text, i).end()
    if i != len(text):
        raise json.JSONDecodeError("Extra data", text, i)
    return items


def random_json_array(rng: random.Random) -> str:
    words = ["a", "Zürich", "naïve", "日本語", "emoji \U0001F600", 'quote "x"', "back\\slash", "tab\tin", "", "1 2"]

    def value(depth=0):
        kind = rng.randrange(7 if depth < 2 else 4)
        if kind == 0:
            return rng.choice(words)
        if kind == 1:
            return rng.choice([0, -7, 123456789, 1.5e-3, 12.0])
        if kind == 2:
            return rng.choice([True, False, None])
        if kind == 3:
            return rng.choice(words) + str(rng.randrange(100))
        if kind in (4, 5):
            return {rng.choice(words) + str(k): value(depth + 1) for k in range(rng.randrange(4))}
        return [value(depth + 1) for _ in range(rng.randrange(3))]

    items = [value() for _ in range(rng.randrange(0, 12))]
    ws = lambda: rng.choice(["", " ", "\n", "\n\n  ", "\r\n", "\t"])  # noqa: E731
    body = ("," + ws()).join(json.dumps(x, indent=rng.choice([None, 2]), ensure_ascii=rng.random() < 0.3)
                             for x in items)
    return ws() + "[" + ws() + body + ws() + "]" + ws()


def stream(tmp_path, text: str | bytes, block_bytes: int):
    p = tmp_path / "x.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return list(iter_json_items(p, block_bytes=block_bytes))


BLOCKS = [1, 2, 3, 5, 17, 4096]


@pytest.mark.parametrize("seed", range(40))
def test_streamed_items_and_lines_equal_a_whole_text_decode(tmp_path, seed):
    rng = random.Random(seed)
    text = random_json_array(rng)
    expected = reference_items(text)
    for block in BLOCKS:
        assert stream(tmp_path, text, block) == expected, block


@pytest.mark.parametrize("seed", range(60))
def test_streamed_errors_name_the_line_and_column_of_a_whole_text_decode(tmp_path, seed):
    rng = random.Random(seed)
    text = random_json_array(rng)
    cut = rng.randrange(len(text))
    bad = text[:cut] + rng.choice(["", "}", "x", ",", "]", "\"", "[", "{\"a\" 1}"]) + text[cut + rng.randrange(2):]
    try:
        expected = reference_items(bad)
        if expected is None:  # not an array: the loader read it whole to say what it is
            expected = ("not a list", type(json.loads(bad)).__name__)
    except json.JSONDecodeError as err:
        expected = (err.msg, err.lineno, err.colno)
    for block in BLOCKS:
        try:
            got = stream(tmp_path, bad, block)
        except JsonError as err:
            got = (err.msg, err.line, err.column)
        except NotAList as err:
            got = ("not a list", type(err.value).__name__)
        assert got == expected, (block, bad)


@pytest.mark.parametrize("block", BLOCKS)
def test_load_in_tiny_blocks_equals_the_default(tmp_path, block):
    d = make_dir(tmp_path / "kg")
    (d / "valid.txt.json").write_text(json.dumps([ex("03", "hypernym", "01")] * 3), encoding="utf-8")  # one line
    with pytest.warns(DataWarning, match=r"valid\.txt\.json:1: 2 duplicate triples removed"):
        ref = load_simkgc_dir(d)
    with pytest.warns(DataWarning, match=r"valid\.txt\.json:1: 2 duplicate triples removed"):
        kg = load_simkgc_dir(d, block_bytes=block)
    for field in ("entity_ids", "entity_names", "entity_descs", "relation_ids", "relation_texts"):
        assert getattr(kg, field) == getattr(ref, field)
    for split in ("train", "valid", "test"):
        assert kg.split(split).tolist() == ref.split(split).tolist()


@pytest.mark.parametrize("block", [1, 2, 3, 7])
def test_messages_keep_their_lines_in_tiny_blocks(tmp_path, block):
    d = make_dir(tmp_path / "kg", entities=[ENTITIES[0], {"entity_id": "02"}])
    with pytest.raises(DataFormatError) as err:
        load_simkgc_dir(d, block_bytes=block)
    assert str(err.value).startswith(f"{d / 'entities.json'}:7: item 1: expected an object with keys")
    d = make_dir(tmp_path / "kg2")
    (d / "train.txt.json").write_text('[\n  {"head_id": "01", "relation": "r", "tail_id": "02"},\n\n  {"head_id": 02}]',
                                      encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"train\.txt\.json:4: invalid JSON \(Expecting ',' delimiter at "
                                              r"column 16\)"):  # "  {\"head_id\": 0" is 15 characters
        load_simkgc_dir(d, block_bytes=block)


@pytest.mark.parametrize("seed", range(20))
def test_not_utf8_in_blocks_is_reported_as_read_utf8_reports_it(tmp_path, seed):
    rng = random.Random(seed)
    text = random_json_array(rng).encode("utf-8")
    at = rng.randrange(len(text) + 1)
    raw = text[:at] + rng.choice([b"\xe9", b"\xff", b"\xc3", b"\x80", b"\xf0\x9f"]) + text[at:]
    p = tmp_path / "x.json"
    p.write_bytes(raw)
    with pytest.raises(DataFormatError) as ref:
        read_utf8(p)
    for block in BLOCKS:
        with pytest.raises(DataFormatError) as err:
            list(iter_json_items(p, block_bytes=block))
        assert str(err.value) == str(ref.value), block


@pytest.mark.parametrize("block", BLOCKS)
def test_byte_order_mark_and_multibyte_text_across_blocks(tmp_path, block):
    items = [{"entity_id": "é", "entity": "日本語 \U0001F600"}, {"entity_id": "x", "entity": "naïve"}]
    raw = b"\xef\xbb\xbf" + json.dumps(items, indent=1, ensure_ascii=False).encode("utf-8")
    assert stream(tmp_path, raw, block) == [(2, items[0]), (6, items[1])]


def test_an_error_is_raised_where_it_is_without_reading_the_rest(tmp_path):
    # a bad byte at the very end: read on to it and the message would be about UTF-8, not line 2
    rows = ",\n".join(json.dumps(ex("01", "hypernym", "02")) for _ in range(2000))
    raw = ('[\n{"head_id": "01",, "tail_id": "02"},\n' + rows + "]").encode() + b"\xff"
    for block in (64, 256, 4096):
        with pytest.raises(JsonError) as err:
            stream(tmp_path, raw, block)
        assert (err.value.msg, err.value.line, err.value.column) == (
            "Expecting property name enclosed in double quotes", 2, 18)  # at the second comma


def test_tabs_and_line_breaks_in_texts_become_spaces_warned_per_file(tmp_path):
    """A name with a line break and a description with a tab (entities.json item 1, line 7), and a
    relation with a tab in test.txt.json (seen twice: one text): one warning per file, naming its first line."""
    ents = [ENTITIES[0], {"entity_id": "02", "entity": "hot\ndog", "entity_desc": "a\tsausage"},
            *ENTITIES[2:]]
    splits = {**SPLITS, "test": [ex("4", "also\tsee", "01"), ex("01", "also\tsee", "4")]}
    d = make_dir(tmp_path / "kg", entities=ents, splits=splits)
    with pytest.warns(DataWarning) as record:
        kg = load_simkgc_dir(d)
    assert [str(w.message) for w in record] == [
        f"{d / 'entities.json'}:7: 2 texts hold a tab or a line break, each replaced by a space (predict's "
        "--queries file is tab-separated and could not name it), first at line 7: 'hot\\ndog'",
        f"{d / 'test.txt.json'}:2: 1 text holds a tab or a line break, each replaced by a space (predict's "
        "--queries file is tab-separated and could not name it), first at line 2: 'also\\tsee'",
    ]
    assert kg.entity_names[1] == "hot dog" and kg.entity_descs[1] == "a sausage"
    assert kg.relation_ids == kg.relation_texts == ["hypernym", "member meronym", "also see"]
    assert kg.test.tolist() == [[3, 2, 0], [0, 2, 3]]
    assert kg.notes == {"entities.json.tabs_or_line_breaks": 2, "test.txt.json.tabs_or_line_breaks": 1}


def test_valid_triples_in_train_warned_and_dropped_with_drop_overlap(tmp_path):
    splits = {**SPLITS, "valid": [ex("03", "hypernym", "01"), ex("01", "hypernym", "02")]}
    d = make_dir(tmp_path / "kg", splits=splits)
    with pytest.warns(DataWarning) as record:
        kg = load_simkgc_dir(d)
    assert [str(w.message) for w in record] == [
        f"{d / 'valid.txt.json'}:9: 1 valid triple also occurs in the train split, first at line 9; kept, so a "
        "model is evaluated on triples it was trained on (data.drop_overlap=true drops them)"]
    assert kg.valid.tolist() == [[2, 0, 0], [0, 0, 1]] and kg.notes == {}
    with pytest.warns(DataWarning, match=r"valid\.txt\.json:9: 1 valid triple .* dropped \(data\.drop_overlap=true\)"):
        kg = load_simkgc_dir(d, drop_overlap=True)
    assert kg.valid.tolist() == [[2, 0, 0]] and kg.notes == {"valid.overlap_dropped": 1}
