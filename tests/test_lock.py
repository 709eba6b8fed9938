"""kgc_kd.chain.lock and ChainStore.claim against a real second process holding the lock (no mock of flock): the
lock file names its holder, a waiter says who holds it and how long it has waited, again and again, an optional
timeout names the lock file and the holder, and a claim removes what a killed builder left."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from test_files import world_dir  # noqa: F401 - a fixture: a directory every user can reach

from kgc_kd.chain.lock import LockTimeout, exclusive, holder, process_gone, process_record
from kgc_kd.chain.store import ChainStore

HOLD = """
import sys
from pathlib import Path
from kgc_kd.chain.lock import exclusive
with exclusive(Path(sys.argv[1]), "[other] waiting"):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


@pytest.fixture
def held():
    """Start a process that takes the lock at a path and holds it until released; yields start(path) -> Popen."""
    procs = []

    def start(lock_path, *extra):
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_path), *extra], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline() == "held\n"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def release(p):
    p.stdin.close()
    assert p.wait(timeout=30) == 0


def test_the_lock_file_names_its_holder_while_it_holds_it(tmp_path, held):
    lock = tmp_path / "s-k1.lock"
    p = held(lock, "--marker-7")
    record = json.loads(lock.read_text())
    assert record["pid"] == p.pid and record["host"] == socket.gethostname()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["since"])  # UTC
    assert "--marker-7" in record["command"] and "-c" in record["command"]
    assert process_gone(record) is False
    release(p)
    assert lock.read_text() == "" and holder(lock) is None  # nobody holds it once it is let go


def test_a_waiter_names_the_holder_again_and_again_and_gets_the_lock_once_it_is_free(tmp_path, held, capsys):
    lock = tmp_path / "s-k1.lock"
    p = held(lock)
    # the holder lets go after ~1 s, from another thread of this test (the waiter blocks this one)
    import threading

    threading.Timer(1.0, release, (p,)).start()
    start = time.monotonic()
    with exclusive(lock, "[chain] s: another run is training it", repeat_s=0.25):
        waited = time.monotonic() - start
        assert json.loads(lock.read_text())["pid"] == os.getpid()  # now this process is named
    assert 0.9 < waited < 20
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[chain] s: another run")]
    assert len(lines) >= 3, lines  # said at once, then every 0.25 s
    assert all(f"held by pid {p.pid} on host {socket.gethostname()} since " in ln for ln in lines)
    assert [int(re.search(r"\((\d+) s so far\)", ln).group(1)) for ln in lines][0] == 0


def test_a_timeout_names_the_lock_file_and_the_holder(tmp_path, held, capsys):
    lock = tmp_path / "s-k1.lock"
    p = held(lock)
    start = time.monotonic()
    with pytest.raises(LockTimeout) as err:
        with exclusive(lock, "[chain] s: waiting", timeout_s=0.6, repeat_s=10):
            pytest.fail("the lock was taken while another process held it")
    assert 0.5 < time.monotonic() - start < 10
    assert str(lock) in str(err.value) and f"pid {p.pid}" in str(err.value)
    assert "run.lock_timeout_s=0.6" in str(err.value)
    assert json.loads(lock.read_text())["pid"] == p.pid  # the holder's record is left alone
    release(p)


def test_a_claim_times_out_on_a_held_stage_naming_the_lock(tmp_path, held):
    store = ChainStore(tmp_path / "run", keys={"s": "k1"}, store_root=tmp_path)
    lock = tmp_path / "stage-store" / "s-k1.lock"
    lock.parent.mkdir(parents=True)
    p = held(lock)
    with pytest.raises(LockTimeout, match=re.escape(str(lock))):
        with store.claim("s", timeout_s=0.3):
            pytest.fail("claimed a stage another process holds")
    release(p)
    with store.claim("s", timeout_s=0.3):  # free now
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_killed_holder_frees_the_lock_and_its_record_says_it_has_ended(tmp_path, held):
    lock = tmp_path / "s-k1.lock"
    p = held(lock)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    stale = holder(lock)
    assert stale["pid"] == p.pid and process_gone(stale) is True  # its record stays, the lock does not
    with exclusive(lock, "x", timeout_s=5):
        assert holder(lock)["pid"] == os.getpid()


