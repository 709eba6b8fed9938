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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_an_atomic_write_gets_the_mode_the_umask_allows(tmp_path, umask, mode):
    """As open() would create it (0o666 less the umask), not mkstemp's 0o600: under umask 022 the other users
    of a shared run.root can read a report; the umask is read, not changed."""
    import os
    import stat

    from kgc_kd.runtime.files import current_umask

    before = os.umask(umask)
    try:
        assert current_umask() == umask
        write_text_atomic(tmp_path / "report.md", "x\n")
        assert current_umask() == umask
        (tmp_path / "plain.txt").write_text("x")  # the reference: what a plain open() creates under that umask
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == mode
