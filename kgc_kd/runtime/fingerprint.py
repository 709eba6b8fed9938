"""Content fingerprints of files and directories: what the stage store, predict's caches and exports key on.

A fingerprint is the SHA-256 of the bytes (a directory: of every regular file's relative path and bytes, in
sorted order), so a copy of the same files anywhere has the same fingerprint and any changed byte changes it.
SHA-256 reads ~1.4 GB/s on one core of our CI machine: a bert-base PLM (440 MB) costs ~0.3 s. Within one process
a file's digest is remembered under (path, size, mtime_ns, inode), so a run that fingerprints the same PLM for
every stage reads it once.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from pathlib import Path
from typing import Iterable

_CHUNK = 8 << 20
_MEMO: dict[tuple, str] = {}


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of one file's bytes."""
    path = Path(path)
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if memo_key not in _MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        _MEMO[memo_key] = h.hexdigest()
    return _MEMO[memo_key]


def tree_files(root: str | Path, skip: Iterable[str] = ()) -> list[Path]:
    """Every regular file under `root` (symbolic links followed to files, never to directories outside it), as
    paths relative to `root`, sorted; a name matching a pattern of `skip` (a file or directory name at any depth,
    an exact name or a shell pattern such as `entity_vectors-*`) is left out."""
    root = Path(root)
    patterns = tuple(skip)
    skipped = lambda name: any(fnmatch.fnmatchcase(name, p) for p in patterns)  # noqa: E731
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not skipped(d) and not os.path.islink(os.path.join(dirpath, d)))
        for name in filenames:
            full = Path(dirpath) / name
            if not skipped(name) and full.is_file():
                out.append(full.relative_to(root))
    return sorted(out, key=lambda p: p.as_posix())


def tree_digest(root: str | Path, skip: Iterable[str] = ()) -> str:
    """SHA-256 (hex) over every regular file under `root` (`tree_files`): relative path, size and bytes digest of
    each, so renaming, adding or changing a file changes it. A single file: its `file_digest`."""
    root = Path(root)
    if root.is_file():
        return file_digest(root)
    h = hashlib.sha256()
    for rel in tree_files(root, skip):
        full = root / rel
        h.update(f"{rel.as_posix()}\0{full.stat().st_size}\0{file_digest(full)}\n".encode())
    return h.hexdigest()
