"""A directory in the raw Wikidata5M layout SimKGC reads (what its scripts/download_wikidata5m.sh unpacks).

Files: `wikidata5m_{transductive,inductive}_{train,valid,test}.txt` (head<TAB>relation<TAB>tail, Q/P ids;
SimKGC's per-task directories link them as `train.txt valid.txt test.txt`, which are read when the
variant's own files are absent), `wikidata5m_entity.txt` and `wikidata5m_relation.txt` (id<TAB>alias1
<TAB>alias2 ...), `wikidata5m_text.txt` (id<TAB>description).

The text is SimKGC's preprocess.py for Wikidata5M, so a run sees the strings SimKGC trained on:
- an entity's name is its first alias cut to its first 10 whitespace-separated words; a relation's text
  likewise (10 words); a description is the rest of its line cut to 30 words (`truncate_words`);
- a train triple whose head, tail or relation has no alias line is dropped (SimKGC: "P2439 P1962 P3484
  do not exist in wikidata5m_relation.txt", leaving 819 of 822 relations); valid and test triples are
  kept as they are, their textless entities / relations named by their ids;
- the entities are those of the kept triples, numbered in order of first appearance over train, valid
  and test (head before tail), as SimKGC's entities.json lists them; relations likewise (their Q/P ids
  are kept as relation ids; the text is the model's input);
- two relations of the graph with one text are an error, as SimKGC's sanity check makes them.

Repairs, each reported by one `DataWarning` and counted in `KG.notes`: the dropped train triples
("train.without_text_dropped"); valid/test triples with a textless entity or relation ("entities_without_text",
"relations_without_text"; with `drop_unknown` those triples are dropped instead, "<split>.unknown_dropped");
entities of the graph without a description line ("entities_without_description"; SimKGC would stop);
an id with a second alias or text line (the later line wins, as in SimKGC's dict; "<file>.repeated_ids");
repeated triples in a split file (dropped, "<split>.duplicates").

Everything streams line by line (`iter_lines`, `read_rows`): the alias tables are dicts of short strings,
descriptions are kept only for the graph's entities, triples go into `TripleCollector`'s int64 arrays.
"""

from __future__ import annotations

from pathlib import Path

from kgc_kd.data.io import DataFormatError, TripleCollector, iter_lines, read_rows, warn
from kgc_kd.data.kg import KG, SPLITS

ENTITY_FILE = "wikidata5m_entity.txt"
RELATION_FILE = "wikidata5m_relation.txt"
TEXT_FILE = "wikidata5m_text.txt"
VARIANTS = ("transductive", "inductive")
# SimKGC preprocess.py: _load_wiki5m_id2ent / _load_wiki5m_id2rel cut to 10 words, _load_wiki5m_id2text to 30
NAME_WORDS = 10
RELATION_WORDS = 10
DESCRIPTION_WORDS = 30


def is_wikidata5m_dir(directory: Path) -> bool:
    return (directory / ENTITY_FILE).is_file()


def truncate_words(text: str, words: int) -> str:
    """The first `words` whitespace-separated words, joined by single spaces (SimKGC's `_truncate`)."""
    return " ".join(text.split()[:words])


def split_path(directory: Path, split: str, variant: str) -> Path:
    """wikidata5m_<variant>_<split>.txt, else <split>.txt (SimKGC's wiki5m_trans / wiki5m_ind links)."""
    for name in (f"wikidata5m_{variant}_{split}.txt", f"{split}.txt"):
        if (directory / name).is_file():
            return directory / name
    raise DataFormatError(f"{directory}: missing wikidata5m_{variant}_{split}.txt (or {split}.txt)")


def read_id_table(path: Path, what: str, *, first_only: bool, words: int,
                  keep: dict[str, int] | None = None) -> tuple[dict[str, str], int, int]:
    """id -> text of `path` (id<TAB>field<TAB>field ...): the first field (`first_only`, an alias) or all
    fields joined by spaces (a description), cut to `words` words. With `keep`, only those ids are stored.
    Returns the table, the number of repeated ids and the line of the first repeat (the later line wins)."""
    if not path.is_file():
        raise DataFormatError(f"{path.parent}: missing {path.name}")
    table: dict[str, str] = {}
    repeats, first_repeat = 0, 0
    for lineno, line in iter_lines(path):
        fields = line.strip().split("\t")
        if len(fields) < 2 or not fields[0].strip():
            if len(fields) == 1 and not fields[0]:
                continue  # a blank line
            raise DataFormatError(f"{path}:{lineno}: expected id<TAB>{what}[<TAB>...], found "
                                  f"{len(fields)} field{'s' if len(fields) != 1 else ''}: {line[:80]!r}")
        key = fields[0].strip()
        if keep is not None and key not in keep:
            continue
        if key in table:
            repeats += 1
            first_repeat = first_repeat or lineno
        table[key] = truncate_words(fields[1] if first_only else " ".join(fields[1:]), words)
    return table, repeats, first_repeat


