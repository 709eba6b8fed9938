"""Reading the line-based text files KG datasets ship in, with errors that name the file and the line.

Real files are messy in small ways (no final newline, CRLF, a trailing blank line); those are accepted.
Anything that would silently corrupt the graph (a wrong column count, an unknown id) is an error.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor


class DataFormatError(ValueError):
    """A data file does not have the expected format; the message names the file and the line."""


def read_rows(path: Path, columns: int, *, at_least: bool = False) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) of a tab-separated file, skipping blank lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path}: not UTF-8 text ({err})") from None
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


def read_text_table(path: Path) -> dict[str, str]:
    """id<TAB>text; a line with an id only means empty text. Later duplicates are an error."""
    table: dict[str, str] = {}
    for lineno, fields in read_rows(path, 1, at_least=True):
        key, text = fields[0], "\t".join(fields[1:]).strip()
        if key in table:
            raise DataFormatError(f"{path}:{lineno}: id {key!r} appears twice")
        table[key] = text
    return table


def index_triples(
    path: Path, entity_index: Mapping[str, int], relation_index: Mapping[str, int]
) -> Tensor:
    """Read head<TAB>relation<TAB>tail ids into an (N, 3) long tensor."""
    rows = []
    for lineno, (h, r, t) in read_rows(path, 3):
        for kind, key, index in (("head", h, entity_index), ("relation", r, relation_index), ("tail", t, entity_index)):
            if key not in index:
                raise DataFormatError(f"{path}:{lineno}: unknown {kind} id {key!r} (not in the entity/relation files)")
        rows.append((entity_index[h], relation_index[r], entity_index[t]))
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)


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
