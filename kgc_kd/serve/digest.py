"""What an export's derived files (entity vectors, ONNX towers, an entity index) are a function of, by content.

A derived file records the digest of what it was made from and is refused (or rebuilt) where the export's own
digest differs: copied exports keep their files, another stage's or another KG's are never reused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kgc_kd.data.kg_export import META_FILE, PARTS_DIR
from kgc_kd.runtime.fingerprint import tree_digest

MODEL_FILES = ("biencoder.json", "query", "entity")  # the model: weights, configs, tokenizer, temperature, pooling
KG_FILES = (META_FILE, PARTS_DIR)  # the KG: texts and (with the link graph) training triples
# What is derived from an export's model and KG, never part of them: its entity vectors (per encoder variant),
# the approximate index over them, the ONNX towers and their temporary directories. Digests of "the model" and
# model artifacts leave them out (predict writing them into an export changes no stage key).
DERIVED_FILES = ("entity_vectors*", "entity_index*", "onnx", ".onnx.*.tmp")


def export_digest(export: Path, names: tuple[str, ...]) -> str:
    """SHA-256 over the contents of the export's files and directories `names` (those present)."""
    h = hashlib.sha256()
    for name in names:
        if (Path(export) / name).exists():
            h.update(f"{name}\0{tree_digest(Path(export) / name)}\n".encode())
    return h.hexdigest()


def model_digest(export: Path) -> str:
    """The digest of the export's model files (`MODEL_FILES`)."""
    return export_digest(export, MODEL_FILES)


def kg_digest(export: Path) -> str:
    """The digest of the export's KG files (`KG_FILES`)."""
    return export_digest(export, KG_FILES)
