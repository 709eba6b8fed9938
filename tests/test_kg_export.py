"""kgc_kd.data.kg_export: a KG saved compactly next to an exported model and read back, old exports (one kg.json)
still read, and the token-cache entry linked into an export."""

from __future__ import annotations

import errno
import json
import os
import random

import numpy as np
import pytest
import torch

from kgc_kd.data import kg_export
from kgc_kd.data.kg import KG, SPLITS
from kgc_kd.data.kg_export import link_token_cache, load_kg_export, read_lines, save_kg, write_lines
from kgc_kd.data.synthetic import synthetic_kg

FIELDS = ("name", "source", "entity_ids", "entity_names", "entity_descs", "relation_ids", "relation_texts")


def kg_to_json_v1(kg: KG, **extra) -> dict:
    """Reference: the format-1 kg.json exactly as ChainStore.export wrote it before format 2."""
    return {"name": kg.name, "source": kg.source, "entity_ids": kg.entity_ids, "entity_names": kg.entity_names,
            "entity_descs": kg.entity_descs, "relation_ids": kg.relation_ids, "relation_texts": kg.relation_texts,
            **{s: kg.split(s).tolist() for s in SPLITS}, **extra}


def awkward_kg() -> KG:
    """Texts with every character the line format escapes or must pass through: tabs, newlines, carriage
    returns, backslashes (alone, before n/r, at the end), unicode, empty descriptions and an empty name."""
    return KG(
        name="awk\tward", source="tests/awkward",
        entity_ids=["Q1", "Q2\\n", "Q3", "Q4", "Q5"],
        entity_names=["tab\there", "new\nline", "", "Zürich 東京 🙂", "back\\slash\\"],
        entity_descs=["", "cr\r\nlf\\r\\n", "a\\\\nb", "\n", "\u2028line sep\x0bvt\x0cff"],
        relation_ids=["P1", "P2"], relation_texts=["part\tof", "inverse-ish \\ \n"],
        train=torch.tensor([[0, 0, 1], [1, 1, 2], [3, 0, 4]]), valid=torch.tensor([[4, 1, 0]]),
        test=torch.empty(0, 3, dtype=torch.long))


def assert_same_kg(got: KG, want: KG) -> None:
    for f in FIELDS:
        assert getattr(got, f) == getattr(want, f), f
    for s in SPLITS:
        assert got.split(s).dtype == torch.long and torch.equal(got.split(s), want.split(s)), s


def test_every_field_round_trips_with_its_meta(tmp_path):
    kg = awkward_kg()
    save_kg(kg, tmp_path, max_length=24, link_graph=True)
    got, meta = load_kg_export(tmp_path)
    assert_same_kg(got, kg)
    assert meta == {"max_length": 24, "link_graph": True}
    assert got.entity_index("Q4") == 3 and got.relation_index("inverse part\tof") == 2
    info = json.loads((tmp_path / "kg.json").read_text())
    assert info["format"] == 2 and info["num_triples"] == {"train": 3, "valid": 1, "test": 0}
    for s in SPLITS:
        assert np.load(tmp_path / "kg" / f"{s}.npy").dtype == np.int32
    # one text a line: the file of names has exactly one line per entity
    assert (tmp_path / "kg" / "entity_names.txt").read_bytes().count(b"\n") == kg.num_entities - 1


def test_a_larger_kg_round_trips_and_notes_are_not_saved(tmp_path):
    kg = synthetic_kg(300, 5, 2000, seed=4)
    kg.notes["train.duplicates"] = 3
    save_kg(kg, tmp_path / "export")
    got, meta = load_kg_export(tmp_path / "export")
    assert_same_kg(got, kg)
    assert meta == {} and got.notes == {}


def test_lines_round_trip_random_texts_of_escape_characters(tmp_path):
    rng = random.Random(0)
    alphabet = ["\\", "n", "r", "\n", "\r", "\t", "é", " ", "x", "\\n", "\\\\"]
    for trial in range(20):
        texts = ["".join(rng.choices(alphabet, k=rng.randint(0, 8))) for _ in range(rng.randint(1, 30))]
        path = tmp_path / f"t{trial}.txt"
        write_lines(path, texts)
        assert read_lines(path, len(texts)) == texts


def test_zero_and_one_empty_text_are_told_apart_by_the_count(tmp_path):
    path = tmp_path / "x.txt"
    write_lines(path, [])
    assert read_lines(path, 0) == []
    write_lines(path, [""])
    assert read_lines(path, 1) == [""]
    write_lines(path, ["a"])
    with pytest.raises(ValueError, match="1 lines, expected 0"):
        read_lines(path, 0)


