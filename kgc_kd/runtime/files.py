"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the new one, never a part.

Reports, the chain's state file, predictions, sweep tables and checkpoints all go through here. A file gets the
mode a plain `open()` would give it (0o666 less the umask), not mkstemp's 0o600: other users of a shared run.root
(a multi-node sweep, a group's stage store) can read what a run wrote.

And the other side of writing: `confined` checks a path lies inside its root before anything is written there,
`remove` deletes a file or a tree inside its root without ever following a symbolic link out of it, and
`clear_temporaries` removes what a killed writer left (`.<name>.*.tmp` files, `*.tmp` directories).
"""

from __future__ import annotations

import json
import os
import shutil
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
    `root` (resolved too); OutsideRoot names `what` and both paths otherwise. Returns the resolved path. A path
    relative to the working directory (not to `root`) must be made absolute first (`Path.absolute()`)."""
    base = Path(root).expanduser().resolve()
    target = (base / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    if target != base and base not in target.parents:
        raise OutsideRoot(f"{what}: {target} lies outside its root {base}; refused before anything was written")
    return target


def remove(path: str | Path, root: str | Path, what: str, ignore_errors: bool = False) -> bool:
    """Remove `path` (a file, a symbolic link or a directory tree) that lies inside `root`; True when something
    was there. A symbolic link is unlinked itself, never its target; a directory is removed with `shutil.rmtree`,
    which on Linux works through directory descriptors and unlinks the links inside without following them.
    The directory holding `path` is resolved (symbolic links followed) and must lie inside `root`: OutsideRoot,
    naming `what`, before anything is removed otherwise (the root itself is never removed). `ignore_errors`:
    an OSError while removing (a file of another user) leaves what could not be removed, silently."""
    path = Path(path).absolute()  # relative to the working directory, like every path handed in here
    parent = confined(root, path.parent, what)
    target = parent / path.name
    if path.name in ("", ".", ".."):
        raise OutsideRoot(f"{what}: {path} is not an entry inside its root {root}; refused")
    try:
        if target.is_symlink() or not target.is_dir():
            target.unlink()
        else:
            shutil.rmtree(target)
    except FileNotFoundError:
        return False
    except OSError:
        if not ignore_errors:
            raise
        return False
    return True


def is_temporary(name: str) -> bool:
    """A name a writer uses until its result is whole: `replace_atomically`'s `.<name>.*.tmp`, an export's
    `export.tmp`, a link's `.<name>.link.tmp` (all end in `.tmp`)."""
    return name.endswith(".tmp")


def clear_temporaries(directory: str | Path, root: str | Path) -> list[Path]:
    """Remove every temporary entry (`is_temporary`) under `directory` (itself inside `root`), files and
    directories, as a writer killed mid-write left them; symbolic links are removed, never followed. Call it
    only where no other process writes (under the lock of what `directory` holds). Returns what was removed;
    what cannot be removed (another user's file) is left."""
    directory = Path(directory)
    confined(root, Path(directory).absolute(), "the directory to clear of temporaries")
    removed = []
    for here, dirs, files in os.walk(directory, followlinks=False):
        for name in [*dirs, *files]:
            if is_temporary(name) and remove(Path(here) / name, root, "a temporary entry", ignore_errors=True):
                removed.append(Path(here) / name)
        dirs[:] = [d for d in dirs if not is_temporary(d)]
    return removed


def open_lock_file(lock_path: str | Path) -> tuple[int, bool]:
    """A lock file's descriptor (created with the mode the umask gives) and whether it is writable: read-only where
    this user may not write it (another user's lock file in a shared root under umask 022); `flock` takes a lock
    through a read-only descriptor too."""
    try:
        return os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666), True
    except PermissionError:
        return os.open(lock_path, os.O_RDONLY), False
