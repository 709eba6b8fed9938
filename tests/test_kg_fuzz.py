"""Bad input by the thousand (issue 28): Hypothesis damages small KG directories in each layout we read
(KG-BERT, SimKGC json, raw Wikidata5M) and checks every load.

Each example takes a valid directory of the layout and applies one damage (or, for the last test, several):
a byte-order mark, CRLF line ends, no final newline, blank lines, a repeated line (data that must load as the
undamaged directory does, checked against that KG), bytes that are not UTF-8, a wrong column count, an unknown
id, a required JSON key removed, a repeated id (a refusal at a known file and line), a truncated or emptied file,
a huge line, a line of random bytes, lone CRs, JSON nested or numbers too deep (accepted, or refused naming a
file of the directory and a line within it). For every example: the only exception is `DataFormatError`, the
only warnings are `DataWarning`s, every message stays short (a megabyte line is not repeated), and the load
wrote nothing (the directory tree, bytes included, is unchanged). A few refusals also go through the real
entry point (`python -m kgc_kd.fit`'s main): exit 2, and run.root stays empty.

Deterministic (`derandomize`, no example database) and small: the file runs in seconds.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Hypothesis keeps caches (e.g. constants of the code under test) in ./.hypothesis: kept out of the checkout
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "kgc-kd-hypothesis"))
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kgc_kd.data.io import DataFormatError, DataWarning  # noqa: E402
from kgc_kd.data.kg import KG, SPLITS  # noqa: E402
from kgc_kd.data.sources import load_kg  # noqa: E402

SETTINGS = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MESSAGE_LIMIT = 2_000  # characters: a message quotes at most a cut piece of a line or an id
HUGE = 1_000_000  # characters of a huge line


# ---- the undamaged directories ------------------------------------------------------------------------------
def lines(rows: list[str]) -> bytes:
    return "".join(r + "\n" for r in rows).encode()


def json_list(items: list[dict]) -> bytes:
    """One item a line: item k starts on line k + 2."""
    return ("[\n" + ",\n".join(json.dumps(item) for item in items) + "\n]\n").encode()


ENTITIES = [f"e{i}" for i in range(6)]
TRIPLES = {"train": [(0, 0, 1), (1, 1, 2), (2, 0, 3), (3, 1, 4), (4, 0, 5), (5, 1, 0), (0, 1, 3), (2, 1, 5)],
           "valid": [(1, 0, 4), (3, 0, 0)], "test": [(4, 1, 1), (5, 0, 2)]}


def kgbert_files() -> dict[str, bytes]:
    split_name = {"train": "train.tsv", "valid": "dev.tsv", "test": "test.tsv"}
    files = {
        "entities.txt": lines(ENTITIES),
        "entity2text.txt": lines([f"{e}\tname {i}" for i, e in enumerate(ENTITIES)]),
        "entity2textlong.txt": lines([f"{e}\tthe description of thing {i}" for i, e in enumerate(ENTITIES)]),
        "relation2text.txt": lines(["r0\tpart of", "r1\tnext to"]),
    }
    for split, rows in TRIPLES.items():
        files[split_name[split]] = lines([f"e{h}\tr{r}\te{t}" for h, r, t in rows])
    return files


def simkgc_files() -> dict[str, bytes]:
    files = {"entities.json": json_list([{"entity_id": e, "entity": f"name {i}", "entity_desc": f"thing {i}"}
                                         for i, e in enumerate(ENTITIES)])}
    for split, rows in TRIPLES.items():
        files[f"{split}.txt.json"] = json_list([{"head_id": f"e{h}", "head": "", "relation": ["part of", "next to"][r],
                                                 "tail_id": f"e{t}", "tail": ""} for h, r, t in rows])
    return files


def wikidata5m_files() -> dict[str, bytes]:
    files = {
        "wikidata5m_entity.txt": lines([f"Q{i}\tname {i}\talias {i}" for i in range(6)]),
        "wikidata5m_relation.txt": lines(["P0\tpart of", "P1\tnext to\tbeside"]),
        "wikidata5m_text.txt": lines([f"Q{i}\tthe description of thing {i}" for i in range(6)]),
    }
    for split, rows in TRIPLES.items():
        files[f"wikidata5m_transductive_{split}.txt"] = lines([f"Q{h}\tP{r}\tQ{t}" for h, r, t in rows])
    return files


LAYOUTS = {"kgbert": kgbert_files, "simkgc": simkgc_files, "wikidata5m": wikidata5m_files}
SPLIT_FILES = {"kgbert": ("train.tsv", "dev.tsv", "test.tsv"),
               "simkgc": ("train.txt.json", "valid.txt.json", "test.txt.json"),
               "wikidata5m": tuple(f"wikidata5m_transductive_{s}.txt" for s in SPLITS)}
TEXT_FILES = {"kgbert": ("entities.txt", "entity2text.txt", "entity2textlong.txt", "relation2text.txt"),
              "simkgc": ("entities.json",),
              "wikidata5m": ("wikidata5m_entity.txt", "wikidata5m_relation.txt", "wikidata5m_text.txt")}


def write(d: Path, files: dict[str, bytes]) -> Path:
    d.mkdir()
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None: a directory)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def same_kg(kg: KG, ref: KG) -> None:
    assert kg.entity_ids == ref.entity_ids and kg.entity_names == ref.entity_names
    assert kg.entity_descs == ref.entity_descs
    assert kg.relation_ids == ref.relation_ids and kg.relation_texts == ref.relation_texts
    for split in SPLITS:
        assert torch.equal(kg.split(split), ref.split(split)), split


_REFERENCE: dict[str, KG] = {}


def reference(layout: str) -> KG:
    """The undamaged directory's KG (loaded without a warning)."""
    if layout not in _REFERENCE:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("error")
            _REFERENCE[layout] = load_kg(str(write(Path(tmp) / layout, LAYOUTS[layout]())))
    return _REFERENCE[layout]


