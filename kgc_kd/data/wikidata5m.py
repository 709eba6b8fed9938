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
repeated triples in a split file (dropped, "<split>.duplicates"); valid/test triples that also occur in
train (warned; with `drop_overlap` dropped, "<split>.overlap_dropped"). Texts hold no tab or line break:
they are cut to words and joined by single spaces.

Everything streams line by line (`iter_lines`, `read_rows`). An alias file becomes an `IdTable` (id ->
row, one dict look-up per entity of a triple; row -> graph index by array indexing), descriptions are
kept for the graph's entities only, and triples go into `TripleCollector`'s int64 arrays.
"""

from __future__ import annotations

from array import array
from pathlib import Path

from kgc_kd.data.io import (DataFormatError, TripleCollector, TripleSet, iter_lines, read_rows, read_splits,
                            shown, warn)
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


class IdTable:
    """The rows of an id<TAB>field<TAB>field ... file: `ids`, `texts` (cut to their words), `row` (id -> row).
    Triples are mapped id -> row by one dict look-up and row -> graph index (`graph`, -1: not yet in the
    graph) by list indexing, so a triple costs one look-up in the big table per entity."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.texts: list[str] = []
        self.row: dict[str, int] = {}
        self.graph = array("q")
        self.order: list[int] = []  # the rows in the graph, in order of first appearance
        self.repeats, self.first_repeat = 0, 0

    def add(self, key: str, text: str) -> int:
        self.row[key] = len(self.ids)
        self.ids.append(key)
        self.texts.append(text)
        self.graph.append(-1)
        return len(self.ids) - 1

    def index(self, row: int) -> int:
        """The graph index of `row`, numbered on first use."""
        g = self.graph[row]
        if g < 0:
            g = self.graph[row] = len(self.order)
            self.order.append(row)
        return g


def read_id_table(path: Path, what: str, *, words: int) -> IdTable:
    """`path`'s ids with their first field (an alias) cut to `words` words; a repeated id: the later line."""
    table = IdTable()
    for lineno, key, fields in _id_lines(path, what):
        text = truncate_words(fields[1], words)
        row = table.row.get(key)
        if row is None:
            table.add(key, text)
        else:
            table.repeats += 1
            table.first_repeat = table.first_repeat or lineno
            table.texts[row] = text
    return table


def _id_lines(path: Path, what: str):
    """(line, id, fields) of every non-blank line, split as SimKGC splits it (the line stripped, then tabs)."""
    if not path.is_file():
        raise DataFormatError(f"{path.parent}: missing {path.name}")
    for lineno, line in iter_lines(path):
        fields = line.strip().split("\t")
        if len(fields) < 2 or not fields[0].strip():
            if len(fields) == 1 and not fields[0]:
                continue  # a blank line
            raise DataFormatError(f"{path}:{lineno}: expected id<TAB>{what}[<TAB>...], found "
                                  f"{len(fields)} field{'s' if len(fields) != 1 else ''}: {line[:80]!r}")
        yield lineno, fields[0].strip(), fields


