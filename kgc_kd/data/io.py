"""Reading the line-based text files KG datasets ship in, with errors that name the file and the line.

Real files are messy in small ways (no final newline, CRLF, a trailing blank line, a UTF-8 byte-order
mark); those are accepted. Anything that would silently corrupt the graph (a wrong column count, an
unknown id, bytes that are not UTF-8) is an error; what can be repaired without changing the meaning of
the data (a repeated triple, an entity without text, a tab or line break inside a text) is repaired and
reported as one `DataWarning` per file, with its count. Valid/test triples that also occur in train are
warned about (`TripleCollector`'s `train`), and dropped with `drop_overlap`.

Everything streams: lines are read and decoded one at a time (the file is never one str), and a split's
triples go into flat int64 arrays whose repeats are found at the end by one stable sort over 1-D keys
(h, r, t), not a dict of tuples: Wikidata5M's 20M training triples cost 24 bytes each while read. The
train split's overlap with valid/test is found likewise, by binary search in its sorted keys (`TripleSet`).
"""

from __future__ import annotations

import re
import warnings
from array import array
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

TRIPLE_LINES = "lines head<TAB>relation<TAB>tail"


class DataFormatError(ValueError):
    """A data file does not have the expected format; the message names the file and the line."""


class DataWarning(UserWarning):
    """A data file was repaired on loading (duplicates dropped, a missing text filled in, ...); counted."""


def warn(message: str) -> None:
    warnings.warn(message, DataWarning, stacklevel=3)


def shown(value: object, limit: int = 80) -> str:
    """`value`'s repr for a message, cut to `limit` characters of its text: an id or a text from a file can be
    megabytes long, a message stays readable."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(value)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def not_utf8_error(path: Path, line: int, column: int, offset: int, byte: int) -> DataFormatError:
    """The error for a byte that is not UTF-8: `column` in bytes (1-based), `offset` from the file start."""
    return DataFormatError(
        f"{path}:{line}: not UTF-8 text: byte 0x{byte:02x} at column {column} (byte offset {offset}); "
        "expected UTF-8 text; re-save the file as UTF-8"
    )


def read_utf8(path: Path) -> str:
    """The file's text; a leading byte-order mark is dropped. Non-UTF-8 bytes: an error naming line and column."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1  # in bytes, 1-based
        raise not_utf8_error(path, line, column, err.start, raw[err.start]) from None
    return text.removeprefix("\ufeff")


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line number, text without its line end) of every line, one line in memory at a time. Lines
    end at "\n" only (as `read_rows` splits; str.splitlines() would also break at U+2028 inside a text);
    a CR before it is dropped, so are a leading byte-order mark and the last line's missing newline.
    Non-UTF-8 bytes: the error of `read_utf8`, naming line, column and byte offset."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):  # binary lines end at b"\n" only
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:  # a bad sequence never spans lines: "\n" is no continuation byte
                raise not_utf8_error(path, lineno, err.start + 1, offset + err.start, raw[err.start]) from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            offset += len(raw)
            yield lineno, line.rstrip("\n").rstrip("\r")


