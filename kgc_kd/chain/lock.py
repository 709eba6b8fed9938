"""The stage store's lock: one run trains a stage, the others wait for it and then reuse it."""

from __future__ import annotations

import contextlib
import fcntl
import sys
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def exclusive(lock_path: Path, waiting: str) -> Iterator[None]:
    """An exclusive `flock` on `lock_path` for the block; when another process holds it, says `waiting` on
    stderr and waits for it."""
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{waiting}; waiting for it", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
