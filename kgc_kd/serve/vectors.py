"""An export's entity vectors: every entity's vector, computed once (at export, or by predict's first start) and
memory-mapped from then on, so serving a stage never encodes the graph again.

    <export>/entity_vectors.npy    (E, D) float16, row-normalised as `pool()` returns them, C order
    <export>/entity_vectors.json   {"format", "key", "shape", "dtype": "float16", "sha256": of the .npy file}

The `key` is what the vectors are a function of (`vectors_key`): the export's model files and KG files by content
(`serve.digest`), `max_length`, `link_graph` and the encoder that computed them ("fp32": the torch towers;
"onnx-fp32", "onnx-int8": an ONNX variant's entity tower). A variant other than "fp32" keeps its own files,
`entity_vectors-<encoder>.npy/.json`: an ONNX-served query is ranked against entities of the same tower, whose
vectors differ from the torch ones by the variant's error (int8: ~1e-2), and one file per variant lets each be
served without overwriting another's. `sha256` is the identity an entity index records (`vectors_digest`).

Why float16: the vectors are unit vectors whose components are ~1/sqrt(D); float16 keeps ~3 decimal digits of
each (relative error <= 2^-11), so a score (a dot product of two unit vectors) moves by at most 2^-11 ~ 5e-4
(sum |q_i e_i| <= 1), and the file is half of float32's (Wikidata5M, 4.6M x 768: 7.1 GB instead of 14). Exact
search converts them to float32 in memory once; an approximate index reads them as it builds.

Reading never trusts the file: the sidecar is JSON, the array is read with `np.load(mmap_mode="r",
allow_pickle=False)` (a pickled object array is refused, never run), and the key, shape, dtype and SHA-256 are
checked; a file that fails a check is named in one `DataWarning` line and the caller computes the vectors again.
Writing is atomic per file (a temporary sibling renamed into place), the .npy before the .json: a reader that
meets a new array with the old sidecar sees a SHA-256 that differs and rebuilds, never reads a mixture.
No Lightning.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from kgc_kd.data.batching import EntityCollator
from kgc_kd.data.io import DataWarning
from kgc_kd.data.tokens import TokenCache
from kgc_kd.runtime.files import replace_atomically, write_json_atomic
from kgc_kd.runtime.fingerprint import file_digest
from kgc_kd.serve.digest import kg_digest, model_digest

VECTORS_FORMAT = 1  # the sidecar's "format": bump when what the files hold changes
VECTORS_FILE = "entity_vectors.npy"  # the torch ("fp32") encoder's vectors; its sidecar: entity_vectors.json
TORCH_ENCODER = "fp32"
DTYPE = np.float16


class _Hashing:
    """A binary file (or, `f=None`, nowhere) that hashes what is written to it: the SHA-256 of an .npy file as
    `np.save` writes it, without reading the file back."""

    def __init__(self, f=None):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data) if self.f is not None else memoryview(data).nbytes


def npy_sha256(array: np.ndarray) -> str:
    """The SHA-256 of `array`'s .npy file (`np.save`, no pickle): what the sidecar records for it; computed
    without a file for vectors kept in memory (a read-only export), so an index built from them is keyed alike."""
    out = _Hashing()
    np.save(out, np.ascontiguousarray(array), allow_pickle=False)
    return out.sha.hexdigest()


class UnusableVectors(Exception):
    """Why an export's vector files cannot be used (the caller computes the vectors again)."""


def vectors_files(directory: Path, encoder: str = TORCH_ENCODER) -> tuple[Path, Path]:
    """The (.npy, .json) paths of `encoder`'s vectors in `directory`: `entity_vectors.npy/.json` for the torch
    towers, `entity_vectors-<encoder>.npy/.json` for another (an ONNX variant)."""
    stem = "entity_vectors" if encoder == TORCH_ENCODER else f"entity_vectors-{encoder}"
    return Path(directory) / f"{stem}.npy", Path(directory) / f"{stem}.json"


def vectors_key(export: Path, max_length: int, link_graph: bool, encoder: str = TORCH_ENCODER) -> dict:
    """What the entity vectors of `export` are a function of: its model files and its KG files, by content
    (a copied export keeps its vectors, another stage's or KG's never match), how texts become inputs
    (`max_length`, `link_graph`: with it an entity's text reads its neighbours in the training triples) and the
    encoder that computed them (`TORCH_ENCODER`, or an ONNX variant such as "onnx-int8")."""
    return {"model": model_digest(export), "kg": kg_digest(export), "max_length": int(max_length),
            "link_graph": bool(link_graph), "encoder": str(encoder)}