def read_rows(path: Path, columns: int, *, at_least: bool = False) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) of a tab-separated file, skipping blank lines."""
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < columns or (len(fields) > columns and not at_least):
            raise DataFormatError(
                f"{path}:{lineno}: expected {columns} tab-separated fields, found {len(fields)}: {line[:80]!r}"
            )
        yield lineno, [f.strip() for f in fields]


def read_text_table_lines(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """`read_text_table` and the line number of each id."""
    table: dict[str, str] = {}
    lines: dict[str, int] = {}
    for lineno, fields in read_rows(path, 1, at_least=True):
        key, text = fields[0], "\t".join(fields[1:]).strip()
        if not key:
            raise DataFormatError(f"{path}:{lineno}: empty id; expected id<TAB>text: {text[:80]!r}")
        if key in table:
            raise DataFormatError(f"{path}:{lineno}: id {shown(key)} appears twice (first at line {lines[key]})")
        table[key], lines[key] = text, lineno
    return table, lines


def read_text_table(path: Path) -> dict[str, str]:
    """id<TAB>text; a line with an id only means empty text. Later duplicates are an error."""
    return read_text_table_lines(path)[0]


# a tab or what str.splitlines() breaks at: predict's --queries file (head<TAB>relation lines) cannot name a text
# holding one, and a tokenizer that splits at whitespace (BERT's) reads each as a space
_BREAKS = re.compile("[\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


class TextBreaks:
    """The texts of one file (names, descriptions, relation texts) that hold a tab or a line break: `clean`
    replaces each such character by a space and counts the text; `report` warns once with the count and the
    first line, and records the count in `notes` under "<file>.tabs_or_line_breaks"."""

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self.first: tuple[int, str] | None = None  # (line, the text as it was)

    def clean(self, text: str, line: int) -> str:
        if _BREAKS.search(text) is None:
            return text
        self.count += 1
        if self.first is None:
            self.first = (line, text)
        return _BREAKS.sub(" ", text)

    def report(self, notes: dict[str, int]) -> None:
        if self.count:
            line, text = self.first
            warn(f"{self.path}:{line}: {self.count} {'text holds' if self.count == 1 else 'texts hold'} a tab or a "
                 f"line break, each replaced by a space (predict's --queries file is tab-separated and could not "
                 f"name it), first at line {line}: {text[:80]!r}")
            notes[f"{self.path.name}.tabs_or_line_breaks"] = self.count


def clean_table(path: Path, table: dict[str, str], lines: dict[str, int], notes: dict[str, int]) -> dict[str, str]:
    """`read_text_table_lines`' texts with their tabs and line breaks replaced (`TextBreaks`, reported)."""
    breaks = TextBreaks(path)
    table = {key: breaks.clean(text, lines[key]) for key, text in table.items()}
    breaks.report(notes)
    return table


