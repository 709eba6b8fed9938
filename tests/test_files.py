"""kgc_kd.runtime.files: atomic writes leave the old file or the new one, never a part, and no temporary file."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

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


# ---- removal inside a root, never through a symbolic link ----------------------------------------------------
def _outside(tmp_path):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "keep.txt").write_text("theirs")
    return victim


def test_remove_unlinks_a_symbolic_link_never_its_target(tmp_path):
    from kgc_kd.runtime.files import remove

    victim, root = _outside(tmp_path), tmp_path / "root"
    root.mkdir()
    (root / "export.old").symlink_to(victim, target_is_directory=True)
    (root / "file-link").symlink_to(victim / "sub" / "keep.txt")
    assert remove(root / "export.old", root, "old export") and remove(root / "file-link", root, "a link")
    assert list(root.iterdir()) == [] and (victim / "sub" / "keep.txt").read_text() == "theirs"


def test_remove_and_clear_read_relative_paths_from_the_working_directory(tmp_path, monkeypatch):
    """A relative run.root (`run.root=runs`): the path to remove and its root are both relative to the working
    directory, never the path to the root."""
    from kgc_kd.runtime.files import clear_temporaries, remove

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "s" / "x.tmp").mkdir(parents=True)
    (tmp_path / "runs" / "s" / "old").write_text("old")
    assert remove(Path("runs/s/old"), Path("runs"), "an old file") and not (tmp_path / "runs" / "s" / "old").exists()
    assert clear_temporaries(Path("runs/s"), Path("runs")) == [Path("runs/s/x.tmp")]
    assert list((tmp_path / "runs" / "s").iterdir()) == []


def test_remove_deletes_a_tree_without_following_the_links_inside_it(tmp_path):
    from kgc_kd.runtime.files import remove

    victim, root = _outside(tmp_path), tmp_path / "root"
    (root / "old" / "deep").mkdir(parents=True)
    (root / "old" / "deep" / "f").write_text("x")
    (root / "old" / "deep" / "to-victim").symlink_to(victim, target_is_directory=True)
    assert remove(root / "old", root, "old export")
    assert not (root / "old").exists() and (victim / "sub" / "keep.txt").read_text() == "theirs"
    assert remove(root / "old", root, "old export") is False  # nothing there: nothing to do


@pytest.mark.parametrize("where", ["outside", "through a link", "the root", "dot-dot"])
def test_remove_refuses_a_path_outside_its_root_before_removing_anything(tmp_path, where):
    from kgc_kd.runtime.files import OutsideRoot, remove

    victim, root = _outside(tmp_path), tmp_path / "root"
    root.mkdir()
    (root / "linked").symlink_to(victim, target_is_directory=True)  # a directory inside the root that leads out
    path = {"outside": root / ".." / "victim" / "sub", "through a link": root / "linked" / "sub", "the root": root,
            "dot-dot": root / "linked" / ".."}[where]
    with pytest.raises(OutsideRoot, match="outside its root|not an entry inside"):
        remove(path, root, "a stage")
    assert (victim / "sub" / "keep.txt").read_text() == "theirs" and (root / "linked").is_symlink()


def test_clear_temporaries_removes_what_a_killed_writer_left_and_nothing_else(tmp_path):
    from kgc_kd.runtime.files import clear_temporaries

    victim, root = _outside(tmp_path), tmp_path / "root"
    entry = root / "stage-store" / "s-k"
    (entry / "export.tmp" / "entity").mkdir(parents=True)
    (entry / "export.tmp" / "entity" / "model.safetensors").write_text("half")
    (entry / "export").mkdir()
    (entry / "export" / ".kg.json.x1y2.tmp").write_text("half")
    (entry / "export" / "kg.json").write_text("{}")
    (entry / "linked.tmp").symlink_to(victim, target_is_directory=True)
    removed = clear_temporaries(entry, root)
    assert sorted(p.name for p in removed) == [".kg.json.x1y2.tmp", "export.tmp", "linked.tmp"]
    assert sorted(str(p.relative_to(entry)) for p in entry.rglob("*")) == ["export", "export/kg.json"]
    assert (victim / "sub" / "keep.txt").read_text() == "theirs"


# ---- a shared root under several users ------------------------------------------------------------------------
ROOT_ONLY = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                               reason="running a process as a second user id needs root")
GROUP = 4242  # the group the users of a shared root have in common (any gid will do)


def as_user(uid: int, umask: int, work, *args, groups: tuple[int, ...] = ()) -> tuple[int, str]:
    """`work(*args)` in a forked child running as user id `uid` (primary group: the first of `groups`, else uid;
    `groups` its supplementary groups) under `umask`: (exit status, what it returned or the error it raised).
    Forked, not a new interpreter: the second user may not be able to run the interpreter in root's home."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the other user, do the work, report through the pipe, never return to pytest
        status, text = 1, ""
        try:
            os.close(read)
            os.setgroups(list(groups))
            os.setgid((groups or (uid,))[0])
            os.setuid(uid)
            os.umask(umask)
            text, status = str(work(*args)), 0
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            text = f"{type(err).__name__}: {err}"
        finally:
            os.write(write, text.encode())
            os._exit(status)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), out


