"""Reading the line-based text files KG datasets ship in, with errors that name the file and the line.

Real files are messy in small ways (no final newline, CRLF, a trailing blank line, a UTF-8 byte-order
mark); those are accepted. Anything that would silently corrupt the graph (a wrong column count, an
unknown id, bytes that are not UTF-8) is an error; what can be repaired without changing the meaning of
the data (a repeated triple, an entity without text) is repaired and reported as one `DataWarning` per
file, with its count.

Everything streams: lines are read and decoded one at a time (the file is never one str), and a split's
triples go into flat int64 arrays whose repeats are found at the end by one stable sort over 1-D keys
(h, r, t), not a dict of tuples: Wikidata5M's 20M training triples cost 24 bytes each while read.
"""

from __future__ import annotations

import warnings
from array import array
from collections.abc import Iterator, Mapping
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
            raise DataFormatError(f"{path}:{lineno}: id {key!r} appears twice (first at line {lines[key]})")
        table[key], lines[key] = text, lineno
    return table, lines


def read_text_table(path: Path) -> dict[str, str]:
    """id<TAB>text; a line with an id only means empty text. Later duplicates are an error."""
    return read_text_table_lines(path)[0]


class TripleCollector:
    """One split file's triples as they are read: a repeated triple is dropped (the first kept, order
    preserved) and counted; a triple with an unknown id is an error, or with `drop_unknown` dropped and
    counted. `finish` warns once per kind with the count and the first line, records the counts in
    `notes` under "<split>.duplicates" / "<split>.unknown_dropped", and refuses an empty split.

    Triples and their line numbers are appended to flat int64 arrays (24 + 8 bytes a triple); repeats
    are found in `finish`, by a stable sort of the triples' 1-D keys."""

    def __init__(self, path: Path, *, split: str | None = None, drop_unknown: bool = False,
                 notes: dict[str, int] | None = None, expected: str = TRIPLE_LINES):
        self.path, self.split, self.drop_unknown, self.notes, self.expected = path, split, drop_unknown, notes, expected
        self._triples = array("q")  # h, r, t, h, r, t, ...
        self._lines = array("q")  # the line of each triple
        self.duplicates = 0  # known after finish()
        self.first_duplicate: tuple[int, int] | None = None  # (line, line of the first occurrence)
        self.unknown = 0
        self.first_unknown: tuple[int, str] | None = None  # (line, what was unknown)

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

    def _drop_duplicates(self) -> np.ndarray:
        """The (N, 3) triples without repeats (first occurrences, in file order); sets the duplicate counts."""
        rows = np.frombuffer(self._triples, dtype=np.int64).reshape(-1, 3) if self._triples else \
            np.zeros((0, 3), dtype=np.int64)
        first = first_occurrences(rows)
        self.duplicates = len(rows) - int(first.sum())
        if self.duplicates:
            i = int(np.flatnonzero(~first)[0])
            j = int(np.flatnonzero((rows[:i] == rows[i]).all(axis=1))[0])
            self.first_duplicate = (self._lines[i], self._lines[j])
            rows = rows[first]
        return rows

    def finish(self, *, allow_empty: bool = False) -> Tensor:
        prefix = f"{self.split}." if self.split else ""
        rows = self._drop_duplicates()
        self._lines = array("q")
        if self.unknown:
            line, what = self.first_unknown
            warn(f"{self.path}:{line}: {self.unknown} {_triples(self.unknown)} skipped: unknown entity/relation ids "
                 f"(data.drop_unknown=true), first at line {line}: {what}")
        if self.duplicates:
            line, first = self.first_duplicate
            warn(f"{self.path}:{line}: {self.duplicates} duplicate {_triples(self.duplicates)} removed (the first "
                 f"occurrence is kept), first at line {line}: a repeat of line {first}")
        if self.notes is not None:
            for key, n in (("duplicates", self.duplicates), ("unknown_dropped", self.unknown)):
                if n:
                    self.notes[prefix + key] = n
        if not len(rows) and not allow_empty:
            if self.unknown:
                line, what = self.first_unknown
                raise DataFormatError(
                    f"{self.path}:{line}: no triples left: all {self.unknown} have unknown entity/relation ids "
                    f"(data.drop_unknown=true), the first at line {line}: {what}; expected {self.expected} "
                    "with known ids"
                )
            raise DataFormatError(f"{self.path}: no triples; expected {self.expected}")
        return torch.from_numpy(rows)  # shares the collected array's memory (no copy without duplicates)


def first_occurrences(rows: np.ndarray) -> np.ndarray:
    """Boolean mask over the (N, 3) non-negative int64 `rows`: True at the first occurrence of each row.
    A stable sort keeps equal rows in file order, so every equal row after the first in sorted order is a
    repeat. Rows become one int64 key (h * R + r) * E + t where that cannot overflow, else a lexsort."""
    first = np.ones(len(rows), dtype=bool)
    if len(rows) < 2:
        return first
    e = int(max(rows[:, 0].max(), rows[:, 2].max())) + 1
    r = int(rows[:, 1].max()) + 1
    if e * e * r < 2**63:
        keys = (rows[:, 0] * r + rows[:, 1]) * e + rows[:, 2]
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        repeat = keys[1:] == keys[:-1]
    else:
        order = np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))  # lexsort is stable
        ordered = rows[order]
        repeat = (ordered[1:] == ordered[:-1]).all(axis=1)
    first[order[1:][repeat]] = False
    return first


def _triples(n: int) -> str:
    return "triple" if n == 1 else "triples"


def index_triples(
    path: Path, entity_index: Mapping[str, int], relation_index: Mapping[str, int], *, split: str | None = None,
    drop_unknown: bool = False, notes: dict[str, int] | None = None, allow_empty: bool = True,
) -> Tensor:
    """Read head<TAB>relation<TAB>tail ids into an (N, 3) long tensor, duplicates removed (see
    `TripleCollector` for unknown ids, the warnings, `notes` and `allow_empty`)."""
    out = TripleCollector(path, split=split, drop_unknown=drop_unknown, notes=notes)
    for lineno, (h, r, t) in read_rows(path, 3):
        for kind, key, index in (("head", h, entity_index), ("relation", r, relation_index), ("tail", t, entity_index)):
            if key not in index:
                out.unknown_id(lineno, f"unknown {kind} id {key!r} (not in the entity/relation files)")
                break
        else:
            out.add(lineno, (entity_index[h], relation_index[r], entity_index[t]))
    return out.finish(allow_empty=allow_empty)


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
