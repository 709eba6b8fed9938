"""kgc_kd.data.sources.load_kg: one config string -> the right loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kgc_kd.data.io import DataFormatError, DataWarning
from kgc_kd.data.sources import load_kg
from kgc_kd.data.synthetic import synthetic_kg


def write_kgbert(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "entity2text.txt").write_text("a\tland reform, a redistribution\nb\tdog\n", encoding="utf-8")
    (d / "entity2textlong.txt").write_text("b\tdog is a long text\n", encoding="utf-8")
    (d / "relation2text.txt").write_text("r\trel\n", encoding="utf-8")
    for split in ("train.tsv", "dev.tsv", "test.tsv"):
        (d / split).write_text("a\tr\tb\n", encoding="utf-8")
    return d


def write_simkgc(d: Path) -> Path:
    d.mkdir(parents=True)
    ents = [{"entity_id": "x", "entity": "ex", "entity_desc": "d"}, {"entity_id": "y", "entity": "why"}]
    (d / "entities.json").write_text(json.dumps(ents), encoding="utf-8")
    row = [{"head_id": "x", "head": "ex", "relation": "likes", "tail_id": "y", "tail": "why"}]
    for split in ("train", "valid", "test"):
        (d / f"{split}.txt.json").write_text(json.dumps(row), encoding="utf-8")
    return d


def test_builtin():
    kg = load_kg("nations")
    assert kg.source == "builtin:nations" and kg.num_entities == 14


def test_synthetic_default_and_kwargs():
    kg = load_kg("synthetic")
    ref = synthetic_kg()
    assert kg.name == ref.name and torch.equal(kg.train, ref.train)
    kg = load_kg("synthetic", synthetic={"num_entities": 12, "num_triples": 50, "seed": 3})
    ref = synthetic_kg(12, num_triples=50, seed=3)
    assert kg.num_entities == 12 and torch.equal(kg.train, ref.train) and torch.equal(kg.test, ref.test)


def test_kgbert_dir_and_options(tmp_path):
    d = write_kgbert(tmp_path / "kgb")
    kg = load_kg(str(d))
    assert kg.source == f"kgbert:{d}"
    assert kg.entity_names == ["land reform, a redistribution", "dog"]
    assert kg.entity_descs == ["", "dog is a long text"]
    kg = load_kg(str(d), use_long_text=False, name_separator=", ")
    assert kg.entity_names == ["land reform", "dog"]
    assert kg.entity_descs == ["a redistribution", ""]


def test_simkgc_dir(tmp_path):
    d = write_simkgc(tmp_path / "sim")
    kg = load_kg(str(d))
    assert kg.source == f"simkgc:{d}"
    assert kg.entity_names == ["ex", "why"] and kg.relation_texts == ["likes"]


def test_simkgc_layout_wins_when_both_present(tmp_path):
    d = write_simkgc(tmp_path / "both")
    (d / "entity2text.txt").write_text("x\tex\n", encoding="utf-8")
    assert load_kg(str(d)).source.startswith("simkgc:")


def test_directory_of_neither_layout(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "train.tsv").write_text("a\tr\tb\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as err:
        load_kg(str(d))
    msg = str(err.value)
    assert str(d) in msg and "KG-BERT" in msg and "SimKGC" in msg and "Wikidata5M" in msg
    assert "entity2text.txt" in msg and "entities.json" in msg and "wikidata5m_entity.txt" in msg


@pytest.mark.parametrize("name", ["does-not-exist", "UMLS", "file"])
def test_not_a_source(tmp_path, name):
    if name == "file":
        p = tmp_path / "a.txt"
        p.write_text("x", encoding="utf-8")
        source = str(p)
    elif name == "does-not-exist":
        source = str(tmp_path / "nope")
    else:
        source = name  # built-in names are case-sensitive
    with pytest.raises(DataFormatError) as err:
        load_kg(source)
    assert repr(source) in str(err.value) and "umls" in str(err.value)


@pytest.mark.parametrize("layout", ["kgbert", "simkgc"])
def test_drop_unknown_reaches_the_directory_loaders(tmp_path, layout):
    if layout == "kgbert":
        d = write_kgbert(tmp_path / "kgb")
        (d / "test.tsv").write_text("a\tr\tb\nb\tr\tzz\n", encoding="utf-8")
        bad = d / "test.tsv"
    else:
        d = write_simkgc(tmp_path / "sim")
        row = {"head_id": "x", "relation": "likes", "tail_id": "y"}
        (d / "test.txt.json").write_text(json.dumps([row, {**row, "tail_id": "zz"}]), encoding="utf-8")
        bad = d / "test.txt.json"
    with pytest.raises(DataFormatError, match=r"set data\.drop_unknown=true to skip such triples") as err:
        load_kg(str(d))
    assert f"{bad}:" in str(err.value) and "'zz'" in str(err.value)
    with pytest.warns(DataWarning, match=rf"^{bad}:[12]: 1 triple skipped: unknown entity/relation ids"):
        kg = load_kg(str(d), drop_unknown=True)
    assert len(kg.test) == 1 and kg.notes == {"test.unknown_dropped": 1}


def test_drop_unknown_ignored_by_builtin_and_synthetic():
    assert load_kg("nations", drop_unknown=True).num_entities == 14
    assert load_kg("synthetic", drop_unknown=True).notes == {}


def write_wikidata5m(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "wikidata5m_entity.txt").write_text("Q1\tDouglas Adams\tDNA\nQ2\tEarth\n", encoding="utf-8")
    (d / "wikidata5m_relation.txt").write_text("P1\tlives on\n", encoding="utf-8")
    (d / "wikidata5m_text.txt").write_text("Q1\tEnglish writer\nQ2\tthird planet\n", encoding="utf-8")
    for split in ("train", "valid", "test"):
        (d / f"wikidata5m_transductive_{split}.txt").write_text("Q1\tP1\tQ2\n", encoding="utf-8")
    return d


@pytest.mark.parametrize("layout", ["kgbert", "simkgc", "wikidata5m"])
def test_drop_overlap_reaches_the_directory_loaders(tmp_path, layout):
    """These directories hold one triple, in every split: warned for valid and test (first line 1); with
    drop_overlap, valid is left empty, an error naming its file and line."""
    d = {"kgbert": write_kgbert, "simkgc": write_simkgc, "wikidata5m": write_wikidata5m}[layout](tmp_path / layout)
    valid = {"kgbert": "dev.tsv", "simkgc": "valid.txt.json", "wikidata5m": "wikidata5m_transductive_valid.txt"}[layout]
    test = {"kgbert": "test.tsv", "simkgc": "test.txt.json", "wikidata5m": "wikidata5m_transductive_test.txt"}[layout]
    with pytest.warns(DataWarning) as record:
        kg = load_kg(str(d))
    assert [str(w.message).split(";")[0] for w in record] == [
        f"{d / valid}:1: 1 valid triple also occurs in the train split, first at line 1",
        f"{d / test}:1: 1 test triple also occurs in the train split, first at line 1"]
    assert len(kg.valid) == len(kg.test) == 1 and kg.notes == {}
    with pytest.warns(DataWarning), pytest.raises(DataFormatError) as err:
        load_kg(str(d), drop_overlap=True)
    assert str(err.value).startswith(f"{d / valid}:1: no triples left: all 1 also occur in the train split "
                                     "(data.drop_overlap=true)")


def test_drop_overlap_ignored_by_builtin_and_synthetic():
    assert len(load_kg("nations", drop_overlap=True).test) == len(load_kg("nations").test)
    assert load_kg("synthetic", drop_overlap=True).notes == {}



def test_wikidata5m_dir(tmp_path):
    d = write_wikidata5m(tmp_path / "wikidata5m")
    kg = load_kg(str(d))
    assert kg.source == f"wikidata5m:{d}"
    assert kg.entity_names == ["Douglas Adams", "Earth"] and kg.relation_texts == ["lives on"]
    assert kg.entity_descs == ["English writer", "third planet"]


def test_simkgc_json_wins_over_raw_wikidata5m_files(tmp_path):
    """SimKGC's preprocess writes its json next to the raw files: what SimKGC trains on is read."""
    d = write_simkgc(tmp_path / "wiki5m_trans")
    write_wikidata5m(tmp_path / "raw")
    for f in (tmp_path / "raw").iterdir():
        f.rename(d / f.name)
    assert load_kg(str(d)).source.startswith("simkgc:")


def test_wikidata5m_wins_over_kgbert_files(tmp_path):
    d = write_wikidata5m(tmp_path / "w")
    (d / "entity2text.txt").write_text("Q1\tex\n", encoding="utf-8")
    assert load_kg(str(d)).source.startswith("wikidata5m:")
