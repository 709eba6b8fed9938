"""kgc_kd.data.io: line-based readers, their tolerance of messy files and their error messages."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from kgc_kd.data.io import (
    DataFormatError,
    DataWarning,
    TextBreaks,
    TripleCollector,
    TripleSet,
    clean_table,
    find_file,
    index_triples,
    read_rows,
    read_splits,
    read_text_table,
    read_text_table_lines,
    read_utf8,
)


def write(path, text: str):
    path.write_bytes(text.encode("utf-8"))  # bytes: no newline translation, CRLF stays CRLF
    return path


# ---- read_rows -------------------------------------------------------------------------------------------
def test_read_rows_skips_blank_lines_and_keeps_line_numbers(tmp_path):
    p = write(tmp_path / "a.tsv", "a\tb\n\n   \nc\td\n\n")
    assert list(read_rows(p, 2)) == [(1, ["a", "b"]), (4, ["c", "d"])]


def test_read_rows_crlf_and_missing_final_newline(tmp_path):
    crlf = write(tmp_path / "crlf.tsv", "a\tb\r\nc\td\r\n")
    last = write(tmp_path / "last.tsv", "a\tb\nc\td")
    both = write(tmp_path / "both.tsv", "a\tb\r\nc\td")
    expected = [(1, ["a", "b"]), (2, ["c", "d"])]
    assert list(read_rows(crlf, 2)) == expected
    assert list(read_rows(last, 2)) == expected
    assert list(read_rows(both, 2)) == expected


def test_read_rows_strips_fields(tmp_path):
    p = write(tmp_path / "a.tsv", " a \t b c  \n")
    assert list(read_rows(p, 2)) == [(1, ["a", "b c"])]


@pytest.mark.parametrize("text, lineno, found", [("a\tb\nc\n", 2, 1), ("a\tb\tc\n", 1, 3), ("a\tb\n\nc\td\te\n", 3, 3)])
def test_read_rows_wrong_column_count(tmp_path, text, lineno, found):
    p = write(tmp_path / "bad.tsv", text)
    with pytest.raises(DataFormatError) as err:
        list(read_rows(p, 2))
    msg = str(err.value)
    assert f"{p}:{lineno}:" in msg
    assert f"found {found}" in msg


def test_read_rows_at_least(tmp_path):
    p = write(tmp_path / "a.tsv", "a\tb\tc\nd\te\n")
    assert list(read_rows(p, 2, at_least=True)) == [(1, ["a", "b", "c"]), (2, ["d", "e"])]
    q = write(tmp_path / "b.tsv", "a\tb\nd\n")
    with pytest.raises(DataFormatError, match=r"b\.tsv:2:"):
        list(read_rows(q, 2, at_least=True))


def test_read_rows_not_utf8(tmp_path):
    p = tmp_path / "latin.tsv"
    p.write_bytes("caf\u00e9\tx\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match="not UTF-8") as err:
        list(read_rows(p, 2))
    assert str(p) in str(err.value)


def test_not_utf8_names_line_column_and_expectation(tmp_path):
    p = tmp_path / "dev.tsv"
    # line 3, after "c\u00f6f" (4 bytes in UTF-8): the latin-1 e-acute is byte 5 of the line, offset 4 + 4 + 4
    p.write_bytes("a\tb\n".encode() + "c\td\n".encode() + "c\u00f6f".encode() + b"\xe9\tx\n")
    with pytest.raises(DataFormatError) as err:
        list(read_rows(p, 2))
    assert str(err.value) == (f"{p}:3: not UTF-8 text: byte 0xe9 at column 5 (byte offset 12); "
                              "expected UTF-8 text; re-save the file as UTF-8")


def test_not_utf8_on_the_first_line(tmp_path):
    p = tmp_path / "entity2text.txt"
    p.write_bytes(b"\xff\xfee\x001\x00\n")  # UTF-16 with its byte-order mark
    with pytest.raises(DataFormatError, match=r"entity2text\.txt:1: not UTF-8 text: byte 0xff at column 1 .*"
                                              r"expected UTF-8 text; re-save the file as UTF-8"):
        read_text_table(p)


def test_utf8_byte_order_mark_is_dropped(tmp_path):
    p = tmp_path / "train.tsv"
    p.write_bytes(b"\xef\xbb\xbf" + "a\tb\nc\td\n".encode())
    assert list(read_rows(p, 2)) == [(1, ["a", "b"]), (2, ["c", "d"])]  # "a", not "\ufeffa"
    assert read_utf8(p) == "a\tb\nc\td\n"


def test_data_format_error_is_a_value_error():
    assert issubclass(DataFormatError, ValueError)


def test_read_text_table_keeps_unicode_line_separator_inside_a_field(tmp_path):
    p = write(tmp_path / "entity2text.txt", "e1\tfoo\u2028bar\ne2\tbaz\n")
    assert read_text_table(p) == {"e1": "foo\u2028bar", "e2": "baz"}


# ---- read_text_table ----------------------------------------------------------------------------------
def test_read_text_table(tmp_path):
    p = write(tmp_path / "t.txt", "e1\tred thing\ne2\ne3\tx\ty\n\ne4\t  \n")
    assert read_text_table(p) == {"e1": "red thing", "e2": "", "e3": "x\ty", "e4": ""}


def test_read_text_table_duplicate_id(tmp_path):
    p = write(tmp_path / "t.txt", "e1\ta\ne2\tb\ne1\tc\n")
    with pytest.raises(DataFormatError) as err:
        read_text_table(p)
    assert f"{p}:3:" in str(err.value)
    assert "'e1'" in str(err.value) and "twice" in str(err.value)
    assert "first at line 1" in str(err.value)


def test_read_text_table_empty_id(tmp_path):
    p = write(tmp_path / "entity2text.txt", "e1\ta\n\tno id here\n")
    with pytest.raises(DataFormatError) as err:
        read_text_table(p)
    assert str(err.value) == f"{p}:2: empty id; expected id<TAB>text: 'no id here'"


# ---- index_triples ------------------------------------------------------------------------------------
def test_index_triples(tmp_path):
    ents = {"a": 0, "b": 1, "c": 2}
    rels = {"p": 0, "q": 1}
    p = write(tmp_path / "train.tsv", "a\tp\tb\n\nc\tq\ta\n")
    t = index_triples(p, ents, rels)
    assert t.dtype == torch.long
    assert t.tolist() == [[0, 0, 1], [2, 1, 0]]
    empty = write(tmp_path / "empty.tsv", "\n")
    assert index_triples(empty, ents, rels).shape == (0, 3)


@pytest.mark.parametrize(
    "line, kind, key",
    [("zz\tp\tb", "head", "zz"), ("a\tzz\tb", "relation", "zz"), ("a\tp\tzz", "tail", "zz")],
)
def test_index_triples_unknown_id(tmp_path, line, kind, key):
    p = write(tmp_path / "dev.tsv", f"a\tp\tb\n{line}\n")
    with pytest.raises(DataFormatError) as err:
        index_triples(p, {"a": 0, "b": 1}, {"p": 0})
    msg = str(err.value)
    assert f"{p}:2:" in msg
    assert f"unknown {kind} id {key!r}" in msg
    assert msg.endswith("; set data.drop_unknown=true to skip such triples")


ENTS, RELS = {"a": 0, "b": 1, "c": 2}, {"p": 0, "q": 1}


def test_index_triples_drops_duplicates_keeps_order_and_warns_once(tmp_path):
    p = write(tmp_path / "train.tsv", "a\tp\tb\nb\tq\tc\n\na\tp\tb\nc\tp\ta\nb\tq\tc\na\tp\tb\n")
    notes: dict[str, int] = {}
    with pytest.warns(DataWarning) as record:
        t = index_triples(p, ENTS, RELS, split="train", notes=notes)
    assert t.tolist() == [[0, 0, 1], [1, 1, 2], [2, 0, 0]]  # first occurrences, in file order
    assert [str(w.message) for w in record] == [
        f"{p}:4: 3 duplicate triples removed (the first occurrence is kept), first at line 4: a repeat of line 1"]
    assert record[0].category is DataWarning and issubclass(DataWarning, UserWarning)
    assert notes == {"train.duplicates": 3}


def test_index_triples_unknown_ids_dropped_and_counted(tmp_path):
    p = write(tmp_path / "dev.tsv", "a\tp\tb\na\tp\tzz\nyy\tp\tb\nb\tp\tc\na\tr9\tb\n")
    notes: dict[str, int] = {}
    with pytest.warns(DataWarning) as record:
        t = index_triples(p, ENTS, RELS, split="valid", drop_unknown=True, notes=notes)
    assert t.tolist() == [[0, 0, 1], [1, 0, 2]]
    assert [str(w.message) for w in record] == [
        f"{p}:2: 3 triples skipped: unknown entity/relation ids (data.drop_unknown=true), first at line 2: "
        "unknown tail id 'zz' (not in the entity/relation files)"]
    assert notes == {"valid.unknown_dropped": 3}


def test_index_triples_clean_file_no_warning_no_notes(tmp_path):
    p = write(tmp_path / "test.tsv", "a\tp\tb\nb\tp\ta\n")
    notes: dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert index_triples(p, ENTS, RELS, split="test", drop_unknown=True, notes=notes).tolist() == [
            [0, 0, 1], [1, 0, 0]]
    assert notes == {}


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_index_triples_empty_split_refused_when_asked(tmp_path, text):
    p = write(tmp_path / "test.tsv", text)
    assert index_triples(p, ENTS, RELS).shape == (0, 3)  # allowed by default
    with pytest.raises(DataFormatError) as err:
        index_triples(p, ENTS, RELS, allow_empty=False)
    assert str(err.value) == f"{p}: no triples; expected lines head<TAB>relation<TAB>tail"


def test_index_triples_all_dropped_is_an_empty_split(tmp_path):
    p = write(tmp_path / "test.tsv", "a\tp\tzz\nzz\tq\ta\n")
    notes: dict[str, int] = {}
    with pytest.warns(DataWarning, match=r"test\.tsv:1: 2 triples skipped"):
        with pytest.raises(DataFormatError) as err:
            index_triples(p, ENTS, RELS, split="test", drop_unknown=True, notes=notes, allow_empty=False)
    assert str(err.value) == (
        f"{p}:1: no triples left: all 2 have unknown entity/relation ids (data.drop_unknown=true), the first at "
        "line 1: unknown tail id 'zz' (not in the entity/relation files); expected lines "
        "head<TAB>relation<TAB>tail with known ids")
    assert notes == {"test.unknown_dropped": 2}


def test_triple_collector_duplicates_on_one_line(tmp_path):
    # a compact JSON file has every item on line 1: duplicates are still found
    out = TripleCollector(tmp_path / "train.txt.json", split="train", notes=(notes := {}))
    for triple in [(0, 0, 1), (0, 0, 1), (1, 0, 0)]:
        out.add(1, triple)
    with pytest.warns(DataWarning, match=r"train\.txt\.json:1: 1 duplicate triple removed .* a repeat of line 1$"):
        assert out.finish().tolist() == [[0, 0, 1], [1, 0, 0]]
    assert notes == {"train.duplicates": 1}


# ---- triples that also occur in train --------------------------------------------------------------------
TRAIN = "a\tp\tb\nb\tq\tc\nc\tp\ta\n"


def test_index_triples_overlap_with_train_warned_with_count_and_first_line(tmp_path):
    """Lines 2 and 4 are train triples (line 5 repeats line 2: removed as a duplicate, not counted again):
    one warning naming line 2 and the count 2; the triples are kept, nothing is noted."""
    train = index_triples(write(tmp_path / "train.tsv", TRAIN), ENTS, RELS)
    p = write(tmp_path / "test.tsv", "a\tq\tb\nb\tq\tc\nb\tp\ta\nc\tp\ta\nb\tq\tc\n")
    notes: dict[str, int] = {}
    with pytest.warns(DataWarning) as record:
        t = index_triples(p, ENTS, RELS, split="test", notes=notes, train=TripleSet(train))
    assert [str(w.message) for w in record] == [
        f"{p}:5: 1 duplicate triple removed (the first occurrence is kept), first at line 5: a repeat of line 2",
        f"{p}:2: 2 test triples also occur in the train split, first at line 2; kept, so a model is evaluated on "
        "triples it was trained on (data.drop_overlap=true drops them)"]
    assert t.tolist() == [[0, 1, 1], [1, 1, 2], [1, 0, 0], [2, 0, 0]]
    assert notes == {"test.duplicates": 1}


def test_index_triples_drop_overlap_drops_and_counts(tmp_path):
    train = TripleSet(index_triples(write(tmp_path / "train.tsv", TRAIN), ENTS, RELS))
    p = write(tmp_path / "dev.tsv", "a\tq\tb\n\nc\tp\ta\nb\tp\ta\n")
    notes: dict[str, int] = {}
    with pytest.warns(DataWarning) as record:
        t = index_triples(p, ENTS, RELS, split="valid", notes=notes, train=train, drop_overlap=True)
    assert [str(w.message) for w in record] == [
        f"{p}:3: 1 valid triple also occurs in the train split, first at line 3; dropped (data.drop_overlap=true)"]
    assert t.tolist() == [[0, 1, 1], [1, 0, 0]]
    assert notes == {"valid.overlap_dropped": 1}


def test_index_triples_without_overlap_no_warning(tmp_path):
    train = TripleSet(index_triples(write(tmp_path / "train.tsv", TRAIN), ENTS, RELS))
    p = write(tmp_path / "test.tsv", "b\tp\ta\nc\tq\ta\n")  # the train triples' relations differ
    notes: dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = index_triples(p, ENTS, RELS, split="test", notes=notes, train=train, drop_overlap=True)
    assert t.tolist() == [[1, 0, 0], [2, 1, 0]] and notes == {}


def test_drop_overlap_leaving_a_split_empty_is_an_error(tmp_path):
    train = TripleSet(index_triples(write(tmp_path / "train.tsv", TRAIN), ENTS, RELS))
    p = write(tmp_path / "test.tsv", "\nc\tp\ta\na\tp\tb\n")
    with pytest.warns(DataWarning, match=r"test\.tsv:2: 2 test triples also occur"):
        with pytest.raises(DataFormatError) as err:
            index_triples(p, ENTS, RELS, split="test", train=train, drop_overlap=True, allow_empty=False)
    assert str(err.value) == (
        f"{p}:2: no triples left: all 2 also occur in the train split (data.drop_overlap=true), the first at "
        "line 2; expected lines head<TAB>relation<TAB>tail not in train")


def test_read_splits_reads_train_first_and_hands_its_triples_to_the_others(tmp_path):
    calls = []

    def read(split, path, train):
        calls.append((split, path.name, None if train is None else train.contains(torch.tensor([[0, 0, 1]])).tolist()))
        return torch.tensor([[0, 0, 1]]) if split == "train" else torch.tensor([[1, 0, 0]])

    paths = {"valid": tmp_path / "v", "train": tmp_path / "t", "test": tmp_path / "x"}
    splits = read_splits(paths, read)
    assert calls == [("train", "t", None), ("valid", "v", [True]), ("test", "x", [True])]
    assert list(splits) == ["valid", "train", "test"] and splits["train"].tolist() == [[0, 0, 1]]


@pytest.mark.parametrize("big", [False, True], ids=["int64 keys", "lexsorted rows"])
def test_triple_set_contains_what_a_set_of_tuples_contains(big):
    """Random rows, half of the asked ones drawn from the set; `big`: ids up to 2**40, so (h * R + r) * E + t
    would overflow int64 and the rows are sorted instead."""
    rng = random.Random(3)
    scale = 2**40 if big else 50
    members = [(rng.randrange(scale), rng.randrange(7), rng.randrange(scale)) for _ in range(300)]
    asked = [rng.choice(members) if rng.random() < 0.5 else
             (rng.randrange(scale * 2), rng.randrange(9), rng.randrange(scale * 2)) for _ in range(400)]
    asked += [(scale * 3, 0, 0), (0, 0, 0)]  # beyond the set's bounds; a row of zeros
    s = TripleSet(torch.tensor(members))
    assert (s.keys is None) == big
    want = set(members)
    assert s.contains(torch.tensor(asked)).tolist() == [x in want for x in asked]
    assert TripleSet(torch.zeros(0, 3)).contains(torch.tensor(asked)).tolist() == [False] * len(asked)
    assert s.contains(torch.zeros(0, 3)).tolist() == []


# ---- tabs and line breaks inside texts --------------------------------------------------------------------
def test_text_breaks_replaced_counted_and_warned_once_with_the_first_line(tmp_path):
    """entity2text-like table: line 2 has a tab inside its text (a third field), line 4 a vertical tab and a
    U+2028 line separator (iter_lines does not break there): both become spaces, one warning names line 2."""
    p = write(tmp_path / "entity2text.txt", "e1\tred\ne2\tpart\tof\ne3\tblue\ne4\tgreen\x0bthing\u2028x\n")
    notes: dict[str, int] = {}
    with pytest.warns(DataWarning) as record:
        table = clean_table(p, *read_text_table_lines(p), notes)
    assert table == {"e1": "red", "e2": "part of", "e3": "blue", "e4": "green thing x"}
    assert [str(w.message) for w in record] == [
        f"{p}:2: 2 texts hold a tab or a line break, each replaced by a space (predict's --queries file is "
        "tab-separated and could not name it), first at line 2: 'part\\tof'"]
    assert notes == {"entity2text.txt.tabs_or_line_breaks": 2}


def test_text_breaks_clean_text_untouched_no_warning(tmp_path):
    breaks, notes = TextBreaks(tmp_path / "x.txt"), {}
    assert breaks.clean("red  thing: a \u00e9 word", 1) == "red  thing: a \u00e9 word"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        breaks.report(notes)
    assert notes == {}


# ---- find_file -----------------------------------------------------------------------------------------
def test_find_file_prefers_listed_order(tmp_path):
    for name in ("x.txt", "x.tsv", "valid.tsv"):
        write(tmp_path / name, "")
    assert find_file(tmp_path, ("x",), (".txt", ".tsv")) == tmp_path / "x.txt"
    assert find_file(tmp_path, ("x",), (".tsv", ".txt")) == tmp_path / "x.tsv"
    # stems come first: dev is preferred, valid is the fallback
    assert find_file(tmp_path, ("dev", "valid"), (".tsv", ".txt")) == tmp_path / "valid.tsv"
    write(tmp_path / "dev.txt", "")
    assert find_file(tmp_path, ("dev", "valid"), (".tsv", ".txt")) == tmp_path / "dev.txt"


def test_find_file_ignores_directories(tmp_path):
    (tmp_path / "x.txt").mkdir()
    write(tmp_path / "x.tsv", "")
    assert find_file(tmp_path, ("x",), (".txt", ".tsv")) == tmp_path / "x.tsv"


def test_find_file_missing(tmp_path):
    assert find_file(tmp_path, ("dev", "valid"), (".tsv", ".txt"), required=False) is None
    with pytest.raises(DataFormatError) as err:
        find_file(tmp_path, ("dev", "valid"), (".tsv", ".txt"))
    msg = str(err.value)
    assert str(tmp_path) in msg
    assert "dev.tsv or dev.txt or valid.tsv or valid.txt" in msg


# ---- streaming and the array-backed collector, against today's whole-text / dict implementations -------
def reference_read_rows(path, columns, *, at_least=False):
    """read_rows as it was: the whole text, split on "\\n"."""
    for lineno, line in enumerate(read_utf8(path).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < columns or (len(fields) > columns and not at_least):
            raise DataFormatError(
                f"{path}:{lineno}: expected {columns} tab-separated fields, found {len(fields)}: {line[:80]!r}")
        yield lineno, [f.strip() for f in fields]


def outcome(rows):
    try:
        return list(rows)
    except DataFormatError as err:
        return str(err)


@pytest.mark.parametrize("seed", range(30))
def test_read_rows_streams_what_the_whole_text_reader_gave(tmp_path, seed):
    rng = random.Random(seed)
    pieces = ["a", "b c", " ", "\t", "\n", "\r\n", "\r", "\u2028", "\u00e9", "\U0001F600", "\ufeff", "x\ty\tz"]
    text = ("\ufeff" if rng.random() < 0.3 else "") + "".join(rng.choice(pieces) for _ in range(rng.randrange(60)))
    raw = text.encode("utf-8")
    if rng.random() < 0.3:
        at = rng.randrange(len(raw) + 1)
        raw = raw[:at] + rng.choice([b"\xe9", b"\xff", b"\x80"]) + raw[at:]
    p = tmp_path / "t.tsv"
    p.write_bytes(raw)
    try:
        read_utf8(p)
        before, not_utf8 = p, None
    except DataFormatError as err:  # streamed, the lines before the bad one are read (and checked) first
        not_utf8 = str(err)
        line = int(not_utf8.removeprefix(f"{p}:").split(":")[0])
        before = tmp_path / "before.tsv"
        before.write_bytes(b"\n".join(raw.split(b"\n")[:line - 1]))
    for columns, at_least in ((1, True), (2, False), (2, True), (3, False)):
        expected = outcome(reference_read_rows(before, columns, at_least=at_least))
        if not_utf8 is not None:
            expected = expected.replace(str(before), str(p)) if isinstance(expected, str) else not_utf8
        assert outcome(read_rows(p, columns, at_least=at_least)) == expected


class ReferenceCollector:
    """TripleCollector's duplicate handling as it was: a dict of tuples, rows in a list."""

    def __init__(self):
        self.rows, self.first_line, self.duplicates, self.first_duplicate = [], {}, 0, None

    def add(self, lineno, triple):
        first = self.first_line.get(triple)
        if first is not None:
            self.duplicates += 1
            if self.first_duplicate is None:
                self.first_duplicate = (lineno, first)
            return
        self.first_line[triple] = lineno
        self.rows.append(triple)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("scale", [1, 2**40])  # ids past 2**40: the keys would overflow, lexsort is used
