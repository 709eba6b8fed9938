"""The on-disk cache of token tables: one directory per (tokenizer, max length, texts), memory-mapped.

Tokenising a Wikidata5M-sized graph takes minutes and its (E, L) int32 table is the biggest host array of
a run, so `TokenCache.load_or_build` keeps the table on disk under the run root and maps it:

- an entry is a directory `<tokenizer fingerprint>-L<max length>-<text fingerprint>-v<format>` holding one
  `.npy` file per array and a `meta.json` (its key, the arrays' shapes, dtypes and SHA-1s, and counts for
  the report). The name is the key, so a different tokenizer, max length or any entity/relation text
  reads another entry; `FORMAT` changes when the files or the text rule change;
- an entry is written whole into a temporary directory beside it and renamed into place (rename is atomic),
  so a reader never sees half an entry and reading takes no lock (a read-only entry, e.g. in an export,
  can be used; where nothing can be written, a missing entry is built in memory instead). Builders of the same entry take an exclusive `flock` on a lock file beside it first and
  look again: the other DDP ranks wait and then read the entry rank 0 wrote instead of tokenising too. Where
  there is no such lock (or it does not hold, e.g. on some network file systems) two builders may both
  write; the first rename wins and the other uses that entry;
- arrays are opened with `np.load(mmap_mode="c")`: copy-on-write pages of the file, shared through the page
  cache by every process that maps it (all ranks, later stages, later runs); writable for torch.from_numpy
  (a read-only mapping makes it warn), though nothing writes to them, and a write would stay private;
- an entry that cannot be used (missing file, other shape, checksum or key mismatch, or arrays not of the dtype
  and shape the reader expects, `read(expect=...)`) is reported in one `DataWarning` and rebuilt (atomically, as
  above), never used; it is never fatal. Nothing read can run code: `.npy` files are loaded with
  `allow_pickle=False` and meta.json is JSON.

Nothing here knows about tokenizers or KGs (that is `kgc_kd.data.tokens`); this is files and arrays.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kgc_kd.data.io import warn as data_warning
from kgc_kd.runtime.files import current_umask, open_lock_file

try:
    import fcntl
except ImportError:  # not on Windows: builders of one entry may then tokenise side by side (still correct)
    fcntl = None

FORMAT = 1  # bump when the files or what the texts are (kgc_kd.data.text) change
META = "meta.json"
_NAME = re.compile(r"[A-Za-z0-9_]+")  # an array's name, its file `<name>.npy` inside the entry


class UnusableEntry(Exception):
    """Why a cache entry on disk cannot be used (it is rebuilt)."""


def entry_name(key: dict) -> str:
    return f"{key['tokenizer']}-L{key['max_length']}-{key['texts']}-v{key['format']}"


def writable(directory: Path) -> bool:
    """Whether an entry could be built under `directory` (it, or its nearest existing parent, is writable):
    a read-only place (an export copied read-only) is only read; a missing entry is then built in memory."""
    d = Path(directory)
    while not d.exists() and d != d.parent:
        d = d.parent
    return os.access(d, os.W_OK)


@contextlib.contextmanager
def building(entry: Path) -> Iterator[None]:
    """Hold the exclusive lock of `entry` (created with its parent directory) while it is checked or built."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    fd, _ = open_lock_file(entry.parent / f".{entry.name}.lock")  # another user's lock file: read-only, locks too
    with os.fdopen(fd, "rb") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


Expect = Mapping[str, tuple[str, tuple[int | None, ...]]]  # array name -> (dtype, shape; None: any size)


