"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the new one, never a part.

Reports, the chain's state file, predictions, sweep tables and checkpoints all go through here. A file gets the
mode a plain `open()` would give it (0o666 less the umask), not mkstemp's 0o600: other users of a shared run.root
(a multi-node sweep, a group's stage store) can read what a run wrote.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def current_umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status; elsewhere set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def replace_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(file)` on a temporary sibling of `path`, flush it to disk, then rename it over `path`:
    readers see the old file or the new one, never a part (the same filesystem, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0o600 would hide it from the other users of a root
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    replace_atomically(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class OutsideRoot(ValueError):
    """A path that would be written or removed outside the root it belongs to."""


def confined(root: str | Path, path: str | Path, what: str) -> Path:
    """`path` (relative to `root`, or absolute) resolved, symbolic links followed, and checked to lie inside
    `root` (resolved too); OutsideRoot names `what` and both paths otherwise. Returns the resolved path."""
    base = Path(root).expanduser().resolve()
    target = (base / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    if target != base and base not in target.parents:
        raise OutsideRoot(f"{what}: {target} lies outside its root {base}; refused before anything was written")
    return target