def load_wikidata5m_dir(directory: str | Path, *, variant: str = "transductive", drop_unknown: bool = False) -> KG:
    """`variant`: "transductive" (SimKGC's wiki5m_trans) or "inductive" (wiki5m_ind: the split files only
    differ; SimKGC ranks an inductive split among the entities of that split, and without re-ranking)."""
    if variant not in VARIANTS:
        raise ValueError(f"Wikidata5M variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    d = Path(directory)
    files = {s: split_path(d, s, variant) for s in SPLITS}
    notes: dict[str, int] = {}

    def repeated(path: Path, n: int, line: int) -> None:
        if n:
            warn(f"{path}:{line}: {n} id{'s' if n != 1 else ''} with a second line; the later line is used "
                 "(as SimKGC reads the file)")
            notes[f"{path.name}.repeated_ids"] = n

    rel_text, n, line = read_id_table(d / RELATION_FILE, "alias", first_only=True, words=RELATION_WORDS)
    repeated(d / RELATION_FILE, n, line)
    names, n, line = read_id_table(d / ENTITY_FILE, "alias", first_only=True, words=NAME_WORDS)
    repeated(d / ENTITY_FILE, n, line)

    entities: dict[str, int] = {}
    relations: dict[str, int] = {}
    # ids of kept triples without text (no line, or an empty alias) -> (file, line) of their first triple
    textless: tuple[dict[str, tuple[Path, int]], dict[str, tuple[Path, int]]] = ({}, {})
    splits = {}
    for split, path in files.items():
        out = TripleCollector(path, split=split, drop_unknown=drop_unknown, notes=notes)
        dropped, first_dropped = 0, None
        for lineno, (h, r, t) in read_rows(path, 3):
            texts = names.get(h), rel_text.get(r), names.get(t)
            if None in texts:
                kind, key, file = next(k for k, text in zip((("head", h, ENTITY_FILE), ("relation", r, RELATION_FILE),
                                                             ("tail", t, ENTITY_FILE)), texts) if text is None)
                missing = f"{kind} {key!r} has no line in {file}"
                if split == "train":  # SimKGC's preprocess drops these from train only
                    dropped += 1
                    first_dropped = first_dropped or (lineno, missing)
                    continue
                if drop_unknown:
                    out.unknown_id(lineno, missing)
                    continue
            if not all(texts):
                for key, text, seen in zip((h, r, t), texts, (textless[0], textless[1], textless[0])):
                    if not text:
                        seen.setdefault(key, (path, lineno))
            out.add(lineno, (entities.setdefault(h, len(entities)), relations.setdefault(r, len(relations)),
                             entities.setdefault(t, len(entities))))
        if dropped:
            line, what = first_dropped
            warn(f"{path}:{line}: {dropped} train triple{'s' if dropped != 1 else ''} dropped: a head, relation or "
                 f"tail without text (SimKGC's preprocess drops them), first at line {line}: {what}")
            notes["train.without_text_dropped"] = dropped
        splits[split] = out.finish()

    entity_ids, relation_ids = list(entities), list(relations)
    entity_names = [names.get(e) or e for e in entity_ids]
    del names
    relation_texts = [rel_text.get(r) or r for r in relation_ids]
    for kind, seen, total, file, used in (("entities", textless[0], len(entity_ids), ENTITY_FILE, "names"),
                                          ("relations", textless[1], len(relation_ids), RELATION_FILE, "texts")):
        if seen:
            key, (path, line) = next(iter(seen.items()))
            warn(f"{path}:{line}: {len(seen)} of {total} {kind} have no text in {file} (no line, or an empty "
                 f"alias); their ids are used as {used}, e.g. {key!r}")
            notes[f"{kind}_without_text"] = len(seen)
    _check_relation_texts(relation_ids, relation_texts, d / RELATION_FILE)

    text_path = d / TEXT_FILE
    descs, n, line = read_id_table(text_path, "description", first_only=False, words=DESCRIPTION_WORDS,
                                   keep=entities)
    repeated(text_path, n, line)
    entity_descs = [descs.get(e, "") for e in entity_ids]
    without = sum(1 for e in entity_ids if e not in descs)
    if without:
        e = next(e for e in entity_ids if e not in descs)
        warn(f"{text_path}: {without} of {len(entity_ids)} entities have no description line; their descriptions "
             f"are empty, e.g. {e!r}")
        notes["entities_without_description"] = without
    return KG(name=d.name, entity_ids=entity_ids, entity_names=entity_names, entity_descs=entity_descs,
              relation_ids=relation_ids, relation_texts=relation_texts, source=f"wikidata5m:{d}", notes=notes,
              **splits)


def _check_relation_texts(relation_ids: list[str], relation_texts: list[str], path: Path) -> None:
    """The model tells relations apart by their text only: two with one text is SimKGC's sanity error."""
    seen: dict[str, str] = {}
    for r, text in zip(relation_ids, relation_texts):
        other = seen.setdefault(text, r)
        if other != r:
            raise DataFormatError(f"{path}: relations {other!r} and {r!r} both read {text!r} (first alias, "
                                  f"{RELATION_WORDS} words); expected distinct relation texts")