def read(entry: Path, key: dict, *, expect: Expect | None = None,
         warn: bool = True) -> tuple[dict[str, Tensor], dict] | None:
    """The arrays (memory-mapped tensors) and meta of `entry`; None where there is none, or (with `warn`, in a
    `DataWarning` saying why) where it cannot be used: another key, a file missing, damaged (its SHA-1 is not the
    one meta.json recorded) or not what meta.json says, or an array of `expect` (what the caller will read:
    name -> dtype and shape) absent or of another dtype or shape, even where meta.json agrees with the file.
    Needs no lock: an entry appears whole or not at all."""
    if not entry.exists():
        return None
    try:
        meta = _meta(entry)
        if meta.get("key") != key:
            raise UnusableEntry(f"its key {meta.get('key')} is not {key}")
        for name, spec in meta["arrays"].items():
            digest = file_sha1(entry / f"{name}.npy")
            if digest != spec["sha1"]:
                raise UnusableEntry(f"{name}.npy has SHA-1 {digest}, meta.json says {spec['sha1']}")
        arrays = open_arrays(entry, meta)
        check(arrays, expect or {})
        return arrays, meta
    except (UnusableEntry, OSError, ValueError, KeyError, TypeError) as err:
        if warn:
            data_warning(f"token cache {entry} cannot be used ({err}); tokenising again and replacing it")
        return None


def check(arrays: Mapping[str, Tensor], expect: Expect) -> None:
    """UnusableEntry unless every array named in `expect` is among `arrays` with that dtype and shape."""
    for name, (dtype, shape) in expect.items():
        if name not in arrays:
            raise UnusableEntry(f"it holds no {name}.npy (it holds {sorted(arrays)})")
        a = arrays[name]
        got = str(a.dtype).removeprefix("torch.")
        if got != dtype or a.dim() != len(shape) or any(n is not None and n != m for n, m in zip(shape, a.shape)):
            want = "x".join("*" if n is None else str(n) for n in shape)
            raise UnusableEntry(f"{name}.npy holds {got} {'x'.join(map(str, a.shape))}, expected {dtype} {want}")


def open_arrays(entry: Path, meta: dict | None = None) -> dict[str, Tensor]:
    """Map every array of `entry` (shapes and dtypes as meta.json says) as a tensor sharing the file's pages."""
    meta = _meta(entry) if meta is None else meta
    arrays = {}
    for name, spec in meta["arrays"].items():
        if not _NAME.fullmatch(name):
            raise UnusableEntry(f"meta.json names an array {name!r}; expected letters, digits and _ only")
        a = np.load(entry / f"{name}.npy", mmap_mode="c", allow_pickle=False)
        if list(a.shape) != spec["shape"] or str(a.dtype) != spec["dtype"]:
            raise UnusableEntry(f"{name}.npy holds {a.dtype} {list(a.shape)}, meta.json says "
                                f"{spec['dtype']} {spec['shape']}")
        arrays[name] = torch.from_numpy(a)
    return arrays


def write(entry: Path, arrays: dict[str, np.ndarray], meta: dict, *, replace: bool = False) -> None:
    """Write `arrays` and `meta` (plus the arrays' shapes, dtypes and SHA-1s) as `entry`, atomically.
    `replace`: an existing entry was found unusable and is removed first; otherwise an existing entry is
    another builder's (it renamed first) and is kept."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0o700 would hide it from the other users of a root
        specs = {}
        for name, a in arrays.items():
            np.save(tmp / f"{name}.npy", a, allow_pickle=False)
            specs[name] = {"shape": list(a.shape), "dtype": str(a.dtype), "sha1": file_sha1(tmp / f"{name}.npy")}
        (tmp / META).write_text(json.dumps({**meta, "arrays": specs}, indent=1))
        if replace and entry.exists():
            _remove(entry)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / META).exists():
                raise
            # another process renamed its copy first: keep that one (ours is removed below)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_sha1(path: Path, block: int = 1 << 22) -> str:
    """SHA-1 of a file read in blocks (the file is not mapped, so this process's resident memory stays small)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _meta(entry: Path) -> dict:
    meta = json.loads((entry / META).read_text())
    if not isinstance(meta, dict) or not isinstance(meta.get("arrays"), dict):
        raise UnusableEntry("meta.json lists no arrays")
    return meta


def _remove(entry: Path) -> None:
    """Move `entry` aside, then delete it: a concurrent reader never sees it half deleted."""
    trash = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".old", dir=entry.parent))
    try:
        os.rename(entry, trash / "entry")
    except FileNotFoundError:  # another builder removed it already
        pass
    shutil.rmtree(trash, ignore_errors=True)
