"""Reading the line-based text files KG datasets ship in, with errors that name the file and the line.

Real files are messy in small ways (no final newline, CRLF, a trailing blank line, a UTF-8 byte-order
mark); those are accepted. Anything that would silently corrupt the graph (a wrong column count, an
unknown id, bytes that are not UTF-8) is an error; what can be repaired without changing the meaning of
the data (a repeated triple, an entity without text) is repaired and reported as one `DataWarning` per
file, with its count.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor

TRIPLE_LINES = "lines head<TAB>relation<TAB>tail"


class DataFormatError(ValueError):
    """A data file does not have the expected format; the message names the file and the line."""


class DataWarning(UserWarning):
    """A data file was repaired on loading (duplicates dropped, a missing text filled in, ...); counted."""


def warn(message: str) -> None:
    warnings.warn(message, DataWarning, stacklevel=3)


def read_utf8(path: Path) -> str:
    """The file's text; a leading byte-order mark is dropped. Non-UTF-8 bytes: an error naming line and column."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1  # in bytes, 1-based
        raise DataFormatError(
            f"{path}:{line}: not UTF-8 text: byte 0x{raw[err.start]:02x} at column {column} (byte offset "
            f"{err.start}); expected UTF-8 text; re-save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def read_rows(path: Path, columns: int, *, at_least: bool = False) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) of a tab-separated file, skipping blank lines."""
    text = read_utf8(path)
    # split on "\n" only: str.splitlines() also breaks at U+2028, form feeds etc. inside a text field
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
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
    `notes` under "<split>.duplicates" / "<split>.unknown_dropped", and refuses an empty split."""

    def __init__(self, path: Path, *, split: str | None = None, drop_unknown: bool = False,
                 notes: dict[str, int] | None = None, expected: str = TRIPLE_LINES):
        self.path, self.split, self.drop_unknown, self.notes, self.expected = path, split, drop_unknown, notes, expected
        self.rows: list[tuple[int, int, int]] = []
        self._first_line: dict[tuple[int, int, int], int] = {}
        self.duplicates = 0
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
        first = self._first_line.get(triple)
        if first is not None:
            self.duplicates += 1
            if self.first_duplicate is None:
                self.first_duplicate = (lineno, first)
            return
        self._first_line[triple] = lineno
        self.rows.append(triple)

    def finish(self, *, allow_empty: bool = False) -> Tensor:
        prefix = f"{self.split}." if self.split else ""
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
        if not self.rows and not allow_empty:
            if self.unknown:
                line, what = self.first_unknown
                raise DataFormatError(
                    f"{self.path}:{line}: no triples left: all {self.unknown} have unknown entity/relation ids "
                    f"(data.drop_unknown=true), the first at line {line}: {what}; expected {self.expected} "
                    "with known ids"
                )
            raise DataFormatError(f"{self.path}: no triples; expected {self.expected}")
        return torch.tensor(self.rows, dtype=torch.long).reshape(-1, 3)


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