def load_wikidata5m_dir(directory: str | Path, *, variant: str = "transductive", drop_unknown: bool = False,
                        drop_overlap: bool = False) -> KG:
    """`variant`: "transductive" (SimKGC's wiki5m_trans) or "inductive" (wiki5m_ind: the split files only
    differ; SimKGC ranks an inductive split among the entities of that split, and without re-ranking)."""
    if variant not in VARIANTS:
        raise ValueError(f"Wikidata5M variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    d = Path(directory)
    files = {s: split_path(d, s, variant) for s in SPLITS}
    notes: dict[str, int] = {}
    rels = _read_alias_table(d / RELATION_FILE, RELATION_WORDS, notes)
    ents = _read_alias_table(d / ENTITY_FILE, NAME_WORDS, notes)
    # graph ids of kept triples without text (no line, or an empty alias) -> (file, line) of their first triple
    textless: tuple[dict[str, tuple[Path, int]], dict[str, tuple[Path, int]]] = ({}, {})
    # train first: ids added for valid/test never reach train
    splits = read_splits(files, lambda split, path, train: _read_split(
        path, split, ents, rels, textless, drop_unknown=drop_unknown, notes=notes, train=train,
        drop_overlap=drop_overlap))
    entity_ids, entity_names = _graph_ids_and_texts(ents)
    relation_ids, relation_texts = _graph_ids_and_texts(rels)
    _report_textless(textless, len(entity_ids), len(relation_ids), notes)
    _check_relation_texts(relation_ids, relation_texts, d / RELATION_FILE)
    descs = _read_descriptions(d / TEXT_FILE, ents, entity_ids, notes)
    del ents
    return KG(name=d.name, entity_ids=entity_ids, entity_names=entity_names, entity_descs=descs,
              relation_ids=relation_ids, relation_texts=relation_texts, source=f"wikidata5m:{d}", notes=notes,
              **splits)


def _note_repeats(path: Path, n: int, line: int, notes: dict[str, int]) -> None:
    """Ids with a second line in `path` (the first at `line`): one warning, counted in `notes`."""
    if n:
        warn(f"{path}:{line}: {n} id{'s' if n != 1 else ''} with a second line; the later line is used "
             "(as SimKGC reads the file)")
        notes[f"{path.name}.repeated_ids"] = n


def _read_alias_table(path: Path, words: int, notes: dict[str, int]) -> IdTable:
    """An alias file (entities or relations) as an `IdTable`, its repeated ids reported."""
    table = read_id_table(path, "alias", words=words)
    _note_repeats(path, table.repeats, table.first_repeat, notes)
    return table


def _read_split(path: Path, split: str, ents: IdTable, rels: IdTable,
                textless: tuple[dict[str, tuple[Path, int]], dict[str, tuple[Path, int]]], *, drop_unknown: bool,
                notes: dict[str, int], train: TripleSet | None = None, drop_overlap: bool = False):
    """One split file's triples as graph indices (`TripleCollector.finish`), numbering entities and relations
    on first appearance. A triple with an id without an alias line: dropped from train (reported once), in
    valid/test dropped with `drop_unknown`, else kept with the id added to its table without text. Ids
    without text of the kept triples are remembered in `textless` (entities, relations). `train`, `drop_overlap`:
    as `TripleCollector` takes them."""
    out = TripleCollector(path, split=split, drop_unknown=drop_unknown, notes=notes, train=train,
                          drop_overlap=drop_overlap)
    dropped, first_dropped = 0, None
    for lineno, (h, r, t) in read_rows(path, 3):
        rows = ents.row.get(h), rels.row.get(r), ents.row.get(t)
        if None in rows:
            missing = _missing_line(h, r, t, rows)
            if split == "train":  # SimKGC's preprocess drops these from train only
                dropped += 1
                first_dropped = first_dropped or (lineno, missing)
                continue
            if drop_unknown:
                out.unknown_id(lineno, missing)
                continue
            rows = _add_without_text(h, r, t, rows, ents, rels)
        fh, fr, ft = rows
        if not (ents.texts[fh] and rels.texts[fr] and ents.texts[ft]):
            for key, text, seen in ((h, ents.texts[fh], textless[0]), (r, rels.texts[fr], textless[1]),
                                    (t, ents.texts[ft], textless[0])):
                if not text:
                    seen.setdefault(key, (path, lineno))
        out.add(lineno, (ents.index(fh), rels.index(fr), ents.index(ft)))
    if dropped:
        line, what = first_dropped
        warn(f"{path}:{line}: {dropped} train triple{'s' if dropped != 1 else ''} dropped: a head, relation or "
             f"tail without text (SimKGC's preprocess drops them), first at line {line}: {what}")
        notes["train.without_text_dropped"] = dropped
    return out.finish()


def _missing_line(h: str, r: str, t: str, rows: tuple[int | None, int | None, int | None]) -> str:
    """What the first id of a triple without an alias line is, for the messages."""
    kind, key, file = next(k for k, row in zip((("head", h, ENTITY_FILE), ("relation", r, RELATION_FILE),
                                                ("tail", t, ENTITY_FILE)), rows) if row is None)
    return f"{kind} {shown(key)} has no line in {file}"


def _add_without_text(h: str, r: str, t: str, rows: tuple[int | None, int | None, int | None], ents: IdTable,
                      rels: IdTable) -> tuple[int, int, int]:
    """A valid/test triple kept as SimKGC keeps it: each id without a line joins its table without text."""
    return tuple(table.add(key, "") if row is None and key not in table.row else table.row[key]
                 for key, row, table in ((h, rows[0], ents), (r, rows[1], rels), (t, rows[2], ents)))


def _graph_ids_and_texts(table: IdTable) -> tuple[list[str], list[str]]:
    """The ids of the graph's rows in graph order and their texts (an id stands in for a missing text)."""
    return ([table.ids[row] for row in table.order],
            [table.texts[row] or table.ids[row] for row in table.order])


def _report_textless(textless: tuple[dict[str, tuple[Path, int]], dict[str, tuple[Path, int]]], num_entities: int,
                     num_relations: int, notes: dict[str, int]) -> None:
    """One warning each for the graph's entities and relations without text, counted in `notes`."""
    for kind, seen, total, file, used in (("entities", textless[0], num_entities, ENTITY_FILE, "names"),
                                          ("relations", textless[1], num_relations, RELATION_FILE, "texts")):
        if seen:
            key, (path, line) = next(iter(seen.items()))
            warn(f"{path}:{line}: {len(seen)} of {total} {kind} have no text in {file} (no line, or an empty "
                 f"alias); their ids are used as {used}, e.g. {shown(key)}")
            notes[f"{kind}_without_text"] = len(seen)


def _read_descriptions(text_path: Path, ents: IdTable, entity_ids: list[str], notes: dict[str, int]) -> list[str]:
    """Descriptions of the graph's entities only (in graph order): all fields after the id, joined by spaces,
    cut to 30 words; repeated ids (the later line wins) and entities without a line reported."""
    descs = [""] * len(entity_ids)
    have = bytearray(len(entity_ids))
    repeats, first_repeat = 0, 0
    for lineno, key, fields in _id_lines(text_path, "description"):
        row = ents.row.get(key)
        g = ents.graph[row] if row is not None else -1
        if g < 0:
            continue
        if have[g]:
            repeats += 1
            first_repeat = first_repeat or lineno
        have[g] = 1
        descs[g] = truncate_words(" ".join(fields[1:]), DESCRIPTION_WORDS)
    _note_repeats(text_path, repeats, first_repeat, notes)
    without = len(entity_ids) - sum(have)
    if without:
        e = entity_ids[have.index(0)]
        warn(f"{text_path}: {without} of {len(entity_ids)} entities have no description line; their descriptions "
             f"are empty, e.g. {shown(e)}")
        notes["entities_without_description"] = without
    return descs


def _check_relation_texts(relation_ids: list[str], relation_texts: list[str], path: Path) -> None:
    """The model tells relations apart by their text only: two with one text is SimKGC's sanity error."""
    seen: dict[str, str] = {}
    for r, text in zip(relation_ids, relation_texts):
        other = seen.setdefault(text, r)
        if other != r:
            raise DataFormatError(f"{path}: relations {shown(other)} and {shown(r)} both read {shown(text)} (first alias, "
                                  f"{RELATION_WORDS} words); expected distinct relation texts")