@pytest.fixture
def world_dir():
    """A directory every user can reach (pytest's tmp_path lies under a 0o700 directory of root's)."""
    d = Path(tempfile.mkdtemp(prefix="kgc-kd-shared-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


def _write(d: Path) -> str:
    write_text_atomic(d / "report.md", "# report\n")
    write_json_atomic(d / "chain_state.json", {"stages": {"teacher": {"mrr": 0.5}}})
    return "wrote"


def _read_and_try_to_write(d: Path) -> str:
    seen = f"{(d / 'report.md').read_text().strip()} {json.loads((d / 'chain_state.json').read_text())['stages']['teacher']['mrr']}"
    try:
        with open(d / "report.md", "a") as f:
            f.write("mine\n")
        return f"{seen}, wrote"
    except PermissionError:
        return f"{seen}, read-only"


def _rewrite(d: Path, stage: str) -> str:
    with open(d / "report.md", "a") as f:  # in place: the file must be group-writable
        f.write(f"{stage} was here\n")
    state = json.loads((d / "chain_state.json").read_text())
    state["stages"][stage] = {"mrr": 0.4}
    write_json_atomic(d / "chain_state.json", state)  # replaced: a new file in the shared directory
    return "rewrote"


@ROOT_ONLY
def test_under_umask_022_a_second_user_reads_a_report_and_the_state_but_cannot_change_them(world_dir):
    root = world_dir / "runs"
    root.mkdir(mode=0o755)
    os.chown(root, 65533, 65533)
    assert as_user(65533, 0o022, _write, root) == (0, "wrote")  # user A runs
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in root.iterdir()} == {"report.md": 0o644,
                                                                               "chain_state.json": 0o644}
    assert as_user(65534, 0o022, _read_and_try_to_write, root) == (0, "# report 0.5, read-only")  # user B


@ROOT_ONLY
def test_under_umask_002_the_users_of_a_group_rewrite_each_others_files(world_dir):
    root = world_dir / "runs"
    root.mkdir()
    os.chown(root, 0, GROUP)
    root.chmod(0o2775)  # a group's shared run.root: group-writable, new files in its group
    assert as_user(65533, 0o002, _write, root, groups=(GROUP,)) == (0, "wrote")  # user A
    for p in root.iterdir():
        assert (stat.S_IMODE(p.stat().st_mode), p.stat().st_uid, p.stat().st_gid) == (0o664, 65533, GROUP), p
    assert as_user(65534, 0o002, _rewrite, root, "pmd6", groups=(GROUP,)) == (0, "rewrote")  # user B, same group
    assert (root / "report.md").read_text() == "# report\npmd6 was here\n"
    state = root / "chain_state.json"
    assert json.loads(state.read_text())["stages"] == {"teacher": {"mrr": 0.5}, "pmd6": {"mrr": 0.4}}
    assert (stat.S_IMODE(state.stat().st_mode), state.stat().st_uid, state.stat().st_gid) == (0o664, 65534, GROUP)
    assert as_user(65533, 0o002, _rewrite, root, "pmd4", groups=(GROUP,)) == (0, "rewrote")  # A changes B's file
