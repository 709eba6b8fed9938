"""kgc_kd.runtime.files: atomic writes leave the old file or the new one, never a part, and no temporary file."""

from __future__ import annotations

import json

import pytest

from kgc_kd.runtime.files import replace_atomically, write_json_atomic, write_text_atomic


def _temps(d):
    return sorted(p.name for p in d.rglob(".*.tmp"))


def test_write_text_atomic_creates_parents_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "summary.txt"
    write_text_atomic(path, "first\n")
    assert path.read_text(encoding="utf-8") == "first\n"
    write_text_atomic(path, "second ü\n")
    assert path.read_text(encoding="utf-8") == "second ü\n"
    assert _temps(tmp_path) == []
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.txt"]


def test_write_json_atomic_roundtrip(tmp_path):
    path = tmp_path / "out" / "metrics.json"
    obj = {"mrr": 0.5, "nested": {"list": [1, 2, None], "flag": True}, "name": "x"}
    write_json_atomic(path, obj)
    assert json.loads(path.read_text()) == obj
    assert path.read_text().endswith("\n")
    assert _temps(tmp_path) == []


def test_write_json_atomic_failure_keeps_previous(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"ok": 1})
    before = path.read_text()
    with pytest.raises(TypeError):
        write_json_atomic(path, {"ok": 2, "bad": object()})
    assert path.read_text() == before
    assert _temps(tmp_path) == []


def test_write_text_atomic_failure_midway_keeps_previous(tmp_path):
    path = tmp_path / "summary.txt"
    write_text_atomic(path, "old\n")
    # a lone surrogate passes str checks but fails while the temp file is being written
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "new text \ud800 more\n")
    assert path.read_text() == "old\n"
    assert _temps(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["summary.txt"]


def test_replace_atomically_writes_bytes_and_a_failing_writer_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.bin"
    replace_atomically(path, lambda f: f.write(b"\x00\x01"))
    assert path.read_bytes() == b"\x00\x01"

    def half_then_fail(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(path, half_then_fail)
    assert path.read_bytes() == b"\x00\x01"
    assert _temps(tmp_path) == []
