"""A directory in SimKGC's preprocessed json layout (`{train,valid,test}.txt.json`, `entities.json`).

Users who already ran SimKGC's preprocess.py can point us at its output. Relation text in those files
is already normalised, so it doubles as the relation id. WordNet names arrive raw
("__family_alcidae_NN_1") and are parsed as SimKGC does at vectorisation time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from kgc_kd.data.io import DataFormatError
from kgc_kd.data.kg import KG

# SimKGC's preprocess strips the leading "__" (family_alcidae_NN_1); raw WordNet ids keep it.
_WN_NAME = re.compile(r"^_*(.+?)_[A-Za-z]{2}_\d+$")


def wordnet_name(raw: str) -> str:
    m = _WN_NAME.match(raw)
    return m.group(1).replace("_", " ").strip() if m else raw


def is_simkgc_dir(directory: Path) -> bool:
    return (directory / "entities.json").is_file()


def _load_json_list(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataFormatError(f"{path.parent}: missing {path.name}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON list of objects, found {type(data).__name__}")
    return data


def _require(path: Path, i: int, obj: object, keys: tuple[str, ...]) -> dict:
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        raise DataFormatError(f"{path}: item {i} must be an object with keys {', '.join(keys)}; found {str(obj)[:80]}")
    return obj


def load_simkgc_dir(directory: str | Path) -> KG:
    d = Path(directory)
    ents_path = d / "entities.json"
    entities = _load_json_list(ents_path)
    ids, names, descs = [], [], []
    for i, e in enumerate(entities):
        e = _require(ents_path, i, e, ("entity_id", "entity"))
        ids.append(str(e["entity_id"]))
        names.append(wordnet_name(str(e["entity"])))
        descs.append(str(e.get("entity_desc") or ""))
    index = {e: i for i, e in enumerate(ids)}

    relations: dict[str, int] = {}
    splits = {}
    for split in ("train", "valid", "test"):
        path = d / f"{split}.txt.json"
        rows = []
        for i, ex in enumerate(_load_json_list(path)):
            ex = _require(path, i, ex, ("head_id", "relation", "tail_id"))
            for key in ("head_id", "tail_id"):
                if str(ex[key]) not in index:
                    raise DataFormatError(f"{path}: item {i}: {key} {ex[key]!r} is not in entities.json")
            r = relations.setdefault(str(ex["relation"]).strip(), len(relations))
            rows.append((index[str(ex["head_id"])], r, index[str(ex["tail_id"])]))
        splits[split] = torch.tensor(rows, dtype=torch.long).reshape(-1, 3)

    rel = list(relations)
    return KG(
        name=d.name,
        entity_ids=ids,
        entity_names=names,
        entity_descs=descs,
        relation_ids=rel,
        relation_texts=rel,
        source=f"simkgc:{d}",
        **splits,
    )