class TripleCollector:
    """One split file's triples as they are read: a repeated triple is dropped (the first kept, order
    preserved) and counted; a triple with an unknown id is an error, or with `drop_unknown` dropped and
    counted. With `train` (the train split's `TripleSet`; given for valid and test), triples that also occur
    in train are counted, and with `drop_overlap` dropped. `finish` warns once per kind with the count and
    the first line, records the counts in `notes` under "<split>.duplicates" / "<split>.unknown_dropped" /
    "<split>.overlap_dropped", and refuses an empty split.

    Triples and their line numbers are appended to flat int64 arrays (24 + 8 bytes a triple); repeats
    are found in `finish`, by a stable sort of the triples' 1-D keys."""

    def __init__(self, path: Path, *, split: str | None = None, drop_unknown: bool = False,
                 notes: dict[str, int] | None = None, expected: str = TRIPLE_LINES, train: TripleSet | None = None,
                 drop_overlap: bool = False):
        self.path, self.split, self.drop_unknown, self.notes, self.expected = path, split, drop_unknown, notes, expected
        self.train, self.drop_overlap = train, drop_overlap
        self._triples = array("q")  # h, r, t, h, r, t, ...
        self._lines = array("q")  # the line of each triple
        self.duplicates = 0  # known after finish()
        self.first_duplicate: tuple[int, int] | None = None  # (line, line of the first occurrence)
        self.unknown = 0
        self.first_unknown: tuple[int, str] | None = None  # (line, what was unknown)
        self.overlap = 0  # known after finish(): triples (repeats not counted) that also occur in train
        self.first_overlap = 0  # the line of the first

    def unknown_id(self, lineno: int, what: str) -> None:
        """A triple at `lineno` refers to an unknown id (`what` says which): raise, or count and skip it."""
        if not self.drop_unknown:
            raise DataFormatError(f"{self.path}:{lineno}: {what}; set data.drop_unknown=true to skip such triples")
        self.unknown += 1
        if self.first_unknown is None:
            self.first_unknown = (lineno, what)

    def add(self, lineno: int, triple: tuple[int, int, int]) -> None:
        self._triples.extend(triple)
        self._lines.append(lineno)

    def _drop_duplicates(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The (N, 3) triples without repeats (first occurrences, in file order) and the position of each in
        the file's triples (None: no repeats, so the identity); sets the duplicate counts."""
        rows = np.frombuffer(self._triples, dtype=np.int64).reshape(-1, 3) if self._triples else \
            np.zeros((0, 3), dtype=np.int64)
        first = first_occurrences(rows)
        self.duplicates = len(rows) - int(first.sum())
        if not self.duplicates:
            return rows, None
        i = int(np.flatnonzero(~first)[0])
        j = int(np.flatnonzero((rows[:i] == rows[i]).all(axis=1))[0])
        self.first_duplicate = (self._lines[i], self._lines[j])
        return rows[first], np.flatnonzero(first)

    def _drop_overlap(self, rows: np.ndarray, position: np.ndarray | None) -> np.ndarray:
        """`rows` less those that occur in `train` when `drop_overlap`; sets the overlap counts (`position`,
        from `_drop_duplicates`, finds the first one's line)."""
        if self.train is None or not len(rows):
            return rows
        inside = self.train.contains(rows)
        self.overlap = int(inside.sum())
        if not self.overlap:
            return rows
        i = int(np.flatnonzero(inside)[0])
        self.first_overlap = self._lines[i if position is None else int(position[i])]
        return rows[~inside] if self.drop_overlap else rows

    def finish(self, *, allow_empty: bool = False) -> Tensor:
        prefix = f"{self.split}." if self.split else ""
        rows, position = self._drop_duplicates()
        rows = self._drop_overlap(rows, position)
        self._lines = array("q")
        if self.unknown:
            line, what = self.first_unknown
            warn(f"{self.path}:{line}: {self.unknown} {_triples(self.unknown)} skipped: unknown entity/relation ids "
                 f"(data.drop_unknown=true), first at line {line}: {what}")
        if self.duplicates:
            line, first = self.first_duplicate
            warn(f"{self.path}:{line}: {self.duplicates} duplicate {_triples(self.duplicates)} removed (the first "
                 f"occurrence is kept), first at line {line}: a repeat of line {first}")
        if self.overlap:
            line = self.first_overlap
            done = ("dropped (data.drop_overlap=true)" if self.drop_overlap else "kept, so a model is evaluated on "
                    "triples it was trained on (data.drop_overlap=true drops them)")
            warn(f"{self.path}:{line}: {self.overlap} {self.split or 'split'} {_triples(self.overlap)} also "
                 f"{'occurs' if self.overlap == 1 else 'occur'} in the train split, first at line {line}; {done}")
        if self.notes is not None:
            for key, n in (("duplicates", self.duplicates), ("unknown_dropped", self.unknown),
                           ("overlap_dropped", self.overlap if self.drop_overlap else 0)):
                if n:
                    self.notes[prefix + key] = n
        if not len(rows) and not allow_empty:
            if self.overlap and self.drop_overlap:
                line = self.first_overlap
                raise DataFormatError(
                    f"{self.path}:{line}: no triples left: all {self.overlap} also occur in the train split "
                    f"(data.drop_overlap=true), the first at line {line}; expected {self.expected} not in train"
                )
            if self.unknown:
                line, what = self.first_unknown
                raise DataFormatError(
                    f"{self.path}:{line}: no triples left: all {self.unknown} have unknown entity/relation ids "
                    f"(data.drop_unknown=true), the first at line {line}: {what}; expected {self.expected} "
                    "with known ids"
                )
            raise DataFormatError(f"{self.path}: no triples; expected {self.expected}")
        return torch.from_numpy(rows)  # shares the collected array's memory (no copy without repeats or drops)


def _row_keys(rows: np.ndarray, e: int, r: int) -> np.ndarray:
    """One int64 key per (h, r, t) row with h, t < e and r < `r` (the caller checks that e * e * r < 2**63)."""
    return (rows[:, 0] * r + rows[:, 1]) * e + rows[:, 2]


def _bounds(rows: np.ndarray) -> tuple[int, int]:
    """(entity bound, relation bound) of non-empty (N, 3) rows: heads and tails < the first, relations < the second."""
    return int(max(rows[:, 0].max(), rows[:, 2].max())) + 1, int(rows[:, 1].max()) + 1


def first_occurrences(rows: np.ndarray) -> np.ndarray:
    """Boolean mask over the (N, 3) non-negative int64 `rows`: True at the first occurrence of each row.
    A stable sort keeps equal rows in file order, so every equal row after the first in sorted order is a
    repeat. Rows become one int64 key (h * R + r) * E + t where that cannot overflow, else a lexsort."""
    first = np.ones(len(rows), dtype=bool)
    if len(rows) < 2:
        return first
    e, r = _bounds(rows)
    if e * e * r < 2**63:
        keys = _row_keys(rows, e, r)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        repeat = keys[1:] == keys[:-1]
    else:
        order = np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))  # lexsort is stable
        ordered = rows[order]
        repeat = (ordered[1:] == ordered[:-1]).all(axis=1)
    first[order[1:][repeat]] = False
    return first


