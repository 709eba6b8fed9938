"""kgc_kd.data.io: line-based readers, their tolerance of messy files and their error messages."""

from __future__ import annotations

import pytest
import torch

from kgc_kd.data.io import DataFormatError, find_file, index_triples, read_rows, read_text_table


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
