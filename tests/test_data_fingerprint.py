"""kgc_kd.data.fingerprint: a KG's content as loaded, one SHA-256 per part; checked against hashlib by hand and
on copies of a KG-BERT directory (the same files elsewhere: the same digests; one changed line: its part only)."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch

import kgc_kd.data.fingerprint as fingerprint
from kgc_kd.data.fingerprint import PARTS, kg_fingerprint, texts_digest, triples_digest
from kgc_kd.data.kgbert import load_kgbert_dir

ENTITIES = {"e1": ("red thing", "a red thing"), "e2": ("blue thing", "a blue one"), "e3": ("old", "")}


def _write_kg(d):
    d.mkdir(parents=True)
    (d / "entity2text.txt").write_text("".join(f"{e}\t{n}\n" for e, (n, _) in ENTITIES.items()))
    (d / "entity2textlong.txt").write_text("".join(f"{e}\t{t}\n" for e, (_, t) in ENTITIES.items() if t))
    (d / "relation2text.txt").write_text("r1\tis part of\nr2\thas colour\n")
    (d / "train.tsv").write_text("e1\tr1\te2\ne2\tr2\te3\ne3\tr1\te1\n")
    (d / "dev.tsv").write_text("e1\tr2\te3\n")
    (d / "test.tsv").write_text("e2\tr1\te1\ne3\tr2\te2\n")
    return d


def test_triples_digest_is_the_sha256_of_the_shape_and_int64_bytes():
    t = torch.tensor([[0, 1, 2], [2, 0, 1]])
    want = hashlib.sha256(b"int64(2, 3)\n" + np.array([[0, 1, 2], [2, 0, 1]], dtype="<i8").tobytes()).hexdigest()
    assert triples_digest(t) == want
    assert triples_digest(t.to(torch.int32)) == want  # the values, not the dtype they came in
    assert triples_digest(torch.tensor([[0, 1, 2], [2, 0, 2]])) != want
    assert triples_digest(t[:1]) != want  # one triple fewer
    assert triples_digest(torch.empty(0, 3, dtype=torch.long)) == hashlib.sha256(b"int64(0, 3)\n").hexdigest()


def test_texts_digest_by_hand_and_no_separator_makes_two_lists_alike():
    lengths = hashlib.sha256(np.array([2, 1], dtype="<i8").tobytes()).digest()
    want = hashlib.sha256(b"list 2\n" + "abé".encode() + lengths).hexdigest()
    assert texts_digest(["ab", "é"]) == want
    assert texts_digest(["a", "bé"]) != want  # the same characters split elsewhere
    assert texts_digest(["ab", "é", ""]) != want  # one extra (empty) text
    assert texts_digest(["ab"], ["é"]) != want  # the same texts in two lists
    assert texts_digest(["a\tb", "c"]) != texts_digest(["a", "b\tc"])


def test_texts_are_hashed_a_chunk_at_a_time_with_the_same_result(monkeypatch):
    texts = [f"text {i}" for i in range(10)]
    whole = texts_digest(texts)
    monkeypatch.setattr(fingerprint, "CHUNK", 3)
    assert texts_digest(texts) == whole


def test_the_same_kg_in_another_directory_has_the_same_fingerprint(tmp_path):
    a = load_kgbert_dir(_write_kg(tmp_path / "a"))
    b = load_kgbert_dir(shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b"))
    fp = kg_fingerprint(a)
    assert tuple(fp) == PARTS == ("entities", "relations", "train", "valid", "test")
    assert fp == kg_fingerprint(b) and a.name != b.name
    assert fp["train"] == triples_digest(a.train) and fp["test"] == triples_digest(a.test)
    assert fp["entities"] == texts_digest(a.entity_ids, a.entity_names, a.entity_descs)
    assert fp["relations"] == texts_digest(a.relation_ids, a.relation_texts)


@pytest.mark.parametrize("file, edit, part", [
    ("train.tsv", lambda s: s.replace("e3\tr1\te1\n", ""), "train"),  # one line fewer
    ("dev.tsv", lambda s: s + "e2\tr1\te3\n", "valid"),  # one extra line
    ("test.tsv", lambda s: s.replace("e3\tr2\te2", "e3\tr2\te1"), "test"),  # one changed id
    ("entity2textlong.txt", lambda s: s.replace("a red thing", "a red thinG"), "entities"),  # one character
    ("relation2text.txt", lambda s: s.replace("has colour", "has color"), "relations"),
])
def test_one_changed_line_changes_its_part_only(tmp_path, file, edit, part):
    before = kg_fingerprint(load_kgbert_dir(_write_kg(tmp_path / "kg")))
    path = tmp_path / "kg" / file
    path.write_text(edit(path.read_text()))
    after = kg_fingerprint(load_kgbert_dir(tmp_path / "kg"))
    assert [p for p in PARTS if after[p] != before[p]] == [part]