def test_process_gone_tells_a_live_process_an_ended_one_and_one_it_cannot_see(tmp_path):
    me = process_record()
    assert process_gone(me) is False
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_gone({**me, "pid": child.pid}) is True
    assert process_gone({**me, "start_ticks": me["start_ticks"] - 1}) is True  # the pid, used again by another
    assert process_gone({**me, "host": "another-node"}) is None  # another machine: cannot be told from here
    assert process_gone(None) is None


def test_a_claim_removes_what_a_killed_builder_left_and_nothing_else(tmp_path, capsys):
    store = ChainStore(tmp_path / "run", keys={"s": "k1"}, store_root=tmp_path)
    entry = tmp_path / "stage-store" / "s-k1"
    (entry / "export.tmp" / "query").mkdir(parents=True)  # an export's temporary directory
    (entry / "export.tmp" / "query" / "config.json").write_text("{}")
    (entry / ".stage.json.a1b2c3.tmp").write_text("half")  # an atomic write's temporary
    (entry / "checkpoints").mkdir()
    (entry / "checkpoints" / ".best.ckpt.x9.tmp").write_text("half")
    (entry / "checkpoints" / "last.ckpt").write_text("kept")
    (entry / "export").mkdir()
    (entry / "export" / "biencoder.json").write_text("kept")
    outside = tmp_path / "outside"
    (outside / "data").mkdir(parents=True)
    (outside / "data" / "keep.txt").write_text("theirs")
    (entry / "other.tmp").symlink_to(outside / "data", target_is_directory=True)  # a link: unlinked, not followed
    (tmp_path / "run" / "stages").mkdir(parents=True)
    (tmp_path / "run" / "stages" / ".s.link.tmp").symlink_to("../../stage-store/s-k1")
    with store.claim("s"):
        left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == ["outside", "outside/data", "outside/data/keep.txt", "run", "run/stages", "stage-store",
                    "stage-store/s-k1", "stage-store/s-k1.lock", "stage-store/s-k1/checkpoints",
                    "stage-store/s-k1/checkpoints/last.ckpt", "stage-store/s-k1/export",
                    "stage-store/s-k1/export/biencoder.json"]
    assert (outside / "data" / "keep.txt").read_text() == "theirs"
    assert "[chain] s: removed what a killed run left: " in capsys.readouterr().out


# ---- a shared root: the lock of another user -------------------------------------------------------------------
def _hold_once(lock) -> str:
    with exclusive(lock, "x", timeout_s=5):
        return "held"


def _take(lock) -> str:
    with exclusive(lock, "x", timeout_s=5):
        record = holder(lock)
        return f"took it, named {'me' if record and record['pid'] == os.getpid() else 'nobody'}"


@pytest.mark.skipif(os.geteuid() != 0, reason="running a process as a second user id needs root")
@pytest.mark.parametrize("umask, named", [(0o022, "nobody"), (0o002, "me")])
def test_a_second_user_takes_the_lock_file_another_user_created(world_dir, umask, named):
    """Under umask 022 the other user may not write the lock file (0o644): it still locks (to adopt a stage it can
    read) without naming itself; under 002, in the group's directory, it names itself."""
    from test_files import GROUP, as_user

    os.chown(world_dir, 65533, GROUP)
    world_dir.chmod(0o2775)
    lock = world_dir / "s-k1.lock"
    assert as_user(65533, umask, _hold_once, lock, groups=(GROUP,)) == (0, "held")  # user A created it
    assert as_user(65534, umask, _take, lock, groups=(65534, GROUP) if umask == 0o002 else ()) == (
        0, f"took it, named {named}")