def test_a_damaged_export_is_an_error_naming_the_file(tmp_path):
    kg = synthetic_kg(20, 2, 40, seed=1)
    save_kg(kg, tmp_path)
    names = tmp_path / "kg" / "entity_names.txt"
    names.write_text(names.read_text() + "\nextra")
    with pytest.raises(ValueError, match="entity_names.txt: 21 lines, expected 20"):
        load_kg_export(tmp_path)
    save_kg(kg, tmp_path)
    np.save(tmp_path / "kg" / "valid.npy", np.zeros((0, 3), dtype=np.int32))
    with pytest.raises(ValueError, match="valid.npy: 0 triples"):
        load_kg_export(tmp_path)
    info = json.loads((tmp_path / "kg.json").read_text())
    (tmp_path / "kg.json").write_text(json.dumps({**info, "format": 3}))
    with pytest.raises(ValueError, match="format 3"):
        load_kg_export(tmp_path)
    with pytest.raises(FileNotFoundError, match="no kg.json"):
        load_kg_export(tmp_path / "nowhere")


def test_meta_may_not_overwrite_the_kgs_own_keys(tmp_path):
    with pytest.raises(ValueError, match="'name'"):
        save_kg(synthetic_kg(20, 2, 40), tmp_path, name="other")


def test_triples_are_int32_unless_an_id_does_not_fit():
    assert kg_export.triple_dtype(2**31) == np.int32  # ids 0 .. 2**31 - 1
    assert kg_export.triple_dtype(2**31 + 1) == np.int64


def test_an_export_of_the_same_kg_links_the_files_of_another(tmp_path):
    kg = synthetic_kg(50, 3, 200, seed=5)
    save_kg(kg, tmp_path / "a", max_length=24)
    save_kg(kg, tmp_path / "b", parts_from=tmp_path / "a", max_length=32)
    got, meta = load_kg_export(tmp_path / "b")
    assert_same_kg(got, kg)
    assert meta == {"max_length": 32}
    files = sorted(p.name for p in (tmp_path / "a" / "kg").iterdir())
    assert len(files) == 8 and all(os.path.samefile(tmp_path / "a" / "kg" / f, tmp_path / "b" / "kg" / f) for f in files)
    # another KG (other sizes): written, not linked; and writing never changes the files it was linked to
    other = synthetic_kg(60, 3, 200, seed=6)
    save_kg(other, tmp_path / "b", parts_from=tmp_path / "a")
    assert_same_kg(load_kg_export(tmp_path / "b")[0], other)
    assert_same_kg(load_kg_export(tmp_path / "a")[0], kg)
    assert not os.path.samefile(tmp_path / "a" / "kg" / "train.npy", tmp_path / "b" / "kg" / "train.npy")
    save_kg(kg, tmp_path / "c", parts_from=tmp_path / "nowhere")  # nothing to link from: written
    assert_same_kg(load_kg_export(tmp_path / "c")[0], kg)


# ---- format 1 -----------------------------------------------------------------------------------------------
def test_an_old_export_with_only_kg_json_still_loads(tmp_path):
    kg = awkward_kg()
    (tmp_path / "kg.json").write_text(json.dumps(kg_to_json_v1(kg, max_length=24, link_graph=False)))
    got, meta = load_kg_export(tmp_path)
    assert_same_kg(got, kg)
    assert meta == {"max_length": 24, "link_graph": False}


# ---- the token cache ------------------------------------------------------------------------------------------
def _entry(tmp_path):
    src = tmp_path / "cache" / "abc123"
    (src / "sub").mkdir(parents=True)
    np.save(src / "entity.npy", np.arange(12, dtype=np.int32).reshape(3, 4))
    (src / "meta.json").write_text('{"k": 1}')
    (src / "sub" / "x.npy").write_bytes(b"x")
    return src


def test_a_token_cache_entry_is_hard_linked_into_the_export(tmp_path):
    src = _entry(tmp_path)
    dst = link_token_cache(src, tmp_path / "export")
    assert dst == tmp_path / "export" / "token-cache" / "abc123"
    for rel in ("entity.npy", "meta.json", "sub/x.npy"):
        assert (dst / rel).read_bytes() == (src / rel).read_bytes()
        assert os.path.samefile(dst / rel, src / rel)  # one copy on disk
    assert link_token_cache(None, tmp_path / "other") is None and not (tmp_path / "other").exists()
    with pytest.raises(FileNotFoundError):
        link_token_cache(tmp_path / "missing", tmp_path / "export")


def test_a_token_cache_on_another_filesystem_is_copied(tmp_path, monkeypatch):
    src = _entry(tmp_path)

    def cross_device(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(kg_export.os, "link", cross_device)
    dst = link_token_cache(src, tmp_path / "export")
    assert (dst / "entity.npy").read_bytes() == (src / "entity.npy").read_bytes()
    assert not os.path.samefile(dst / "entity.npy", src / "entity.npy")
