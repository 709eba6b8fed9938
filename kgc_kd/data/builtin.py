"""The small KGs shipped inside the package (UMLS, Nations, Kinships), so the default run needs no network.

The files are PyKEEN's (see builtin/README.md for attribution); they carry identifiers only, whose
text is the identifier with underscores turned into spaces.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from kgc_kd.data.io import index_triples, read_rows
from kgc_kd.data.kg import KG

BUILTIN = ("umls", "nations", "kinships")


def builtin_dir(name: str) -> Path:
    if name not in BUILTIN:
        raise KeyError(f"unknown built-in KG {name!r}; built-in: {', '.join(BUILTIN)}")
    return Path(str(resources.files("kgc_kd.data") / "builtin" / name))


def load_builtin(name: str) -> KG:
    d = builtin_dir(name)
    files = {split: d / f"{split}.txt" for split in ("train", "valid", "test")}
    entities: dict[str, int] = {}
    relations: dict[str, int] = {}
    for path in files.values():  # ids in order of first appearance: deterministic across machines
        for _, (h, r, t) in read_rows(path, 3):
            entities.setdefault(h, len(entities))
            entities.setdefault(t, len(entities))
            relations.setdefault(r, len(relations))
    ent = list(entities)
    rel = list(relations)
    return KG(
        name=name,
        entity_ids=ent,
        entity_names=[e.replace("_", " ") for e in ent],
        entity_descs=[""] * len(ent),
        relation_ids=rel,
        relation_texts=[r.replace("_", " ").strip() for r in rel],
        source=f"builtin:{name}",
        **{split: index_triples(p, entities, relations) for split, p in files.items()},
    )