class TripleSet:
    """The (N, 3) non-negative triples of a split, for vectorised membership tests (`contains`): their 1-D
    keys (as `first_occurrences` makes them) sorted once, so a test is one binary search per asked row;
    where the keys could overflow, the rows, which a test sorts together with the asked rows."""

    def __init__(self, rows: np.ndarray | Tensor):
        rows = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        self.e, self.r = _bounds(rows) if len(rows) else (0, 0)
        self.keys: np.ndarray | None = None
        self.rows: np.ndarray | None = None
        if self.e * self.e * self.r < 2**63:
            self.keys = np.sort(_row_keys(rows, self.e, self.r))
        else:
            self.rows = rows

    def contains(self, rows: np.ndarray | Tensor) -> np.ndarray:
        """Boolean mask over the (M, 3) non-negative `rows`: True where the row is one of the set's."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        found = np.zeros(len(rows), dtype=bool)
        inside = (rows[:, 0] < self.e) & (rows[:, 2] < self.e) & (rows[:, 1] < self.r)  # the others are not members
        if not inside.any():
            return found
        asked = rows[inside]
        if self.keys is not None:
            keys = _row_keys(asked, self.e, self.r)
            at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
            found[inside] = self.keys[at] == keys
            return found
        # both sorted together, the set's rows first among equal rows: an asked row is a member when the first
        # row of its run of equal rows is the set's
        both = np.concatenate([self.rows, asked])
        tag = np.concatenate([np.zeros(len(self.rows), dtype=np.int8), np.ones(len(asked), dtype=np.int8)])
        order = np.lexsort((tag, both[:, 2], both[:, 1], both[:, 0]))
        ordered = both[order]
        starts = np.ones(len(both), dtype=bool)
        starts[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
        run_start = np.maximum.accumulate(np.where(starts, np.arange(len(both)), 0))
        member = np.empty(len(both), dtype=bool)
        member[order] = tag[order][run_start] == 0
        found[inside] = member[len(self.rows):]
        return found


def _triples(n: int) -> str:
    return "triple" if n == 1 else "triples"


def index_triples(
    path: Path, entity_index: Mapping[str, int], relation_index: Mapping[str, int], *, split: str | None = None,
    drop_unknown: bool = False, notes: dict[str, int] | None = None, allow_empty: bool = True,
    train: TripleSet | None = None, drop_overlap: bool = False,
) -> Tensor:
    """Read head<TAB>relation<TAB>tail ids into an (N, 3) long tensor, duplicates removed (see
    `TripleCollector` for unknown ids, triples also in `train`, the warnings, `notes` and `allow_empty`)."""
    out = TripleCollector(path, split=split, drop_unknown=drop_unknown, notes=notes, train=train,
                          drop_overlap=drop_overlap)
    for lineno, (h, r, t) in read_rows(path, 3):
        for kind, key, index in (("head", h, entity_index), ("relation", r, relation_index), ("tail", t, entity_index)):
            if key not in index:
                out.unknown_id(lineno, f"unknown {kind} id {shown(key)} (not in the entity/relation files)")
                break
        else:
            out.add(lineno, (entity_index[h], relation_index[r], entity_index[t]))
    return out.finish(allow_empty=allow_empty)


def read_splits(paths: Mapping[str, Path], read: Callable[[str, Path, TripleSet | None], Tensor]) -> dict[str, Tensor]:
    """{split: read(split, path, train)} for the splits of `paths`, train first: `train` is None for the train
    split and its `TripleSet` for the others, so a loader's `TripleCollector` checks valid and test against it."""
    out: dict[str, Tensor] = {}
    train = None
    for split in sorted(paths, key=lambda s: s != "train"):  # stable: the others keep their order
        out[split] = read(split, paths[split], train)
        if split == "train":
            train = TripleSet(out[split])
    return {split: out[split] for split in paths}


def find_file(directory: Path, stems: tuple[str, ...], exts: tuple[str, ...], *, required: bool = True) -> Path | None:
    """First existing directory/stem.ext; KG-BERT ships `.txt` text files and `.tsv` splits, others vary."""
    for stem in stems:
        for ext in exts:
            p = directory / f"{stem}{ext}"
            if p.is_file():
                return p
    if required:
        names = " or ".join(f"{s}{e}" for s in stems for e in exts)
        raise DataFormatError(f"{directory}: missing {names}")
    return None