def test_triple_collector_drops_the_repeats_the_dict_version_dropped(tmp_path, seed, scale):
    rng = random.Random(seed)
    n_ent, n_rel = rng.randrange(1, 30), rng.randrange(1, 4)
    hubs = [rng.randrange(n_ent) for _ in range(2)]
    out, ref = TripleCollector(tmp_path / "train.tsv", split="train", notes=(notes := {})), ReferenceCollector()
    lineno = 0
    for _ in range(rng.randrange(1, 300)):
        lineno += rng.randrange(1, 3)
        h = rng.choice(hubs) if rng.random() < 0.5 else rng.randrange(n_ent)
        triple = (h * scale, rng.randrange(n_rel), rng.randrange(n_ent) * scale)
        out.add(lineno, triple)
        ref.add(lineno, triple)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        rows = out.finish()
    assert rows.dtype == torch.long and rows.tolist() == [list(t) for t in ref.rows]
    assert (out.duplicates, out.first_duplicate) == (ref.duplicates, ref.first_duplicate)
    assert notes == ({"train.duplicates": ref.duplicates} if ref.duplicates else {})
    if ref.duplicates:
        line, first = ref.first_duplicate
        assert [str(w.message) for w in record] == [
            f"{tmp_path / 'train.tsv'}:{line}: {ref.duplicates} duplicate {'triple' if ref.duplicates == 1 else 'triples'}"
            f" removed (the first occurrence is kept), first at line {line}: a repeat of line {first}"]
    else:
        assert record == []
