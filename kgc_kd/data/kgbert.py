"""A directory in the KG-BERT layout: how users bring WN18RR, FB15k-237 and UMLS.

Splits are `train.tsv dev.tsv test.tsv` (head<TAB>relation<TAB>tail ids); text tables are
`entity2text`, optional `entity2textlong` and `relation2text`, as `.txt` (what the KG-BERT release
actually ships) or `.tsv`. KG-BERT's WN18RR packs "lemma, definition" into entity2text; `name_separator`
splits it into SimKGC's name and description.
"""

from __future__ import annotations

from pathlib import Path

from kgc_kd.data.io import DataFormatError, find_file, index_triples, read_rows, read_text_table
from kgc_kd.data.kg import KG

TEXT_EXTS = (".txt", ".tsv")
SPLIT_EXTS = (".tsv", ".txt")
SPLIT_STEMS = {"train": ("train",), "valid": ("dev", "valid"), "test": ("test",)}


def is_kgbert_dir(directory: Path) -> bool:
    return find_file(directory, ("entity2text",), TEXT_EXTS, required=False) is not None


def load_kgbert_dir(directory: str | Path, *, use_long_text: bool = True, name_separator: str | None = None) -> KG:
    d = Path(directory)
    split_files = {s: find_file(d, stems, SPLIT_EXTS) for s, stems in SPLIT_STEMS.items()}
    ent_path = find_file(d, ("entity2text",), TEXT_EXTS)
    rel_path = find_file(d, ("relation2text",), TEXT_EXTS)
    long_path = find_file(d, ("entity2textlong",), TEXT_EXTS, required=False) if use_long_text else None

    ent_text = read_text_table(ent_path)
    rel_text = read_text_table(rel_path)
    long_text = read_text_table(long_path) if long_path else {}

    ent_list_path = find_file(d, ("entities",), (".txt",), required=False)
    if ent_list_path is not None:  # the release's entity order, so indices match other tools
        entity_ids = [fields[0] for _, fields in read_rows(ent_list_path, 1, at_least=True)]
        missing = [e for e in entity_ids if e not in ent_text]
        if missing:
            raise DataFormatError(f"{ent_list_path}: {len(missing)} ids have no line in {ent_path.name}, e.g. {missing[0]!r}")
    else:
        entity_ids = list(ent_text)
    relation_ids = list(rel_text)
    entities = {e: i for i, e in enumerate(entity_ids)}
    relations = {r: i for i, r in enumerate(relation_ids)}

    names, descs = [], []
    for e in entity_ids:
        name, desc = ent_text[e], ""
        if name_separator and name_separator in name:
            name, desc = (s.strip() for s in name.split(name_separator, 1))
        if e in long_text and long_text[e]:
            desc = long_text[e]
        names.append(name or e)
        descs.append(desc)

    return KG(
        name=d.name,
        entity_ids=entity_ids,
        entity_names=names,
        entity_descs=descs,
        relation_ids=relation_ids,
        relation_texts=[rel_text[r] or r.replace("_", " ").strip() for r in relation_ids],
        source=f"kgbert:{d}",
        **{s: index_triples(p, entities, relations) for s, p in split_files.items()},
    )
