"""Content fingerprints of a KG as loaded: what the stage store keys a stage on (chain/stage_spec.py).

`kg_fingerprint(kg)` is one SHA-256 (hex) per part of the KG, each over its content alone (no path, no name):

- `entities`: the entity ids, names and descriptions; `relations`: the relation ids and texts;
- `train`, `valid`, `test`: the (N, 3) triple tensors of each split.

A copy of the same files in another directory, or the same KG read from another layout, has the same
fingerprint; one changed character, triple or line changes the part it lies in. The parts are separate so a
caller can key on some of them: a stage's key covers everything but `test` (a changed test split re-evaluates
a stage instead of training it again).

Cheap at scale: triples are hashed as their int64 bytes (one buffer per split, no copy when contiguous); texts
are joined and hashed a chunk at a time (`CHUNK` strings), so memory stays bounded by one chunk, and their
lengths are hashed beside them, so no choice of separator inside a text can make two lists alike. No Lightning.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch

from kgc_kd.data.kg import KG, SPLITS

CHUNK = 1 << 16  # strings joined and hashed at once
TEXT_PARTS = {"entities": ("entity_ids", "entity_names", "entity_descs"),
              "relations": ("relation_ids", "relation_texts")}
PARTS = (*TEXT_PARTS, *SPLITS)


def triples_digest(triples) -> str:
    """SHA-256 (hex) of a triple tensor's shape and int64 bytes (row-major, little-endian)."""
    arr = np.ascontiguousarray(torch.as_tensor(triples, dtype=torch.long).reshape(-1, 3).numpy(), dtype="<i8")
    h = hashlib.sha256(f"int64{arr.shape}\n".encode())
    h.update(arr)  # the array's buffer, C-contiguous: no copy
    return h.hexdigest()


def texts_digest(*lists: Sequence[str]) -> str:
    """SHA-256 (hex) of one or more lists of strings: each list's length, the UTF-8 bytes of its strings in
    order and every string's length, a chunk of `CHUNK` strings at a time."""
    h = hashlib.sha256()
    for texts in lists:
        lengths = hashlib.sha256()
        h.update(f"list {len(texts)}\n".encode())
        for start in range(0, len(texts), CHUNK):
            chunk = texts[start:start + CHUNK]
            h.update("".join(chunk).encode("utf-8", "surrogatepass"))
            lengths.update(np.fromiter(map(len, chunk), dtype="<i8", count=len(chunk)).tobytes())
        h.update(lengths.digest())
    return h.hexdigest()


def kg_fingerprint(kg: KG) -> dict[str, str]:
    """Part name (`PARTS`: entities, relations, train, valid, test) -> the SHA-256 of that part's content."""
    out = {part: texts_digest(*(getattr(kg, f) for f in fields)) for part, fields in TEXT_PARTS.items()}
    out.update({split: triples_digest(kg.split(split)) for split in SPLITS})
    return out
