"""kgc_kd.runtime.fingerprint: file and directory digests, checked against hashlib computed here by hand."""

from __future__ import annotations

import hashlib
import os
import shutil

from kgc_kd.runtime.fingerprint import file_digest, tree_digest, tree_files


def _tree(root):
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_bytes(b'{"a": 1}')
    (root / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 3)
    (root / "empty").write_bytes(b"")
    return root


def _reference(root, rels):
    """The documented construction: per file `relpath \\0 size \\0 sha256(bytes) \\n`, sorted by path."""
    h = hashlib.sha256()
    for rel in sorted(rels):
        data = (root / rel).read_bytes()
        h.update(f"{rel}\0{len(data)}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return h.hexdigest()


def test_file_digest_is_the_sha256_of_its_bytes(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert file_digest(p) == hashlib.sha256(b"abc").hexdigest() == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2's example
    p.write_bytes(b"abcd")  # another size: not the remembered digest
    assert file_digest(p) == hashlib.sha256(b"abcd").hexdigest()


def test_tree_digest_matches_a_hashlib_reference_and_a_copy_elsewhere(tmp_path):
    root = _tree(tmp_path / "plm")
    assert [p.as_posix() for p in tree_files(root)] == ["config.json", "empty", "sub/weights.bin"]
    want = _reference(root, ["config.json", "empty", "sub/weights.bin"])
    assert tree_digest(root) == want
    assert tree_digest(shutil.copytree(root, tmp_path / "elsewhere" / "copy")) == want
    assert tree_digest(root / "config.json") == file_digest(root / "config.json")  # a single file


def test_one_changed_byte_an_extra_file_or_a_rename_changes_it(tmp_path):
    root = _tree(tmp_path / "plm")
    base = tree_digest(root)
    w = root / "sub" / "weights.bin"
    data = bytearray(w.read_bytes())
    data[100] ^= 1
    w.write_bytes(bytes(data))
    os.utime(w, ns=(1, 1))  # a changed mtime is what tells the process-wide memo the file changed
    changed = tree_digest(root)
    assert changed != base and changed == _reference(root, ["config.json", "empty", "sub/weights.bin"])
    (root / "extra.txt").write_text("\n")
    assert tree_digest(root) != changed
    (root / "extra.txt").rename(root / "other.txt")
    assert tree_digest(root) not in (changed, base)


def test_skip_leaves_out_names_and_patterns_at_any_depth(tmp_path):
    root = _tree(tmp_path / "export")
    base = tree_digest(root, skip=("kg", "entity_vectors-*"))
    (root / "kg").mkdir()
    (root / "kg" / "test.npy").write_bytes(b"x")
    (root / "sub" / "entity_vectors-ab.pt").write_bytes(b"y")
    assert tree_digest(root, skip=("kg", "entity_vectors-*")) == base
    assert tree_digest(root) != base
    assert [p.as_posix() for p in tree_files(root, skip=("*.bin",))] == ["config.json", "empty", "kg/test.npy",
                                                                          "sub/entity_vectors-ab.pt"]
