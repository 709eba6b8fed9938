"""A KG saved next to an exported model, compactly, so that `kgc_kd.predict` starts in seconds at any scale.

An exported stage carries its KG (and its token table) so it predicts on its own. The first format wrote the
whole KG as one `kg.json` with every triple a JSON list: ~1.4 GB per stage at Wikidata5M (4.6M entities,
~21M triples), and as slow to parse. The layout written here (format 2):

    <export>/kg.json            small: {"format": 2, "name", "source", the sizes, and the caller's meta
                                (max_length, link_graph, ...)}
    <export>/kg/train.npy       (N, 3) head, relation, tail: int32 where every id fits, else int64
    <export>/kg/valid.npy, kg/test.npy
    <export>/kg/entity_ids.txt  one text a line, UTF-8; "\\", newline and carriage return escaped as
    <export>/kg/entity_names.txt  \\\\, \\n, \\r (so a line is one text, whatever it holds)
    <export>/kg/entity_descs.txt, kg/relation_ids.txt, kg/relation_texts.txt
    <export>/token-cache/<entry>/  the token table's cache entry (`link_token_cache`), memory-mapped by predict

Why these encodings (measured on 459k entities, 1/10 of Wikidata5M, best of 5 loads of the descriptions):
escaped lines 0.105 s, one JSON array of strings 0.147 s, JSON lines parsed one by one 0.66 s. A file is
split at "\\n" only and read without newline translation, and only the lines holding a backslash are
unescaped, so tabs, unicode and empty texts cost nothing. The `.npy` triples load with one read each.

The texts are most of the bytes (1/10 scale, 20-30-word descriptions: 104 of 129 MB; format 1: 154 MB), so
the stages of a chain do not each hold a copy: `save_kg(parts_from=...)` hard-links the kg/ files of an
earlier export of the same KG, and the token table is linked from the run's cache. Files are always
written to a new name and renamed, so a file linked into other exports is never rewritten under them.

`kg.json` keeps its name so that an export stays one recognisable file plus its parts, and so that old exports
(format 1, no "format" key: everything inline) still load: `load_kg_export` reads both.
This module knows nothing of Lightning or models; `ChainStore.export` and `kgc_kd.predict` call it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kgc_kd.data.kg import KG, SPLITS

FORMAT = 2  # kg.json's "format"; absent in format 1
META_FILE = "kg.json"
PARTS_DIR = "kg"
TOKEN_CACHE_DIR = "token-cache"
TEXT_FIELDS = ("entity_ids", "entity_names", "entity_descs", "relation_ids", "relation_texts")
_KG_KEYS = frozenset({"format", "name", "source", "num_entities", "num_relations", "num_triples", *TEXT_FIELDS,
                      *SPLITS})

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}
_ESCAPED = re.compile(r"\\[\\nr]")
_TO_ESCAPE = re.compile(r"[\\\n\r]")


# ---- format 2 ---------------------------------------------------------------------------------------------
def save_kg(kg: KG, directory: str | Path, *, parts_from: str | Path | None = None, **meta: Any) -> None:
    """Write `kg` into `directory` (kg.json + kg/); `meta` (JSON values: max_length, link_graph, ...) goes into
    kg.json and comes back from `load_kg_export`. `kg.notes` (what loading repaired) is not saved.
    `parts_from`: an export of this same KG (the caller knows, e.g. a chain's previous stage exported from
    the same object) whose kg/ files are hard-linked instead of written again: the stages of a chain hold
    one copy of the KG on disk. Used only where its kg.json has this KG's name and sizes; else written."""
    clash = sorted(_KG_KEYS & meta.keys())
    if clash:
        raise ValueError(f"save_kg: meta keys {clash} are the KG's own")
    d = Path(directory)
    parts = d / PARTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    info = {"format": FORMAT, "name": kg.name, "source": kg.source, "num_entities": kg.num_entities,
            "num_relations": kg.num_relations, "num_triples": {s: len(kg.split(s)) for s in SPLITS}}
    if parts_from is not None and _same_parts(Path(parts_from), info):
        link_tree(Path(parts_from) / PARTS_DIR, parts)
    else:
        dtype = triple_dtype(max(kg.num_entities, kg.num_relations))
        for split in SPLITS:
            triples = kg.split(split).numpy().astype(dtype, copy=False)
            _replace(parts / f"{split}.npy", lambda f, a=triples: np.save(f, a, allow_pickle=False))
        for name in TEXT_FIELDS:
            write_lines(parts / f"{name}.txt", getattr(kg, name))
    (d / META_FILE).write_text(json.dumps({**info, **meta}, indent=2) + "\n")