# ---- damage ---------------------------------------------------------------------------------------------------
SAME, ERROR_AT, LOADS, ANY = "same", "error at", "loads", "any"


@dataclass
class Damage:
    what: str
    expect: str  # SAME: loads as the undamaged directory; ERROR_AT: refused at (file, line); LOADS; ANY
    file: str = ""
    line: int = 0


def split_lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def content_lines(data: bytes) -> list[int]:
    """0-based indexes of the lines with content."""
    return [i for i, x in enumerate(split_lines(data)) if x.strip()]


@st.composite
def one_damage(draw, layout: str) -> tuple[dict[str, bytes], Damage]:
    files = LAYOUTS[layout]()
    names = sorted(files)
    name = draw(st.sampled_from(names))
    data = files[name]
    rows = split_lines(data)
    is_json = name.endswith(".json")
    is_split = name in SPLIT_FILES[layout]
    # the lines of a JSON file that hold an item (line 1 is "[", the last ones "]" and "")
    item_lines = content_lines(data)[1:-1] if is_json else content_lines(data)
    i = draw(st.sampled_from(item_lines))
    kind = draw(st.sampled_from(["bom", "crlf", "no final newline", "blank lines", "repeat a line", "not utf-8",
                                 "columns", "unknown id", "truncate", "empty", "huge line", "random bytes",
                                 "lone cr", "nul", "deep json", "long number"]))
    damage = Damage(kind, ANY, name)
    if kind == "bom":
        data, damage.expect = b"\xef\xbb\xbf" + data, SAME
    elif kind == "crlf":
        data, damage.expect = data.replace(b"\n", b"\r\n"), SAME
    elif kind == "no final newline":
        data, damage.expect = data.rstrip(b"\n"), SAME
    elif kind == "blank lines":
        rows.insert(i, draw(st.sampled_from([b"", b"  ", b"\t", b"\r", b" \t "])))  # whitespace only: skipped
        data, damage.expect = b"\n".join(rows), SAME
    elif kind == "repeat a line":
        if is_json:
            rows[i] = rows[i].rstrip(b",") + b","
            rows.insert(i + 1, rows[i])
            if rows[i + 2].strip() == b"]":
                rows[i + 1] = rows[i + 1].rstrip(b",")
            # a repeated triple is dropped; a repeated entity is refused at its second line
            damage.expect, damage.line = (SAME, 0) if is_split else (ERROR_AT, i + 2)
        else:
            rows.insert(i + 1, rows[i])
            # a repeated triple or a repeated Wikidata5M id line is dropped; KG-BERT refuses a repeated id
            damage.expect, damage.line = (SAME, 0) if is_split or layout == "wikidata5m" else (ERROR_AT, i + 2)
        data = b"\n".join(rows)
    elif kind == "not utf-8":
        bad = draw(st.sampled_from([b"\xff", b"\xfe", b"\x80", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf"]))
        column = draw(st.integers(0, len(rows[i])))
        rows[i] = rows[i][:column] + bad + rows[i][column:]
        data, damage.expect, damage.line = b"\n".join(rows), ERROR_AT, i + 1
    elif kind == "columns":
        if is_json:  # a required key removed from the item
            item = json.loads(rows[i].rstrip(b","))
            key = draw(st.sampled_from(["head_id", "relation", "tail_id"] if is_split else ["entity_id", "entity"]))
            del item[key]
            rows[i] = json.dumps(item).encode() + (b"," if rows[i].endswith(b",") else b"")
            damage.expect, damage.line = ERROR_AT, i + 1
        else:
            fields = rows[i].split(b"\t")
            if draw(st.booleans()) or len(fields) < 2:
                fields.append(b"extra")
            else:
                fields.pop()
            rows[i] = b"\t".join(fields)
            # a split line must have 3 fields; a text table takes more (they join the text), and fewer, ANY
            damage.expect, damage.line = (ERROR_AT, i + 1) if is_split else (ANY, 0)
        data = b"\n".join(rows)
    elif kind == "unknown id":
        if is_split:
            if is_json:
                item = json.loads(rows[i].rstrip(b","))
                item[draw(st.sampled_from(["head_id", "tail_id"]))] = draw(st.sampled_from(["nobody", "x" * HUGE]))
                rows[i] = json.dumps(item).encode() + (b"," if rows[i].endswith(b",") else b"")
            else:
                fields = rows[i].split(b"\t")
                fields[draw(st.sampled_from([0, 1, 2]))] = draw(st.sampled_from([b"nobody", b"x" * HUGE]))
                rows[i] = b"\t".join(fields)
            # Wikidata5M drops a train triple without text (as SimKGC) and keeps a valid/test one, textless
            damage.expect, damage.line = (LOADS, 0) if layout == "wikidata5m" else (ERROR_AT, i + 1)
            data = b"\n".join(rows)
        else:
            damage.expect = ANY  # a text table's id changed: its entity has no text, or a triple an unknown id
            rows[i] = b"nobody" + rows[i][rows[i].find(b"\t"):] if not is_json else rows[i]
            data = b"\n".join(rows)
    elif kind == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif kind == "empty":
        data = b""
    elif kind == "huge line":
        filler = draw(st.sampled_from(["word " * (HUGE // 5), "x" * HUGE]))
        if is_json:
            item = json.loads(rows[i].rstrip(b","))
            key = draw(st.sampled_from(["relation"] if is_split else ["entity", "entity_desc"]))
            item[key] = filler
            rows[i] = json.dumps(item).encode() + (b"," if rows[i].endswith(b",") else b"")
            damage.expect = LOADS
        else:
            rows[i] = rows[i] + filler.encode() if not is_split else rows[i] + b"\t" + filler.encode()
            damage.expect, damage.line = (ERROR_AT, i + 1) if is_split else (ANY, 0)
        data = b"\n".join(rows)
    elif kind == "random bytes":
        rows[i] = draw(st.binary(min_size=1, max_size=60))
        data = b"\n".join(rows)
    elif kind == "lone cr":
        data = data.replace(b"\n", b"\r")
    elif kind == "nul":
        column = draw(st.integers(0, len(rows[i])))
        rows[i] = rows[i][:column] + b"\x00" + rows[i][column:]
        data = b"\n".join(rows)
    elif kind == "deep json":
        data = b"[" * draw(st.sampled_from([10, 5_000, 200_000])) if is_json else data
    elif kind == "long number":
        if is_json:
            data = data.replace(b'"e1"', b"1" * 5_000, 1)
    files[name] = data
    return files, damage


# ---- the checks -----------------------------------------------------------------------------------------------
LINE_REF = re.compile(r"^(?P<path>[^\s:]+):(?P<line>\d+): ")


def check_load(layout: str, files: dict[str, bytes], damage: Damage) -> KG | None:
    """Load the directory written from `files`; check the outcome against `damage.expect`, the exception and
    warning types, the messages' lengths and that nothing was written. The KG, or None when refused."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        d = write(root / layout, files)
        before = snapshot(root)
        kg, error = None, None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                kg = load_kg(str(d))
            except DataFormatError as err:
                error = str(err)
        assert snapshot(root) == before, "the load wrote, changed or removed something"
        for w in caught:
            assert w.category is DataWarning, f"{w.category.__name__}: {w.message}"
            assert len(str(w.message)) < MESSAGE_LIMIT
        if error is not None:
            assert len(error) < MESSAGE_LIMIT, error[:300]
            assert error.startswith(str(d)), error  # names the directory or a file in it
            ref = LINE_REF.match(error)
            if ref:
                path = Path(ref["path"])
                assert path.parent == d and path.name in files, error
                assert 1 <= int(ref["line"]) <= files[path.name].count(b"\n") + 1, error
        if damage.expect == SAME:
            assert error is None, error
            same_kg(kg, reference(layout))
        elif damage.expect == LOADS:
            assert error is None, error
        elif damage.expect == ERROR_AT:
            assert error is not None and error.startswith(f"{d / damage.file}:{damage.line}: "), \
                f"{damage}: {error if error is not None else 'loaded'}"
        return kg


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_one_damage_is_accepted_as_expected_or_refused_at_its_line(layout):
    @SETTINGS
    @given(one_damage(layout))
    def run(example):
        event(f"{example[1].what}: {example[1].expect}")  # pytest --hypothesis-show-statistics counts them
        check_load(layout, *example)

    run()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_several_damages_are_accepted_or_refused_naming_a_file_and_line(layout):
    """Up to three damages, in up to three files: accepted, or refused naming a file of the directory (and
    a line within it); never another exception, never a write."""
    @settings(SETTINGS, max_examples=60)
    @given(st.lists(one_damage(layout), min_size=2, max_size=3))
    def run(examples):
        files = LAYOUTS[layout]()
        for damaged, _ in examples:
            files.update({k: v for k, v in damaged.items() if v != LAYOUTS[layout]()[k]})
        check_load(layout, files, Damage("several", ANY))

    run()


def test_bom_and_crlf_everywhere_give_the_hand_computed_kg(tmp_path):
    """Every file of each layout with a byte-order mark and CRLF line ends: the same KG as without, which is,
    by hand, entity e0 named "name 0" ..., the train split's first triple (e0, r0, e1) at index (0, 0, 1)."""
    for layout, make in LAYOUTS.items():
        files = {k: b"\xef\xbb\xbf" + v.replace(b"\n", b"\r\n") for k, v in make().items()}
        kg = check_load(layout, files, Damage("bom and crlf", SAME))
        assert kg.entity_names[:2] == ["name 0", "name 1"] and kg.num_entities == 6
        assert kg.train[0].tolist() == [0, 0, 1] and kg.relation_texts == ["part of", "next to"]
        assert (len(kg.train), len(kg.valid), len(kg.test)) == (8, 2, 2)


@pytest.mark.parametrize("layout, file, data, line", [
    ("kgbert", "dev.tsv", b"e1\tr0\te4\ne3\tr0\n", 2),
    ("simkgc", "entities.json", b"[\n" + b"[" * 100_000, 2),
    ("wikidata5m", "wikidata5m_transductive_test.txt", b"Q4\tP1\tQ1\n\xff\n", 2),
], ids=["kgbert, a split line of 2 fields", "simkgc, JSON nested 100,000 deep", "wikidata5m, a byte not UTF-8"])
def test_refusal_through_the_entry_point_exits_2_and_writes_nothing(tmp_path, tiny_plm_dir, capsys, layout, file,
                                                                     data, line):
    from kgc_kd import fit

    files = LAYOUTS[layout]()
    files[file] = data
    d = write(tmp_path / layout, files)
    runs = tmp_path / "runs"
    runs.mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        fit.main([f"data={d}", f"model.plm={tiny_plm_dir}", f"run.root={runs}", "teacher.only=true"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{d / file}:{line}: " in err and "Traceback" not in err
    assert snapshot(tmp_path) == before