def encode_entities(encode_entity: Callable[[dict[str, Tensor]], Tensor], tokens: TokenCache, num_entities: int,
                    batch_size: int = 256, device: str | torch.device = "cpu") -> Tensor:
    """Every entity's vector, (num_entities, D) float32 on the CPU: `tokens`' inputs for entities
    0..num_entities-1 (`EntityCollator`: each text as a ranking candidate, all its neighbours shown) in batches of
    `batch_size`, moved to `device` and encoded without gradients. The output is allocated once, after the
    first batch (a list of batches would double the peak at Wikidata5M's 4.6M entities). The caller puts the
    encoder in eval mode (dropout off) and on `device`."""
    if num_entities > tokens.num_entities:
        raise ValueError(f"{num_entities} entities asked for, the token table holds {tokens.num_entities}")
    collate, device = EntityCollator(tokens), torch.device(device)
    out: Tensor | None = None
    with torch.no_grad():
        for start in range(0, num_entities, batch_size):
            ids = list(torch.arange(start, min(start + batch_size, num_entities)))
            inputs = {k: v.to(device) for k, v in collate(ids)["entity"].items()}
            vecs = encode_entity(inputs).float().cpu()
            if out is None:
                out = torch.empty(num_entities, vecs.shape[1], dtype=torch.float32)
            out[start:start + len(vecs)] = vecs
    return out if out is not None else torch.empty(0, 0, dtype=torch.float32)


def write_entity_vectors(directory: Path, key: dict, vectors: Tensor | np.ndarray) -> bool:
    """`vectors` (E, D) as float16 into `directory`'s files for `key["encoder"]`, with their sidecar; each file
    written to a temporary sibling and renamed, the .npy first. False (nothing written) where `directory` cannot
    be written (a read-only export: the caller keeps the vectors in memory)."""
    directory = Path(directory)
    npy, meta = vectors_files(directory, key["encoder"])
    if not os.access(directory, os.W_OK):
        return False
    array = np.ascontiguousarray(
        vectors.detach().to("cpu", torch.float32).numpy() if isinstance(vectors, Tensor) else vectors,
        dtype=DTYPE)
    if array.ndim != 2:
        raise ValueError(f"entity vectors must be (entities, dim), got shape {list(array.shape)}")
    written = _Hashing()

    def save(f) -> None:
        written.f = f
        np.save(written, array, allow_pickle=False)

    try:
        replace_atomically(npy, save)
        write_json_atomic(meta, {"format": VECTORS_FORMAT, "key": key, "shape": list(array.shape),
                                 "dtype": np.dtype(DTYPE).name, "sha256": written.sha.hexdigest()})
    except OSError:
        return False  # e.g. a read-only file system that os.access did not see: kept in memory
    return True


def read_entity_vectors(directory: Path, key: dict, shape: tuple[int, int]) -> np.ndarray | None:
    """`key["encoder"]`'s vectors in `directory`, memory-mapped read-only, (E, D) float16; None where there are
    none, or (after one `DataWarning` line saying why) where they cannot be used: stale (computed for another
    model/KG or other inputs: the key differs), another shape or dtype, a damaged or unreadable file (the
    SHA-256 the sidecar records differs, a truncated array, a pickled object: refused, never run). Never raises:
    the caller computes them again. The SHA-256 check reads the whole file (~1.4 GB/s per core)."""
    npy, meta = vectors_files(directory, key["encoder"])
    if not npy.exists() and not meta.exists():
        return None
    try:
        return _read(npy, meta, key, tuple(shape))
    except Exception as err:  # noqa: BLE001 - whatever a damaged file makes json or numpy raise: rebuilt, never fatal
        why = " ".join(str(err).split()) or type(err).__name__
        warnings.warn(f"{npy}: entity vectors cannot be used ({why}); they are computed again", DataWarning,
                      stacklevel=2)
        return None


def _read(npy: Path, meta: Path, key: dict, shape: tuple[int, ...]) -> np.ndarray:
    if not meta.is_file() or not npy.is_file():
        raise UnusableVectors(f"{(meta if npy.is_file() else npy).name} is missing")
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UnusableVectors(f"{meta.name} is not JSON: {err}") from None
    if not isinstance(info, dict) or info.get("format") != VECTORS_FORMAT:
        raise UnusableVectors(f"{meta.name} is not a format-{VECTORS_FORMAT} sidecar")
    if info.get("key") != key:
        theirs = info.get("key") if isinstance(info.get("key"), dict) else {}
        differ = sorted(k for k in key if theirs.get(k) != key[k]) or sorted(theirs)
        raise UnusableVectors(f"stale: computed for another model/KG ({', '.join(differ)} "
                              f"{'differs' if len(differ) == 1 else 'differ'})")
    want = (list(shape), np.dtype(DTYPE).name)
    if (info.get("shape"), info.get("dtype")) != want:
        raise UnusableVectors(f"{meta.name} records {info.get('dtype')} {info.get('shape')}, expected "
                              f"{want[1]} {want[0]}")
    if file_digest(npy) != info.get("sha256"):
        raise UnusableVectors(f"damaged: its SHA-256 is not the one {meta.name} records")
    array = np.load(npy, mmap_mode="r", allow_pickle=False)
    if array.dtype != DTYPE or tuple(array.shape) != shape:
        raise UnusableVectors(f"it holds {array.dtype} {list(array.shape)}, expected {want[1]} {want[0]}")
    return array


def vectors_digest(directory: Path, encoder: str = TORCH_ENCODER) -> str:
    """The SHA-256 that `encoder`'s sidecar in `directory` records for its .npy file: what an entity index built
    from those vectors records (and is rebuilt when it differs). FileNotFoundError naming the sidecar where there
    is none."""
    _, meta = vectors_files(directory, encoder)
    if not meta.is_file():
        raise FileNotFoundError(f"{meta}: no entity vectors here (predict writes them on its first start)")
    return str(json.loads(meta.read_text(encoding="utf-8"))["sha256"])
