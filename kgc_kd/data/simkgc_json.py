"""A directory in SimKGC's preprocessed json layout (`{train,valid,test}.txt.json`, `entities.json`).

Users who already ran SimKGC's preprocess.py can point us at its output. Relation text in those files
is already normalised, so it doubles as the relation id. WordNet names arrive raw
("__family_alcidae_NN_1") and are parsed as SimKGC does at vectorisation time.

Each top-level item is decoded on its own, so every message names the line the item starts on. Repairs,
each reported by one `DataWarning` and counted in `KG.notes`: repeated triples in a split file are
dropped; an entity with an empty name is named by its id; with `drop_unknown`, triples whose head_id or
tail_id is not in entities.json are dropped instead of being an error. An empty split is an error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from kgc_kd.data.io import DataFormatError, TripleCollector, read_utf8, warn
from kgc_kd.data.kg import KG

# SimKGC's preprocess strips the leading "__" (family_alcidae_NN_1); raw WordNet ids keep it.
_WN_NAME = re.compile(r"^_*(.+?)_[A-Za-z]{2}_\d+$")
_WS = re.compile(r"[ \t\n\r]*")  # JSON's whitespace
_DECODER = json.JSONDecoder()
TRIPLE_KEYS = ("head_id", "relation", "tail_id")
ENTITY_KEYS = ("entity_id", "entity")


def wordnet_name(raw: str) -> str:
    m = _WN_NAME.match(raw)
    return m.group(1).replace("_", " ").strip() if m else raw


def is_simkgc_dir(directory: Path) -> bool:
    return (directory / "entities.json").is_file()


def _decode_items(text: str) -> list[tuple[int, object]] | None:
    """(line, item) for each item of a top-level JSON array, None if the text is not an array; raises
    json.JSONDecodeError (positions in `text`) where the JSON is invalid."""
    i = _WS.match(text).end()
    if not text.startswith("[", i):
        return None
    items: list[tuple[int, object]] = []
    line, counted = 1, 0  # newlines counted incrementally: one pass over the text, whatever its size
    i = _WS.match(text, i + 1).end()
    if text.startswith("]", i):
        i += 1
    else:
        while True:
            obj, end = _DECODER.raw_decode(text, i)
            line += text.count("\n", counted, i)
            counted = i
            items.append((line, obj))
            i = _WS.match(text, end).end()
            if text.startswith(",", i):
                i = _WS.match(text, i + 1).end()
            elif text.startswith("]", i):
                i += 1
                break
            else:
                raise json.JSONDecodeError("Expecting ',' delimiter or ']'", text, i)
    i = _WS.match(text, i).end()
    if i != len(text):
        raise json.JSONDecodeError("Extra data", text, i)
    return items


def _load_json_items(path: Path, expected: str) -> list[tuple[int, object]]:
    """(line, item) for each item of the JSON list in `path`."""
    if not path.is_file():
        raise DataFormatError(f"{path.parent}: missing {path.name}")
    text = read_utf8(path)
    try:
        items = _decode_items(text)
        if items is None:
            data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}:{err.lineno}: invalid JSON ({err.msg} at column {err.colno}); "
                              f"expected {expected}") from None
    if items is None:
        raise DataFormatError(f"{path}: expected {expected}, found {type(data).__name__}")
    return items


def _require(path: Path, line: int, i: int, obj: object, keys: tuple[str, ...]) -> dict:
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        raise DataFormatError(
            f"{path}:{line}: item {i}: expected an object with keys {', '.join(keys)}; found {str(obj)[:80]}"
        )
    return obj


def load_simkgc_dir(directory: str | Path, *, drop_unknown: bool = False) -> KG:
    d = Path(directory)
    ents_path = d / "entities.json"
    entities = _load_json_items(ents_path, f"a JSON list of objects with keys {', '.join(ENTITY_KEYS)}")
    if not entities:
        raise DataFormatError(f"{ents_path}: no entities; expected a JSON list of objects with keys "
                              f"{', '.join(ENTITY_KEYS)}")
    ids, names, descs = [], [], []
    index: dict[str, int] = {}
    lines: dict[str, int] = {}
    no_name: list[tuple[int, str]] = []  # (line, id)
    for i, (line, e) in enumerate(entities):
        e = _require(ents_path, line, i, e, ENTITY_KEYS)
        key = str(e["entity_id"]).strip()
        if not key:
            raise DataFormatError(f"{ents_path}:{line}: item {i}: empty entity_id; expected a non-empty id")
        if key in index:
            raise DataFormatError(f"{ents_path}:{line}: item {i}: entity_id {key!r} appears twice "
                                  f"(first at line {lines[key]})")
        index[key], lines[key] = len(ids), line
        name = wordnet_name(str(e["entity"] or "").strip())
        if not name:
            no_name.append((line, key))
        ids.append(key)
        names.append(name or key)
        descs.append(str(e.get("entity_desc") or ""))

    notes: dict[str, int] = {}
    if no_name:
        line, key = no_name[0]
        warn(f"{ents_path}:{line}: {len(no_name)} of {len(ids)} entities have an empty \"entity\" name; their ids "
             f"are used as names, e.g. {key!r}")
        notes["entities_without_text"] = len(no_name)

    relations: dict[str, int] = {}
    splits = {}
    expected = f"a JSON list of objects with keys {', '.join(TRIPLE_KEYS)}"
    for split in ("train", "valid", "test"):
        path = d / f"{split}.txt.json"
        out = TripleCollector(path, split=split, drop_unknown=drop_unknown, notes=notes, expected=expected)
        for i, (line, ex) in enumerate(_load_json_items(path, expected)):
            ex = _require(path, line, i, ex, TRIPLE_KEYS)
            unknown = [k for k in ("head_id", "tail_id") if str(ex[k]).strip() not in index]
            if unknown:
                k = unknown[0]
                out.unknown_id(line, f"item {i}: {k} {ex[k]!r} is not in entities.json")
                continue
            rel_text = str(ex["relation"] or "").strip()
            if not rel_text:
                raise DataFormatError(f"{path}:{line}: item {i}: empty relation; expected the relation's text")
            r = relations.setdefault(rel_text, len(relations))
            out.add(line, (index[str(ex["head_id"]).strip()], r, index[str(ex["tail_id"]).strip()]))
        splits[split] = out.finish()

    rel = list(relations)
    return KG(name=d.name, entity_ids=ids, entity_names=names, entity_descs=descs, relation_ids=rel,
              relation_texts=rel, source=f"simkgc:{d}", notes=notes, **splits)
