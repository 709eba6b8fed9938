"""kgc_kd.data.kgbert: directories in the KG-BERT layout, written by hand in each test."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from kgc_kd.data.builtin import load_builtin
from kgc_kd.data.io import DataFormatError, DataWarning
from kgc_kd.data.kgbert import is_kgbert_dir, load_kgbert_dir

REAL_UMLS = Path(__file__).resolve().parents[2] / "shared" / "data" / "umls"


def put(path: Path, lines: list[str], *, newline: str = "\n", final_newline: bool = True) -> Path:
    text = newline.join(lines) + (newline if final_newline else "")
    path.write_bytes(text.encode("utf-8"))
    return path


def make_dir(d: Path, *, text_ext: str = ".txt", newline: str = "\n", final_newline: bool = True,
             entities_txt: bool = True, long_text: bool = True, dev_name: str = "dev.tsv") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    kw = {"newline": newline, "final_newline": final_newline}
    put(d / f"entity2text{text_ext}", ["e1\tred thing", "e2\tblue thing", "e3\tgreen thing"], **kw)
    put(d / f"relation2text{text_ext}", ["r1\tpart of", "has_color\thas color"], **kw)
    if long_text:
        put(d / f"entity2textlong{text_ext}", ["e1\tred thing is a red object", "e2\t"], **kw)
    if entities_txt:
        put(d / "entities.txt", ["e3", "e1", "e2"], **kw)
    put(d / "train.tsv", ["e1\tr1\te2", "e2\thas_color\te3"], **kw)
    put(d / dev_name, ["e3\tr1\te1"], **kw)
    put(d / "test.tsv", ["e1\thas_color\te3"], **kw)
    return d


def test_basic_layout(tmp_path):
    d = make_dir(tmp_path / "mykg")
    assert is_kgbert_dir(d)
    kg = load_kgbert_dir(d)
    assert kg.name == "mykg"
    assert kg.source == f"kgbert:{d}"
    assert kg.entity_ids == ["e3", "e1", "e2"]  # the order of entities.txt
    assert kg.entity_names == ["green thing", "red thing", "blue thing"]
    assert kg.entity_descs == ["", "red thing is a red object", ""]  # empty long text -> no description
    assert kg.relation_ids == ["r1", "has_color"]
    assert kg.relation_texts == ["part of", "has color"]
    assert kg.train.tolist() == [[1, 0, 2], [2, 1, 0]]
    assert kg.valid.tolist() == [[0, 0, 1]]
    assert kg.test.tolist() == [[1, 1, 0]]


@pytest.mark.parametrize("text_ext", [".txt", ".tsv"])
@pytest.mark.parametrize("newline, final_newline", [("\n", True), ("\n", False), ("\r\n", True), ("\r\n", False)])
def test_file_variants_give_the_same_kg(tmp_path, text_ext, newline, final_newline):
    ref = load_kgbert_dir(make_dir(tmp_path / "ref"))
    kg = load_kgbert_dir(make_dir(tmp_path / "var", text_ext=text_ext, newline=newline, final_newline=final_newline))
    assert kg.entity_ids == ref.entity_ids
    assert kg.entity_names == ref.entity_names
    assert kg.entity_descs == ref.entity_descs
    assert kg.relation_ids == ref.relation_ids and kg.relation_texts == ref.relation_texts
    for split in ("train", "valid", "test"):
        assert kg.split(split).tolist() == ref.split(split).tolist()


def test_valid_txt_instead_of_dev_tsv(tmp_path):
    kg = load_kgbert_dir(make_dir(tmp_path / "kg", dev_name="valid.txt"))
    assert kg.valid.tolist() == [[0, 0, 1]]


def test_without_entities_txt_order_of_entity2text(tmp_path):
    kg = load_kgbert_dir(make_dir(tmp_path / "kg", entities_txt=False))
    assert kg.entity_ids == ["e1", "e2", "e3"]
    assert kg.entity_names == ["red thing", "blue thing", "green thing"]
    assert kg.train.tolist() == [[0, 0, 1], [1, 1, 2]]


def test_use_long_text_false_and_missing_long_file(tmp_path):
    kg = load_kgbert_dir(make_dir(tmp_path / "a"), use_long_text=False)
    assert kg.entity_descs == ["", "", ""]
    kg = load_kgbert_dir(make_dir(tmp_path / "b", long_text=False))
    assert kg.entity_descs == ["", "", ""]
    assert kg.entity_names == ["green thing", "red thing", "blue thing"]


def test_name_separator_splits_lemma_and_definition(tmp_path):
    d = tmp_path / "wn"
    d.mkdir()
    put(d / "entity2text.txt", ["01\tland reform, a redistribution of land", "02\tdog", "03\ta, b, c", "04"])
    put(d / "relation2text.txt", ["_hypernym\thypernym"])
    for split in ("train.tsv", "dev.tsv", "test.tsv"):
        put(d / split, ["01\t_hypernym\t02"])
    with pytest.warns(DataWarning, match=r"entity2text\.txt:4: 1 of 4 entities have no text.* e\.g\. '04'"):
        kg = load_kgbert_dir(d, name_separator=", ")
    assert kg.entity_names == ["land reform", "dog", "a", "04"]  # empty text -> the id
    assert kg.notes == {"entities_without_text": 1}
    assert kg.entity_descs == ["a redistribution of land", "", "b, c", ""]
    with pytest.warns(DataWarning, match=r"e\.g\. '04'"):
        plain = load_kgbert_dir(d)
    assert plain.entity_names == ["land reform, a redistribution of land", "dog", "a, b, c", "04"]
    assert plain.entity_descs == ["", "", "", ""]


def test_long_text_overrides_the_separated_definition(tmp_path):
    d = tmp_path / "wn"
    d.mkdir()
    put(d / "entity2text.txt", ["01\tland reform, a redistribution of land", "02\tdog"])
    put(d / "entity2textlong.txt", ["01\tland reform is a long text"])
    put(d / "relation2text.txt", ["r\trel"])
    for split in ("train.tsv", "dev.tsv", "test.tsv"):
        put(d / split, ["01\tr\t02"])
    kg = load_kgbert_dir(d, name_separator=", ")
    assert kg.entity_names == ["land reform", "dog"]
    assert kg.entity_descs == ["land reform is a long text", ""]


# ---- errors -------------------------------------------------------------------------------------------
def test_malformed_split_line(tmp_path):
    d = make_dir(tmp_path / "kg")
    put(d / "train.tsv", ["e1\tr1\te2", "e2 has_color e3"])
    with pytest.raises(DataFormatError) as err:
        load_kgbert_dir(d)
    assert f"{d / 'train.tsv'}:2:" in str(err.value)


def test_extra_column_in_split(tmp_path):
    d = make_dir(tmp_path / "kg")
    put(d / "test.tsv", ["e1\thas_color\te3\textra"])
    with pytest.raises(DataFormatError, match=r"test\.tsv:1:"):
        load_kgbert_dir(d)


def test_unknown_entity_in_split(tmp_path):
    d = make_dir(tmp_path / "kg")
    put(d / "dev.tsv", ["e3\tr1\te1", "e3\tr1\tnope"])
    with pytest.raises(DataFormatError) as err:
        load_kgbert_dir(d)
    msg = str(err.value)
    assert f"{d / 'dev.tsv'}:2:" in msg
    assert "'nope'" in msg


def test_clean_dir_gives_no_warning_and_no_notes(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kg = load_kgbert_dir(make_dir(tmp_path / "kg"), drop_unknown=True)
    assert kg.notes == {}


@pytest.mark.parametrize("name,lines,expected", [
    ("dev.tsv", ["e3\tr1\te1", "", "e3 r1 e2"], ":3: expected 3 tab-separated fields, found 1: 'e3 r1 e2'"),
    ("entity2text.txt", ["e1\tred thing", "e2\tblue thing", "\tgreen thing"],
     ":3: empty id; expected id<TAB>text: 'green thing'"),
    ("entities.txt", ["e3", "e1", "e2", "e1"], ":4: id 'e1' appears twice (first at line 2)"),
    ("test.tsv", ["e1\thas_color\te3", "e1\tr7\te3"],
     ":2: unknown relation id 'r7' (not in the entity/relation files); set data.drop_unknown=true to skip such triples"),
], ids=["malformed split line", "empty text id", "entities.txt duplicate", "unknown id names the option"])
def test_bad_line_names_file_line_and_expectation(tmp_path, name, lines, expected):
    d = make_dir(tmp_path / "kg")
    put(d / name, lines)
    with pytest.raises(DataFormatError) as err:
        load_kgbert_dir(d)
    assert str(err.value) == f"{d / name}{expected}"


def test_drop_unknown_skips_counts_and_warns_per_split_file(tmp_path):
    d = make_dir(tmp_path / "kg")
    put(d / "dev.tsv", ["e3\tr1\te1", "e3\tr1\tnope", "e2\tr1\te1", "x\tr1\ty", "e2\tr9\te1"])
    put(d / "test.tsv", ["e1\thas_color\te3", "", "e1\thas_color\tgone"])
    with pytest.warns(DataWarning) as record:
        kg = load_kgbert_dir(d, drop_unknown=True)
    assert [str(w.message) for w in record] == [
        f"{d / 'dev.tsv'}:2: 3 triples skipped: unknown entity/relation ids (data.drop_unknown=true), first at "
        "line 2: unknown tail id 'nope' (not in the entity/relation files)",
        f"{d / 'test.tsv'}:3: 1 triple skipped: unknown entity/relation ids (data.drop_unknown=true), first at "
        "line 3: unknown tail id 'gone' (not in the entity/relation files)",
    ]
    assert kg.valid.tolist() == [[0, 0, 1], [2, 0, 1]]  # entities.txt order: e3 e1 e2
    assert kg.test.tolist() == [[1, 1, 0]]
    assert kg.train.tolist() == [[1, 0, 2], [2, 1, 0]]
    assert kg.notes == {"valid.unknown_dropped": 3, "test.unknown_dropped": 1}


def test_drop_unknown_leaving_a_split_empty_is_an_error(tmp_path):
    d = make_dir(tmp_path / "kg")
    put(d / "test.tsv", ["e1\thas_color\tgone", "gone\tr1\te1"])
    with pytest.warns(DataWarning, match=r"test\.tsv:1: 2 triples skipped"):
        with pytest.raises(DataFormatError) as err:
            load_kgbert_dir(d, drop_unknown=True)
    msg = str(err.value)
    assert msg.startswith(f"{d / 'test.tsv'}:1: no triples left: all 2 have unknown entity/relation ids")
    assert msg.endswith("expected lines head<TAB>relation<TAB>tail with known ids")


@pytest.mark.parametrize("split_file", ["train.tsv", "dev.tsv", "test.tsv"])
@pytest.mark.parametrize("lines", [[], ["", "  "]])
def test_empty_split_file(tmp_path, split_file, lines):
    d = make_dir(tmp_path / "kg")
    put(d / split_file, lines, final_newline=bool(lines))
    with pytest.raises(DataFormatError) as err:
        load_kgbert_dir(d)
    assert str(err.value) == f"{d / split_file}: no triples; expected lines head<TAB>relation<TAB>tail"


def test_duplicate_triples_dropped_in_order_one_warning_per_file(tmp_path):
    d = make_dir(tmp_path / "kg")
    put(d / "train.tsv", ["e1\tr1\te2", "e2\thas_color\te3", "e1\tr1\te2", "e3\thas_color\te1",
                          "e2\thas_color\te3"])
    put(d / "test.tsv", ["e1\thas_color\te3", "e1\thas_color\te3"])
    with pytest.warns(DataWarning) as record:
        kg = load_kgbert_dir(d)
    assert [str(w.message) for w in record] == [
        f"{d / 'train.tsv'}:3: 2 duplicate triples removed (the first occurrence is kept), first at line 3: "
        "a repeat of line 1",
        f"{d / 'test.tsv'}:2: 1 duplicate triple removed (the first occurrence is kept), first at line 2: "
        "a repeat of line 1",
    ]
    assert kg.train.tolist() == [[1, 0, 2], [2, 1, 0], [0, 1, 1]]
    assert kg.test.tolist() == [[1, 1, 0]]
    assert kg.notes == {"train.duplicates": 2, "test.duplicates": 1}


def test_entities_txt_id_without_text_uses_the_id(tmp_path):
    d = make_dir(tmp_path / "kg")
    put(d / "entities.txt", ["e3", "e1", "e2", "e9"])
    with pytest.warns(DataWarning) as record:
        kg = load_kgbert_dir(d)
    assert [str(w.message) for w in record] == [
        f"{d / 'entities.txt'}:4: 1 of 4 entities have no text (no line or an empty one in entity2text.txt); "
        "their ids are used as names, e.g. 'e9' (listed in entities.txt, no line in entity2text.txt)"]
    assert kg.entity_ids == ["e3", "e1", "e2", "e9"]
    assert kg.entity_names == ["green thing", "red thing", "blue thing", "e9"]
    assert kg.entity_descs == ["", "red thing is a red object", "", ""]
    assert kg.notes == {"entities_without_text": 1}


def test_entities_without_text_counted_in_one_warning(tmp_path):
    d = make_dir(tmp_path / "kg")
    put(d / "entity2text.txt", ["e1\tred thing", "e2\t  ", "e3"])  # e2: blank text, e3: id only
    put(d / "entities.txt", ["e3", "e1", "e2", "e9"])  # e9: no line at all
    with pytest.warns(DataWarning) as record:
        kg = load_kgbert_dir(d)
    assert [str(w.message) for w in record] == [  # the example: the first in entity order (e3)
        f"{d / 'entity2text.txt'}:3: 3 of 4 entities have no text (no line or an empty one in entity2text.txt); "
        "their ids are used as names, e.g. 'e3' (an empty text)"]
    assert kg.entity_names == ["e3", "red thing", "e2", "e9"]
    assert kg.notes == {"entities_without_text": 3}


def test_not_utf8_split_file(tmp_path):
    d = make_dir(tmp_path / "kg")
    (d / "dev.tsv").write_bytes(b"e3\tr1\te1\ne3\tr1\te\xe91\n")
    with pytest.raises(DataFormatError) as err:
        load_kgbert_dir(d)
    assert str(err.value) == (f"{d / 'dev.tsv'}:2: not UTF-8 text: byte 0xe9 at column 8 (byte offset 16); "
                              "expected UTF-8 text; re-save the file as UTF-8")


def test_duplicate_entity_text_line(tmp_path):
    d = make_dir(tmp_path / "kg")
    put(d / "entity2text.txt", ["e1\tred thing", "e2\tblue thing", "e3\tgreen thing", "e1\tagain"])
    with pytest.raises(DataFormatError, match=r"entity2text\.txt:4:.*twice"):
        load_kgbert_dir(d)


def test_missing_dev(tmp_path):
    d = make_dir(tmp_path / "kg")
    (d / "dev.tsv").unlink()
    with pytest.raises(DataFormatError) as err:
        load_kgbert_dir(d)
    assert "dev.tsv" in str(err.value) and str(d) in str(err.value)


def test_missing_relation2text(tmp_path):
    d = make_dir(tmp_path / "kg")
    (d / "relation2text.txt").unlink()
    with pytest.raises(DataFormatError, match="relation2text"):
        load_kgbert_dir(d)


def test_not_a_kgbert_dir(tmp_path):
    assert not is_kgbert_dir(tmp_path)


# ---- the real UMLS copy (tests may read ../shared; the package must not) --------------------------------
@pytest.mark.skipif(not (REAL_UMLS / "entity2text.txt").is_file(), reason="no shared UMLS copy")
def test_real_umls_matches_builtin():
    kg = load_kgbert_dir(REAL_UMLS)
    assert kg.num_entities == 135 and kg.num_relations == 46
    assert (len(kg.train), len(kg.valid), len(kg.test)) == (5216, 652, 661)
    assert sum(bool(d) for d in kg.entity_descs) > 100  # entity2textlong.txt was used
    ref = load_builtin("umls")
    for split in ("train", "valid", "test"):
        ours = {(kg.entity_ids[h], kg.relation_ids[r], kg.entity_ids[t]) for h, r, t in kg.split(split).tolist()}
        theirs = {(ref.entity_ids[h], ref.relation_ids[r], ref.entity_ids[t]) for h, r, t in ref.split(split).tolist()}
        assert ours == theirs, split


# ---- data hygiene: triples also in train, tabs in texts, empty relation texts -------------------------------
def test_test_triples_appended_to_train_are_warned_and_kept(tmp_path):
    """The leak of issue 28: the test triple (and the dev one) appended to train.tsv. Each split gets one
    warning with its count and its first line; the triples stay (data.drop_overlap is off)."""
    d = make_dir(tmp_path / "kg")
    put(d / "train.tsv", ["e1\tr1\te2", "e2\thas_color\te3", "e1\thas_color\te3", "e3\tr1\te1"])
    put(d / "test.tsv", ["e2\tr1\te1", "e1\thas_color\te3"])
    with pytest.warns(DataWarning) as record:
        kg = load_kgbert_dir(d)
    assert [str(w.message) for w in record] == [
        f"{d / 'dev.tsv'}:1: 1 valid triple also occurs in the train split, first at line 1; kept, so a model is "
        "evaluated on triples it was trained on (data.drop_overlap=true drops them)",
        f"{d / 'test.tsv'}:2: 1 test triple also occurs in the train split, first at line 2; kept, so a model is "
        "evaluated on triples it was trained on (data.drop_overlap=true drops them)",
    ]
    assert kg.test.tolist() == [[2, 0, 1], [1, 1, 0]] and kg.valid.tolist() == [[0, 0, 1]]
    assert kg.notes == {}


def test_drop_overlap_drops_and_counts_and_refuses_a_split_left_empty(tmp_path):
    d = make_dir(tmp_path / "kg")
    put(d / "train.tsv", ["e1\tr1\te2", "e2\thas_color\te3", "e1\thas_color\te3"])
    put(d / "test.tsv", ["e2\tr1\te1", "e1\thas_color\te3"])
    with pytest.warns(DataWarning, match=r"test\.tsv:2: 1 test triple also occurs .* dropped"):
        kg = load_kgbert_dir(d, drop_overlap=True)
    assert kg.test.tolist() == [[2, 0, 1]] and kg.valid.tolist() == [[0, 0, 1]]
    assert kg.notes == {"test.overlap_dropped": 1}
    put(d / "dev.tsv", ["", "e1\tr1\te2"])  # dev's only triple is a train triple
    with pytest.warns(DataWarning), pytest.raises(DataFormatError) as err:
        load_kgbert_dir(d, drop_overlap=True)
    assert str(err.value).startswith(f"{d / 'dev.tsv'}:2: no triples left: all 1 also occur in the train split")


def test_tab_in_a_relation_text_becomes_a_space_and_is_warned(tmp_path):
    """relation2text line 2 reads has_color<TAB>has<TAB>color: its text was "has\\tcolor", which predict's
    tab-separated --queries file cannot name; it is now "has color", with a warning naming line 2."""
    d = make_dir(tmp_path / "kg")
    put(d / "relation2text.txt", ["r1\tpart of", "has_color\thas\tcolor"])
    with pytest.warns(DataWarning) as record:
        kg = load_kgbert_dir(d)
    assert [str(w.message) for w in record] == [
        f"{d / 'relation2text.txt'}:2: 1 text holds a tab or a line break, each replaced by a space (predict's "
        "--queries file is tab-separated and could not name it), first at line 2: 'has\\tcolor'"]
    assert kg.relation_texts == ["part of", "has color"]
    assert kg.relation_index("has color") == 1
    assert kg.notes == {"relation2text.txt.tabs_or_line_breaks": 1}


def test_empty_relation_text_is_warned_and_named_by_its_id(tmp_path):
    d = make_dir(tmp_path / "kg")
    put(d / "relation2text.txt", ["r1\tpart of", "has_color", "r_empty\t  "])
    with pytest.warns(DataWarning) as record:
        kg = load_kgbert_dir(d)
    assert [str(w.message) for w in record] == [
        f"{d / 'relation2text.txt'}:2: 2 of 3 relations have an empty text; their ids are used as texts "
        "(underscores read as spaces), e.g. 'has_color'"]
    assert kg.relation_texts == ["part of", "has color", "r empty"]
    assert kg.notes == {"relations_without_text": 2}
