"""kgc_kd.data.builtin: the KGs shipped in the package (PyKEEN's UMLS, Nations, Kinships)."""

from __future__ import annotations

import pytest
import torch

from kgc_kd.data.builtin import BUILTIN, builtin_dir, load_builtin

SIZES = {
    "umls": (135, 46, 5216, 652, 661),
    "nations": (14, 55, 1592, 199, 201),
    "kinships": (104, 25, 8544, 1068, 1074),
}


@pytest.fixture(scope="module")
def loaded():
    return {name: load_builtin(name) for name in BUILTIN}


def _raw_rows(name: str, split: str) -> list[tuple[str, str, str]]:
    """Independent reading of the shipped file: plain python, no package code."""
    text = (builtin_dir(name) / f"{split}.txt").read_text(encoding="utf-8")
    return [tuple(line.split("\t")) for line in text.split("\n") if line.strip()]


def test_builtin_names():
    assert set(BUILTIN) == set(SIZES)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_sizes(loaded, name):
    kg = loaded[name]
    n, r, ntr, nva, nte = SIZES[name]
    assert kg.num_entities == n
    assert kg.num_relations == r
    assert (len(kg.train), len(kg.valid), len(kg.test)) == (ntr, nva, nte)
    assert kg.name == name and kg.source == f"builtin:{name}"


@pytest.mark.parametrize("name", sorted(SIZES))
def test_text_from_ids(loaded, name):
    kg = loaded[name]
    assert kg.entity_names == [e.replace("_", " ") for e in kg.entity_ids]
    assert all("_" not in n for n in kg.entity_names)
    assert kg.entity_descs == [""] * kg.num_entities
    assert kg.relation_texts == [r.replace("_", " ").strip() for r in kg.relation_ids]
    assert all("_" not in t for t in kg.relation_texts)


def test_umls_has_underscored_ids(loaded):
    kg = loaded["umls"]
    i = kg.entity_ids.index("idea_or_concept")
    assert kg.entity_names[i] == "idea or concept"
    assert kg.relation_texts[kg.relation_ids.index("location_of")] == "location of"


@pytest.mark.parametrize("name", sorted(SIZES))
def test_triples_match_the_files(loaded, name):
    kg = loaded[name]
    for split in ("train", "valid", "test"):
        rows = [(kg.entity_ids[h], kg.relation_ids[r], kg.entity_ids[t]) for h, r, t in kg.split(split).tolist()]
        assert rows == _raw_rows(name, split), split


def test_ids_in_order_of_first_appearance(loaded):
    kg = loaded["nations"]
    seen_e: dict[str, None] = {}
    seen_r: dict[str, None] = {}
    for split in ("train", "valid", "test"):
        for h, r, t in _raw_rows("nations", split):
            seen_e.setdefault(h)
            seen_e.setdefault(t)
            seen_r.setdefault(r)
    assert kg.entity_ids == list(seen_e)
    assert kg.relation_ids == list(seen_r)


def test_unknown_name():
    with pytest.raises(KeyError, match="unknown built-in KG 'fb15k'"):
        load_builtin("fb15k")
    with pytest.raises(KeyError):
        builtin_dir("wn18rr")


def test_loading_twice_is_identical(loaded):
    a, b = loaded["umls"], load_builtin("umls")
    assert a is not b
    assert a.entity_ids == b.entity_ids and a.relation_ids == b.relation_ids
    for split in ("train", "valid", "test"):
        assert torch.equal(a.split(split), b.split(split))
