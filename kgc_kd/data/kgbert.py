"""A directory in the KG-BERT layout: how users bring WN18RR, FB15k-237 and UMLS.

Splits are `train.tsv dev.tsv test.tsv` (head<TAB>relation<TAB>tail ids); text tables are
`entity2text`, optional `entity2textlong` and `relation2text`, as `.txt` (what the KG-BERT release
actually ships) or `.tsv`. KG-BERT's WN18RR packs "lemma, definition" into entity2text; `name_separator`
splits it into SimKGC's name and description.

Repairs, each reported by one `DataWarning` and counted in `KG.notes`: repeated triples in a split file
are dropped; an entity without text (listed in `entities.txt` but not in entity2text, or with an empty
text there) is named by its id, and so is a relation with an empty text in relation2text (its underscores
read as spaces); a tab or line break inside a text is replaced by a space (`io.TextBreaks`); with
`drop_unknown`, triples with ids outside the entity/relation files are dropped instead of being an error.
Dev and test triples that also occur in train are warned about, and dropped with `drop_overlap`. A split
file without triples is an error.
"""

from __future__ import annotations

from pathlib import Path

from kgc_kd.data.io import (
    clean_table,
    find_file,
    index_triples,
    read_splits,
    read_text_table_lines,
    shown,
    warn,
)
from kgc_kd.data.kg import KG

TEXT_EXTS = (".txt", ".tsv")
SPLIT_EXTS = (".tsv", ".txt")
SPLIT_STEMS = {"train": ("train",), "valid": ("dev", "valid"), "test": ("test",)}


def is_kgbert_dir(directory: Path) -> bool:
    return find_file(directory, ("entity2text",), TEXT_EXTS, required=False) is not None


def load_kgbert_dir(directory: str | Path, *, use_long_text: bool = True, name_separator: str | None = None,
                    drop_unknown: bool = False, drop_overlap: bool = False) -> KG:
    d = Path(directory)
    split_files = {s: find_file(d, stems, SPLIT_EXTS) for s, stems in SPLIT_STEMS.items()}
    ent_path = find_file(d, ("entity2text",), TEXT_EXTS)
    rel_path = find_file(d, ("relation2text",), TEXT_EXTS)
    long_path = find_file(d, ("entity2textlong",), TEXT_EXTS, required=False) if use_long_text else None

    notes: dict[str, int] = {}
    ent_text, ent_lines = read_text_table_lines(ent_path)
    ent_text = clean_table(ent_path, ent_text, ent_lines, notes)
    rel_text, rel_lines = read_text_table_lines(rel_path)
    rel_text = clean_table(rel_path, rel_text, rel_lines, notes)
    long_text = clean_table(long_path, *read_text_table_lines(long_path), notes) if long_path else {}

    ent_list_path = find_file(d, ("entities",), (".txt",), required=False)
    listed: dict[str, int] = {}  # entity id -> its line in entities.txt
    if ent_list_path is not None:  # the release's entity order, so indices match other tools
        listed = read_text_table_lines(ent_list_path)[1]  # same rules: no empty or repeated id
        entity_ids = list(listed)
    else:
        entity_ids = list(ent_text)
    relation_ids = list(rel_text)
    entities = {e: i for i, e in enumerate(entity_ids)}
    relations = {r: i for i, r in enumerate(relation_ids)}

    names, descs, without_text = [], [], []
    for e in entity_ids:
        name, desc = ent_text.get(e, ""), ""
        if name_separator and name_separator in name:
            name, desc = (s.strip() for s in name.split(name_separator, 1))
        if not name:
            without_text.append(e)
        if e in long_text and long_text[e]:
            desc = long_text[e]
        names.append(name or e)
        descs.append(desc)

    if without_text:
        e = without_text[0]
        if e in ent_text:
            how = "an empty text" if not ent_text[e] else f"an empty name before {name_separator!r}"
            path, line = ent_path, ent_lines[e]
        else:
            path, line, how = ent_list_path, listed[e], f"listed in {ent_list_path.name}, no line in {ent_path.name}"
        warn(f"{path}:{line}: {len(without_text)} of {len(entity_ids)} entities have no text (no line or an empty "
             f"one in {ent_path.name}); their ids are used as names, e.g. {shown(e)} ({how})")
        notes["entities_without_text"] = len(without_text)

    no_text = [r for r in relation_ids if not rel_text[r]]
    if no_text:
        r = no_text[0]
        warn(f"{rel_path}:{rel_lines[r]}: {len(no_text)} of {len(relation_ids)} relations have an empty text; their "
             f"ids are used as texts (underscores read as spaces), e.g. {shown(r)}")
        notes["relations_without_text"] = len(no_text)

    splits = read_splits(split_files, lambda s, p, train: index_triples(
        p, entities, relations, split=s, drop_unknown=drop_unknown, notes=notes, allow_empty=False, train=train,
        drop_overlap=drop_overlap))
    return KG(
        name=d.name,
        entity_ids=entity_ids,
        entity_names=names,
        entity_descs=descs,
        relation_ids=relation_ids,
        relation_texts=[rel_text[r] or r.replace("_", " ").strip() or r for r in relation_ids],
        source=f"kgbert:{d}",
        notes=notes,
        **splits,
    )