def _same_parts(export: Path, info: dict) -> bool:
    try:
        theirs = json.loads((export / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all(theirs.get(k) == v for k, v in info.items()) and (export / PARTS_DIR).is_dir()


def load_kg_export(directory: str | Path) -> tuple[KG, dict[str, Any]]:
    """The KG of an export and the meta saved with it (format 2 from `save_kg`, or an old format-1 kg.json)."""
    d = Path(directory)
    path = d / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{d}: no {META_FILE} (not an exported stage)")
    info = json.loads(path.read_text(encoding="utf-8"))
    version = info.get("format", 1)
    if version == 1:
        return kg_from_json(info), {k: v for k, v in info.items() if k not in _KG_KEYS}
    if version != FORMAT:
        raise ValueError(f"{path}: KG export format {version!r}; this version reads formats 1 and {FORMAT}")
    parts = d / PARTS_DIR
    sizes = {"entity_ids": info["num_entities"], "entity_names": info["num_entities"],
             "entity_descs": info["num_entities"], "relation_ids": info["num_relations"],
             "relation_texts": info["num_relations"]}
    texts = {name: read_lines(parts / f"{name}.txt", n) for name, n in sizes.items()}
    splits = {s: torch.from_numpy(np.load(parts / f"{s}.npy")).long() for s in SPLITS}
    for s, n in info["num_triples"].items():
        if len(splits[s]) != n:
            raise ValueError(f"{parts / s}.npy: {len(splits[s])} triples, {path} says {n}")
    kg = KG(name=info["name"], source=info.get("source", ""), **texts, **splits)
    return kg, {k: v for k, v in info.items() if k not in _KG_KEYS}


def triple_dtype(num_ids: int) -> type:
    """int32 where every id in [0, num_ids) fits (half the bytes), else int64."""
    return np.int32 if num_ids - 1 <= np.iinfo(np.int32).max else np.int64


def write_lines(path: Path, texts: list[str]) -> None:
    """One text a line (no final newline), escaped so that no text spans two lines."""
    escaped = (_TO_ESCAPE.sub(lambda m: _ESCAPES[m.group(0)], t) if _TO_ESCAPE.search(t) else t for t in texts)
    _replace(path, lambda f: f.write("\n".join(escaped).encode("utf-8")))


def _replace(path: Path, write) -> None:
    """`write(binary file)` into a new file renamed over `path`: a file hard-linked into other exports (or a
    token cache) is replaced here, never rewritten in place under them."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def read_lines(path: Path, count: int) -> list[str]:
    """What `write_lines` wrote; `count` texts are expected (zero texts and one empty text read alike)."""
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n") if count or text else []
    if len(lines) != count:
        raise ValueError(f"{path}: {len(lines)} lines, expected {count}")
    if "\\" in text:
        for i in [i for i, line in enumerate(lines) if "\\" in line]:
            lines[i] = _ESCAPED.sub(lambda m: _UNESCAPES[m.group(0)], lines[i])
    return lines


# ---- the token table ----------------------------------------------------------------------------------------
def link_token_cache(cache_path: str | Path | None, directory: str | Path) -> Path | None:
    """Put the token-cache entry `cache_path` (a `TokenCache.cache_path`: .npy tables + meta.json) into
    `directory/token-cache/<entry name>/`, as hard links (no second copy on disk; a copy where the entry is
    on another filesystem), so the export is self-contained and `TokenCache.load_or_build(...,
    cache_dir=directory / "token-cache")` finds it. None (a table kept only in memory): nothing is written.
    Returns the new entry's directory, or None."""
    if cache_path is None:
        return None
    src = Path(cache_path)
    if not src.is_dir():
        raise FileNotFoundError(f"token cache entry {src} does not exist")
    dst = Path(directory) / TOKEN_CACHE_DIR / src.name
    link_tree(src, dst)
    return dst


def link_tree(src: Path, dst: Path) -> None:
    """Every file under `src` at the same place under `dst`, hard-linked (copied across filesystems)."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(path, target)
        except OSError:  # another filesystem (EXDEV) or one without hard links
            shutil.copy2(path, target)


# ---- format 1 (one kg.json with everything inline), read for old exports --------------------------------------
def kg_from_json(data: dict) -> KG:
    """The KG of a format-1 kg.json (every field inline, triples as JSON lists: what exports held before)."""
    return KG(name=data["name"], entity_ids=data["entity_ids"], entity_names=data["entity_names"],
              entity_descs=data["entity_descs"], relation_ids=data["relation_ids"],
              relation_texts=data["relation_texts"], source=data.get("source", ""),
              **{s: torch.tensor(data[s], dtype=torch.long).reshape(-1, 3) for s in SPLITS})
