"""A directory in SimKGC's preprocessed json layout (`{train,valid,test}.txt.json`, `entities.json`).

Users who already ran SimKGC's preprocess.py can point us at its output. Relation text in those files
is already normalised, so it doubles as the relation id. WordNet names arrive raw
("__family_alcidae_NN_1") and are parsed as SimKGC does at vectorisation time.

The files stream: `iter_json_items` reads a file in blocks (`BLOCK_BYTES`), decodes the top-level
array's items one by one with `JSONDecoder.raw_decode` (an item cut by a block boundary is decoded again
once the next block is in) and hands each on before the next is read, so neither the file's text nor
its 20M records (Wikidata5M) are ever held at once; triples go straight into `TripleCollector`'s
arrays. Every message names the line the item starts on, counted across blocks.

Repairs, each reported by one `DataWarning` and counted in `KG.notes`: repeated triples in a split file are
dropped; an entity with an empty name is named by its id; a tab or line break inside a name, description
or relation is replaced by a space (`io.TextBreaks`); with `drop_unknown`, triples whose head_id or tail_id
is not in entities.json are dropped instead of being an error. Valid and test triples that also occur in
train are warned about, and dropped with `drop_overlap`. An empty split or relation is an error.
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from kgc_kd.data.io import (DataFormatError, TextBreaks, TripleCollector, TripleSet, not_utf8_error, read_splits,
                            shown, warn)
from kgc_kd.data.kg import KG, SPLITS

if TYPE_CHECKING:
    from torch import Tensor

# SimKGC's preprocess strips the leading "__" (family_alcidae_NN_1); raw WordNet ids keep it.
_WN_NAME = re.compile(r"^_*(.+?)_[A-Za-z]{2}_\d+$")
_WS = re.compile(r"[ \t\n\r]*")  # JSON's whitespace
_LONGEST_TOKEN = 64  # characters of a number, literal or escape that a block boundary may cut
_NUMBER_CHARS = frozenset("0123456789.eE+-")  # what may follow a number's prefix within the number
_COMMA = re.compile(r"[ \t\n\r]*,[ \t\n\r]*")
_DECODER = json.JSONDecoder()
BLOCK_BYTES = 1 << 22  # 4 MiB read at a time: the largest item must fit in a few blocks, the rest streams
TRIPLE_KEYS = ("head_id", "relation", "tail_id")
ENTITY_KEYS = ("entity_id", "entity")


def wordnet_name(raw: str) -> str:
    m = _WN_NAME.match(raw)
    return m.group(1).replace("_", " ").strip() if m else raw


def is_simkgc_dir(directory: Path) -> bool:
    return (directory / "entities.json").is_file()


class _Utf8Blocks:
    """A file's text, block by block: each block is cut before a UTF-8 sequence that the next completes,
    and decoding errors are reported as `read_utf8` reports them (line, column in bytes, byte offset)."""

    def __init__(self, path: Path, block_bytes: int):
        self.path, self.block_bytes = path, block_bytes
        self.offset = 0  # bytes decoded so far
        self.lines = 0  # newlines among them
        self.line_start = 0  # byte offset just after the last of them

    def __iter__(self) -> Iterator[str]:
        carry = b""
        with open(self.path, "rb") as f:
            while True:
                raw = f.read(self.block_bytes)
                data = carry + raw
                if not data:
                    return
                cut = len(data) if not raw else _complete_utf8(data)
                block, carry = data[:cut], data[cut:]
                try:
                    text = block.decode("utf-8")
                except UnicodeDecodeError as err:
                    line = self.lines + block.count(b"\n", 0, err.start) + 1
                    nl = block.rfind(b"\n", 0, err.start)
                    start = self.offset + nl + 1 if nl >= 0 else self.line_start
                    at = self.offset + err.start
                    raise not_utf8_error(self.path, line, at - start + 1, at, block[err.start]) from None
                if self.offset == 0:
                    text = text.removeprefix("\ufeff")
                nl = block.rfind(b"\n")
                if nl >= 0:
                    self.lines += block.count(b"\n")
                    self.line_start = self.offset + nl + 1
                self.offset += len(block)
                yield text


def _complete_utf8(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b < 0x80:
            return len(data)
        if b >= 0xC0:  # the lead byte of the last sequence: complete if all its bytes are here
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)  # continuation bytes only: invalid, left for the decoder to report


class JsonError(Exception):
    """Invalid JSON at a position of the whole file: line, column (1-based), what was expected."""

    def __init__(self, msg: str, line: int, column: int):
        super().__init__(msg)
        self.msg, self.line, self.column = msg, line, column


class _TextStream:
    """A window over the file's text: `buf[i:]` is what is read but not consumed; `more()` appends a block.
    Line and column of a position are counted across the blocks already dropped from the window."""

    def __init__(self, blocks: Iterator[str]):
        self.blocks = blocks
        self.buf, self.i = "", 0
        self.eof = False
        self.line, self.counted = 1, 0  # line number at buf[counted]
        self.column0 = 0  # characters on buf[0]'s line before buf[0]

    def more(self) -> bool:
        """Append the next block (dropping the consumed text first); False at the end of the file."""
        if self.eof:
            return False
        block = next(self.blocks, None)
        if block is None:
            self.eof = True
            return False
        if self.i > len(self.buf) // 2:
            self.line_at(self.i)
            nl = self.buf.rfind("\n", 0, self.i)
            self.column0 = self.i - nl - 1 if nl >= 0 else self.column0 + self.i
            self.buf, self.counted, self.i = self.buf[self.i:], 0, 0
        self.buf += block
        return True

    def line_at(self, pos: int) -> int:
        """The line of buf[pos], for pos >= the last position asked (newlines are counted once)."""
        self.line += self.buf.count("\n", self.counted, pos)
        self.counted = pos
        return self.line

    def error(self, msg: str, pos: int) -> JsonError:
        line = self.line + self.buf.count("\n", self.counted, pos)
        nl = self.buf.rfind("\n", 0, pos)
        return JsonError(msg, line, pos - nl if nl >= 0 else self.column0 + pos + 1)

    def skip_ws(self) -> str:
        """Skip JSON whitespace (reading on as needed); the next character, "" at the end of the file."""
        while True:
            self.i = _WS.match(self.buf, self.i).end()
            if self.i < len(self.buf):
                return self.buf[self.i]
            if not self.more():
                return ""

    def value(self) -> object:
        """Decode the value at `i` and move past it. An item cut by the window's end fails to decode, or,
        if it is a number ("12" of "12.5"), decodes short: either is decoded again with the next block.
        A cut item fails at its last, partial token: in a string running to the end ("Unterminated
        string") or within a token's length of the end; an error elsewhere is the file's own, raised
        without reading on."""
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.i)
            except json.JSONDecodeError as err:
                cut = err.msg.startswith("Unterminated string") or err.pos >= len(self.buf) - _LONGEST_TOKEN
                if cut and self.more():
                    continue
                raise self.error(err.msg, err.pos) from None
            except RecursionError:  # arrays or objects nested past Python's recursion limit
                raise self.error("Values nested too deeply", self.i) from None
            except ValueError as err:  # an integer longer than sys.get_int_max_str_digits() digits
                raise self.error(f"Unreadable value ({str(err).split(';')[0]})", self.i) from None
            if type(obj) in (int, float, bool) and (end == len(self.buf) or self.buf[end] in _NUMBER_CHARS) \
                    and self.more():
                continue  # an object, array, string or literal ends where it says; a number may go on
            self.i = end
            return obj


def iter_json_items(path: Path, *, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, object]]:
    """(line, item) for each item of the top-level JSON array in `path`, read block by block. Raises
    `JsonError` where the JSON is invalid and `NotAList` (holding the value) where it is not an array."""
    text = _TextStream(iter(_Utf8Blocks(path, block_bytes)))
    if text.skip_ws() != "[":  # an error path: the one value is decoded whole, as json.loads would
        value = text.value()
        if text.skip_ws():
            raise text.error("Extra data", text.i)
        raise NotAList(value)
    text.i += 1
    if text.skip_ws() == "]":
        text.i += 1
    else:
        while True:
            if text.i >= len(text.buf) and not text.more():
                raise text.error("Expecting value", text.i)
            line = text.line_at(text.i)
            yield line, text.value()
            sep = _COMMA.match(text.buf, text.i)  # the usual case, in one step: a comma, then the next item
            if sep is not None and sep.end() < len(text.buf):
                text.i = sep.end()
                continue
            c = text.skip_ws()
            if c == ",":
                text.i += 1
                text.skip_ws()
            elif c == "]":
                text.i += 1
                break
            else:
                raise text.error("Expecting ',' delimiter or ']'", text.i)
    if text.skip_ws():
        raise text.error("Extra data", text.i)


class NotAList(Exception):
    def __init__(self, value: object):
        super().__init__(type(value).__name__)
        self.value = value


def _load_json_items(path: Path, expected: str, *, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, object]]:
    """(line, item) for each item of the JSON list in `path`, streamed; errors as `DataFormatError`."""
    if not path.is_file():
        raise DataFormatError(f"{path.parent}: missing {path.name}")
    try:
        yield from iter_json_items(path, block_bytes=block_bytes)
    except JsonError as err:
        raise DataFormatError(f"{path}:{err.line}: invalid JSON ({err.msg} at column {err.column}); "
                              f"expected {expected}") from None
    except NotAList as err:
        raise DataFormatError(f"{path}: expected {expected}, found {type(err.value).__name__}") from None


def _require(path: Path, line: int, i: int, obj: object, keys: tuple[str, ...]) -> dict:
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        raise DataFormatError(
            f"{path}:{line}: item {i}: expected an object with keys {', '.join(keys)}; found {str(obj)[:80]}"
        )
    return obj


def load_simkgc_dir(directory: str | Path, *, drop_unknown: bool = False, drop_overlap: bool = False,
                    block_bytes: int = BLOCK_BYTES) -> KG:
    d = Path(directory)
    ents_path = d / "entities.json"
    expected = f"a JSON list of objects with keys {', '.join(ENTITY_KEYS)}"
    ids, names, descs = [], [], []
    index: dict[str, int] = {}
    lines = array("q")  # the line of each entity, for the message about a repeated id
    no_name: list[tuple[int, str]] = []  # (line, id)
    breaks = TextBreaks(ents_path)
    for i, (line, e) in enumerate(_load_json_items(ents_path, expected, block_bytes=block_bytes)):
        e = _require(ents_path, line, i, e, ENTITY_KEYS)
        key = str(e["entity_id"]).strip()
        if not key:
            raise DataFormatError(f"{ents_path}:{line}: item {i}: empty entity_id; expected a non-empty id")
        if key in index:
            raise DataFormatError(f"{ents_path}:{line}: item {i}: entity_id {shown(key)} appears twice "
                                  f"(first at line {lines[index[key]]})")
        index[key] = len(ids)
        lines.append(line)
        name = breaks.clean(wordnet_name(str(e["entity"] or "").strip()), line).strip()
        if not name:
            no_name.append((line, key))
        ids.append(key)
        names.append(name or key)
        descs.append(breaks.clean(str(e.get("entity_desc") or ""), line))
    if not ids:
        raise DataFormatError(f"{ents_path}: no entities; expected {expected}")
    del lines

    notes: dict[str, int] = {}
    breaks.report(notes)
    if no_name:
        line, key = no_name[0]
        warn(f"{ents_path}:{line}: {len(no_name)} of {len(ids)} entities have an empty \"entity\" name; their ids "
             f"are used as names, e.g. {shown(key)}")
        notes["entities_without_text"] = len(no_name)

    relations: dict[str, int] = {}  # relation text (its id too) -> index
    relation_of: dict[str, int] = {}  # the text as the files give it -> index
    expected = f"a JSON list of objects with keys {', '.join(TRIPLE_KEYS)}"

    def read_split(split: str, path: Path, train: TripleSet | None) -> Tensor:
        out = TripleCollector(path, split=split, drop_unknown=drop_unknown, notes=notes, expected=expected,
                              train=train, drop_overlap=drop_overlap)
        breaks = TextBreaks(path)
        for i, (line, ex) in enumerate(_load_json_items(path, expected, block_bytes=block_bytes)):
            ex = _require(path, line, i, ex, TRIPLE_KEYS)
            h, t = index.get(str(ex["head_id"]).strip()), index.get(str(ex["tail_id"]).strip())
            if h is None or t is None:
                k = "head_id" if h is None else "tail_id"
                out.unknown_id(line, f"item {i}: {k} {shown(ex[k])} is not in entities.json")
                continue
            raw = str(ex["relation"] or "")
            r = relation_of.get(raw)
            if r is None:  # a relation text seen for the first time: checked once
                rel_text = breaks.clean(raw, line).strip()
                if not rel_text:
                    raise DataFormatError(f"{path}:{line}: item {i}: empty relation; expected the relation's text")
                r = relation_of[raw] = relations.setdefault(rel_text, len(relations))
            out.add(line, (h, r, t))
        breaks.report(notes)
        return out.finish()

    # relations are numbered in order of first appearance over train, valid and test
    splits = read_splits({split: d / f"{split}.txt.json" for split in SPLITS}, read_split)

    rel = list(relations)
    return KG(name=d.name, entity_ids=ids, entity_names=names, entity_descs=descs, relation_ids=rel,
              relation_texts=rel, source=f"simkgc:{d}", notes=notes, **splits)
