"""The stage store's lock: one run trains a stage, the others wait for it and then reuse it.

An exclusive `flock` on a lock file beside the stage's entry; the kernel releases it when its holder exits,
however it exits, so a killed run never leaves a lock held. Once it holds the lock, the holder writes who it
is into the lock file (one JSON line: pid, host, when it took the lock in UTC, its command line and what tells
its process apart on this machine), and empties it when it lets go. A run that finds the lock held says who
holds it and how long it has waited, again every `repeat_s` (60 s), and gives up after `timeout_s`
(`run.lock_timeout_s`; None: waits as long as the holder runs) with a `LockTimeout` naming the lock file and
the holder.

The same record of a process tells a sweep's worker whether the process that runs a trial is gone
(`process_record`, `process_gone`, used by `kgc_kd.sweep.study`).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from kgc_kd.runtime.files import open_lock_file

REPEAT_S = 60.0  # seconds between a waiter's messages


class LockTimeout(TimeoutError):
    """The lock was still held after the timeout; the message names the lock file and its holder."""


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux: /proc/<pid>/stat, field 22); None where
    unknown. With the pid it names one process: a pid used again later has another start."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    try:
        return int(stat.rpartition(")")[2].split()[19])  # fields after the command name start at field 3
    except (IndexError, ValueError):
        return None


def _machine() -> str:
    """What tells this machine and pid namespace apart from another with the same host name (a container):
    the boot id and the pid namespace; empty where unknown."""
    boot = _read("/proc/sys/kernel/random/boot_id") or ""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return f"{boot}/{ns}" if boot or ns else ""


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def process_record() -> dict[str, Any]:
    """This process as others see it: pid, host, its start (ticks since boot, to tell a reused pid apart), the
    machine (boot and pid namespace) and its command line."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": _start_ticks(os.getpid()),
            "machine": _machine(), "command": shlex.join(getattr(sys, "orig_argv", sys.argv))}


def process_gone(record: dict[str, Any] | None) -> bool | None:
    """True: the process `record` (a `process_record`) names has ended; False: it still runs; None: it cannot be
    told from here (another machine or container, or no record)."""
    if not isinstance(record, dict) or "pid" not in record:
        return None
    if record.get("host") != socket.gethostname() or not record.get("machine") or record["machine"] != _machine():
        return None
    pid = int(record["pid"])
    start = _start_ticks(pid)
    if start is None and Path("/proc/self/stat").exists():
        return True  # no /proc/<pid>: no such process
    if start is None:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # another user's process
            pass
        return False
    return record.get("start_ticks") is not None and start != record["start_ticks"]  # another process, same pid


def holder(lock_path: str | Path) -> dict[str, Any] | None:
    """The record its holder wrote into `lock_path` (None: none, or not yet written)."""
    try:
        text = Path(lock_path).read_text().strip()
        record = json.loads(text) if text else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def describe(record: dict[str, Any] | None) -> str:
    """A holder for a message: `pid 123 on host h since 2026-01-02T03:04:05Z (python -m kgc_kd.fit ...)`."""
    if not record:
        return "a process that has not written its name into the lock file yet"
    command = " ".join(str(record.get("command")).split())  # one line
    command = command if len(command) <= 200 else command[:199] + "…"
    text = f"pid {record.get('pid')} on host {record.get('host')} since {record.get('since')} ({command})"
    gone = process_gone(record)
    return text + (" - that process has ended: a child it left, or a user who may not write the lock file, holds "
                   "it now" if gone else "")


def _write_holder(fd: int) -> None:
    record = {**process_record(), "since": _utc_now()}
    data = (json.dumps(record) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


@contextlib.contextmanager
def exclusive(lock_path: Path, waiting: str, timeout_s: float | None = None,
              repeat_s: float | None = None) -> Iterator[None]:
    """An exclusive `flock` on `lock_path` for the block, its holder named in the file. When another process
    holds it: says `waiting`, the holder and the time waited on stderr, again every `repeat_s` seconds
    (default REPEAT_S), and waits; `timeout_s` (None: no limit): LockTimeout once that long has passed."""
    repeat_s = REPEAT_S if repeat_s is None else repeat_s
    fd, writable = open_lock_file(Path(lock_path))
    try:
        start = time.monotonic()
        next_say = start
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            waited = time.monotonic() - start
            if timeout_s is not None and waited >= timeout_s:
                raise LockTimeout(f"{lock_path}: still held after {waited:.0f} s (run.lock_timeout_s={timeout_s:g}) "
                                  f"by {describe(holder(lock_path))}; if that process hangs, stop it (its lock "
                                  "goes with it), or raise run.lock_timeout_s")
            if time.monotonic() >= next_say:
                print(f"{waiting}: held by {describe(holder(lock_path))}; waiting for it "
                      f"({waited:.0f} s so far)", file=sys.stderr, flush=True)
                next_say += repeat_s
            pause = min(1.0, repeat_s / 4)
            if timeout_s is not None:
                pause = min(pause, max(0.0, timeout_s - waited))
            time.sleep(max(pause, 0.01))
        try:
            if writable:
                _write_holder(fd)
            yield
        finally:
            if writable:
                os.ftruncate(fd, 0)  # nobody holds it once it is let go
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
