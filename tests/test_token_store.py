"""kgc_kd.data.token_store through TokenCache.load_or_build: the disk cache of token tables is hit by a second
build (the tokenizer is not called), missed when the tokenizer, max length or any text changes, never used
when damaged, and left as one valid entry by concurrent builders."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import warnings

import numpy as np
import pytest
import torch
from conftest import make_tokenizer, tiny_vocab
from test_files import world_dir  # noqa: F401 - a fixture: a directory every user can reach
from test_tokens import varied_kg

from kgc_kd.data import token_store
from kgc_kd.data import tokens as tokens_module
from kgc_kd.data.io import DataWarning
from kgc_kd.data.tokens import TABLES, TokenCache, text_fingerprint

pytestmark = pytest.mark.filterwarnings("ignore:data.max_length=:kgc_kd.data.io.DataWarning")


class CountingTokenizer:
    """The real tokenizer, counting how often it is asked to tokenise."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def entries(root) -> list:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def load(kg, tok, root, max_length=12, **kw) -> TokenCache:
    return TokenCache.load_or_build(kg, tok, max_length, cache_dir=root, **kw)


def test_second_build_reads_the_entry_without_tokenising(tmp_path):
    kg, tok = varied_kg(0), CountingTokenizer(make_tokenizer())
    built = TokenCache.build(kg, tok.tokenizer, 12)
    first = load(kg, tok, tmp_path)
    assert tok.calls > 0 and first == built and first.truncated == built.truncated
    assert first.cache_path == tmp_path / entries(tmp_path)[0] and len(entries(tmp_path)) == 1
    assert sorted(p.name for p in first.cache_path.iterdir()) == sorted([f"{k}.npy" for k in TABLES] + ["meta.json"])
    meta = json.loads((first.cache_path / "meta.json").read_text())
    assert meta["key"] == {"format": token_store.FORMAT, "tokenizer": tokens_module.tokenizer_fingerprint(tok),
                           "max_length": 12, "texts": text_fingerprint(kg)}
    assert meta["entities"] == kg.num_entities and meta["relations"] == 2 * kg.num_relations
    assert meta["truncated_entity_texts"] == built.truncated["entity_texts"] > 0
    assert meta["arrays"]["entity_table"]["shape"] == list(built.entity_table.shape)
    tok.calls = 0
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        second = load(kg, tok, tmp_path)
    assert tok.calls == 0 and second == built and second.truncated == built.truncated
    # the truncation warning is repeated on a hit, and nothing else is said (torch.from_numpy does not warn)
    assert [w.category for w in record] == [DataWarning] and "are truncated" in str(record[0].message)
    maps = open("/proc/self/maps").read()
    assert all(str(second.cache_path / f"{k}.npy") in maps for k in TABLES)  # mapped, not read into memory
    assert second.entity_table.dtype == torch.int32


def test_reading_an_entry_takes_no_lock(tmp_path):
    kg, tok = varied_kg(0), make_tokenizer()
    entry = load(kg, tok, tmp_path).cache_path
    locks = [p for p in tmp_path.iterdir() if p.name.endswith(".lock")]
    assert [p.name for p in locks] == [f".{entry.name}.lock"]  # the builder's
    locks[0].unlink()
    assert load(kg, tok, tmp_path) == TokenCache.build(kg, tok, 12)
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]  # a read-only directory would do


def test_a_read_only_place_is_read_but_never_built_in(tmp_path, monkeypatch):
    """Where nothing can be written (an export copied read-only): an existing entry is mapped without
    tokenising, a missing one is built in memory and nothing is created. Tests run as root, for whom every
    directory is writable, so the permission check itself is what is switched off here."""
    kg, tok = varied_kg(0), CountingTokenizer(make_tokenizer())
    written = load(kg, tok, tmp_path / "cache")
    before = sorted(p.name for p in (tmp_path / "cache").iterdir())  # the entry and its builder's lock file
    monkeypatch.setattr(token_store.os, "access", lambda path, mode: False)
    tok.calls = 0
    mapped = load(kg, tok, tmp_path / "cache")
    assert tok.calls == 0 and mapped == written and mapped.cache_path == written.cache_path
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == before  # nothing added
    in_memory = load(kg, tok, tmp_path / "elsewhere")
    assert tok.calls > 0 and in_memory == written and in_memory.cache_path is None
    assert not (tmp_path / "elsewhere").exists()
    assert token_store.writable(tmp_path) is False


def test_without_a_cache_dir_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kg, tok = varied_kg(1), make_tokenizer()
    cache = TokenCache.load_or_build(kg, tok, 10, cache_dir=None)
    assert cache.cache_path is None and cache == TokenCache.build(kg, tok, 10) and list(tmp_path.iterdir()) == []


def test_link_graph_reads_the_plain_tables_from_the_entry(tmp_path):
    kg, tok = varied_kg(2), make_tokenizer()
    linked = load(kg, tok, tmp_path, link_graph=True, warn=False)
    assert linked == TokenCache.build(kg, tok, 12, link_graph=True, warn=False) and linked.link is not None
    plain = load(kg, tok, tmp_path, warn=False)
    assert plain.cache_path == linked.cache_path and plain.link is None and plain == TokenCache.build(kg, tok, 12)


def other_vocab_tokenizer():
    from transformers import BertTokenizer

    vocab = tiny_vocab()
    vocab["zebra"] = len(vocab)
    return BertTokenizer(vocab=vocab, do_lower_case=True)


@pytest.mark.parametrize("change", ["tokenizer", "max_length", "entity name", "entity description",
                                    "relation text", "entity order"])
def test_any_change_of_the_key_reads_another_entry(tmp_path, change):
    kg, tok = varied_kg(0), make_tokenizer()
    load(kg, tok, tmp_path)
    max_length = 12
    if change == "tokenizer":
        tok = other_vocab_tokenizer()
    elif change == "max_length":
        max_length = 13
    elif change == "entity name":
        kg.entity_names[17] += " red"
    elif change == "entity description":
        kg.entity_descs[-1] = kg.entity_descs[-1] + "."
    elif change == "relation text":
        kg.relation_texts[2] = kg.relation_texts[2].upper() + "x"  # also its inverse's text
    else:
        kg.entity_names[4], kg.entity_names[5] = kg.entity_names[5], kg.entity_names[4]
    counting = CountingTokenizer(tok)
    cache = load(kg, counting, tmp_path, max_length)
    assert counting.calls > 0 and len(entries(tmp_path)) == 2
    assert cache == TokenCache.build(kg, tok, max_length)


def test_text_fingerprint_ignores_the_chunking_and_sees_every_text(monkeypatch):
    kg = varied_kg(0)
    fp = text_fingerprint(kg)
    monkeypatch.setattr(tokens_module, "CHUNK_TEXTS", 3)
    assert text_fingerprint(kg) == fp and len(fp) == 16
    kg.entity_names[0], kg.entity_descs[0] = kg.entity_names[0] + " " + kg.entity_descs[0], ""
    assert text_fingerprint(kg) != fp  # "name desc" reads differently from "name: desc"


@pytest.mark.parametrize("damage", ["bytes", "short file", "missing file", "meta json", "meta key", "meta shape",
                                    "zero-byte file", "other shape file", "other dtype file", "object array file"])
def test_a_damaged_entry_is_rebuilt_with_a_warning(tmp_path, damage):
    kg, tok = varied_kg(0), make_tokenizer()
    entry = load(kg, tok, tmp_path).cache_path
    table = entry / "entity_table.npy"
    meta = json.loads((entry / "meta.json").read_text())
    if damage == "bytes":
        raw = bytearray(table.read_bytes())
        raw[-5] ^= 1
        table.write_bytes(bytes(raw))
    elif damage == "short file":
        table.write_bytes(table.read_bytes()[:-8])
    elif damage == "missing file":
        (entry / "relation_lengths.npy").unlink()
    elif damage == "meta json":
        (entry / "meta.json").write_text("{")
    elif damage == "meta key":
        meta["key"]["max_length"] = 99
        (entry / "meta.json").write_text(json.dumps(meta))
    elif damage == "meta shape":
        meta["arrays"]["entity_table"]["shape"][1] += 1
        (entry / "meta.json").write_text(json.dumps(meta))
    elif damage == "zero-byte file":
        table.write_bytes(b"")
    elif damage == "other shape file":  # another entry's table (3 rows), meta.json left as it was
        np.save(table, np.load(table)[:3], allow_pickle=False)
    elif damage == "other dtype file":
        np.save(table, np.load(table).astype(np.int64), allow_pickle=False)
    else:
        np.save(table, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    counting = CountingTokenizer(tok)
    with pytest.warns(DataWarning, match=rf"token cache {entry} cannot be used \(.*\); tokenising again") as record:
        cache = load(kg, counting, tmp_path)
    assert sum("cannot be used" in str(w.message) for w in record) == 1  # said once
    assert counting.calls > 0 and cache == TokenCache.build(kg, tok, 12) and cache.cache_path == entry
    counting.calls = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        warnings.filterwarnings("ignore", "data.max_length=")
        assert load(kg, counting, tmp_path) == cache and counting.calls == 0  # the rebuilt entry is valid
    assert entries(tmp_path) == [entry.name] and not [p for p in tmp_path.iterdir() if p.suffix in (".tmp", ".old")]


def test_a_leftover_temporary_directory_is_not_used(tmp_path):
    kg, tok = varied_kg(0), make_tokenizer()
    key = {"format": token_store.FORMAT, "tokenizer": tokens_module.tokenizer_fingerprint(tok), "max_length": 12,
           "texts": text_fingerprint(kg)}
    stale = tmp_path / f".{token_store.entry_name(key)}.abc123.tmp"  # a builder killed half way
    stale.mkdir()
    (stale / "entity_table.npy").write_bytes(b"half")
    cache = load(kg, tok, tmp_path)
    assert cache == TokenCache.build(kg, tok, 12) and entries(tmp_path) == [token_store.entry_name(key)]
    assert (stale / "entity_table.npy").read_bytes() == b"half"  # another builder's: left alone


def test_a_second_writer_keeps_the_first_entry(tmp_path):
    entry = tmp_path / "e"
    first = {"a": np.arange(6, dtype=np.int32).reshape(2, 3)}
    token_store.write(entry, first, {"key": 1})
    token_store.write(entry, {"a": np.zeros((2, 3), dtype=np.int32)}, {"key": 1})  # it renamed first: kept
    assert torch.equal(token_store.open_arrays(entry)["a"], torch.from_numpy(first["a"]))
    assert [p.name for p in tmp_path.iterdir()] == ["e"]  # the second writer's temporary copy is gone
    token_store.write(entry, {"a": np.ones((1, 2), dtype=np.int32)}, {"key": 1}, replace=True)  # found unusable
    assert token_store.open_arrays(entry)["a"].tolist() == [[1, 1]] and [p.name for p in tmp_path.iterdir()] == ["e"]


def build_in_child(root, barrier, out, locked):
    if not locked:
        token_store.fcntl = None  # as where flock is missing: both tokenise, the first rename wins
    kg = varied_kg(0)
    barrier.wait()
    cache = load(kg, make_tokenizer(), root, warn=False)
    out.put((str(cache.cache_path), cache.entity_table.tolist(), cache.relation_lengths.tolist()))


@pytest.mark.parametrize("locked", [True, False])
def test_concurrent_builders_leave_one_valid_entry(tmp_path, locked):
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    children = [ctx.Process(target=build_in_child, args=(tmp_path, barrier, out, locked)) for _ in range(3)]
    for c in children:
        c.start()
    results = [out.get(timeout=120) for _ in children]
    for c in children:
        c.join(timeout=60)
        assert c.exitcode == 0
    kg, tok = varied_kg(0), make_tokenizer()
    want = TokenCache.build(kg, tok, 12, warn=False)
    assert {r[0] for r in results} == {str(tmp_path / entries(tmp_path)[0])} and len(entries(tmp_path)) == 1
    assert all(r[1] == want.entity_table.tolist() and r[2] == want.relation_lengths.tolist() for r in results)
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    counting = CountingTokenizer(tok)
    assert load(kg, counting, tmp_path, warn=False) == want and counting.calls == 0


# ---- read(expect=...): what the reader needs, checked even where meta.json agrees with a wrong file -----------------
def rewrite_consistently(entry, name, array) -> None:
    """Replace `name`.npy and update meta.json to match (shape, dtype, SHA-1): a wrong entry the checksums pass."""
    np.save(entry / f"{name}.npy", array, allow_pickle=False)
    meta = json.loads((entry / "meta.json").read_text())
    meta["arrays"][name] = {"shape": list(array.shape), "dtype": str(array.dtype),
                            "sha1": token_store.file_sha1(entry / f"{name}.npy")}
    (entry / "meta.json").write_text(json.dumps(meta))


def expected(kg, width=None) -> dict:
    e, r = kg.num_entities, 2 * kg.num_relations
    return {"entity_table": ("int32", (e, width)), "entity_lengths": ("int32", (e,)),
            "relation_table": ("int32", (r, width)), "relation_lengths": ("int32", (r,))}


def _read(entry, meta_key, expect):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        found = token_store.read(entry, meta_key, expect=expect)
    return found, [str(w.message) for w in record if issubclass(w.category, DataWarning)]


@pytest.mark.parametrize("damage", ["three rows", "int64", "float32", "one dimension", "no such array"])
def test_read_refuses_an_entry_that_is_consistent_but_not_what_the_reader_expects(tmp_path, damage):
    kg, tok = varied_kg(0), make_tokenizer()
    entry = load(kg, tok, tmp_path).cache_path
    meta_key = json.loads((entry / "meta.json").read_text())["key"]
    found, said = _read(entry, meta_key, expected(kg))
    assert found is not None and said == []  # the entry as written is what the reader expects
    table = np.load(entry / "entity_table.npy")
    if damage == "three rows":
        rewrite_consistently(entry, "entity_table", table[:3])
    elif damage == "int64":
        rewrite_consistently(entry, "entity_table", table.astype(np.int64))
    elif damage == "float32":
        rewrite_consistently(entry, "entity_lengths", np.load(entry / "entity_lengths.npy").astype(np.float32))
    elif damage == "one dimension":
        rewrite_consistently(entry, "entity_table", table.reshape(-1))
    else:
        meta = json.loads((entry / "meta.json").read_text())
        del meta["arrays"]["relation_lengths"]
        (entry / "meta.json").write_text(json.dumps(meta))
    assert token_store.read(entry, meta_key, warn=False) is not None  # meta.json and the files agree ...
    found, said = _read(entry, meta_key, expected(kg))  # ... but not with what the reader needs
    assert found is None and len(said) == 1 and f"token cache {entry} cannot be used" in said[0], said
    assert "expected" in said[0] or "holds no relation_lengths.npy" in said[0]


def test_read_never_opens_a_file_outside_its_entry(tmp_path):
    kg, tok = varied_kg(0), make_tokenizer()
    entry = load(kg, tok, tmp_path / "cache").cache_path
    outside = tmp_path / "outside.npy"
    np.save(outside, np.arange(4, dtype=np.int32), allow_pickle=False)
    meta = json.loads((entry / "meta.json").read_text())
    meta["arrays"]["../../outside"] = {"shape": [4], "dtype": "int32", "sha1": token_store.file_sha1(outside)}
    (entry / "meta.json").write_text(json.dumps(meta))
    found, said = _read(entry, meta["key"], None)
    assert found is None and len(said) == 1 and "'../../outside'" in said[0]


def test_a_consistent_entry_of_other_rows_is_rebuilt_not_fatal(tmp_path):
    kg, tok = varied_kg(0), make_tokenizer()
    entry = load(kg, tok, tmp_path).cache_path
    rewrite_consistently(entry, "entity_table", np.load(entry / "entity_table.npy")[:3])
    rewrite_consistently(entry, "entity_lengths", np.load(entry / "entity_lengths.npy")[:3])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cache = load(kg, tok, tmp_path)
    said = [str(w.message) for w in record if "cannot be used" in str(w.message)]
    assert len(said) == 1 and f"token cache {entry} cannot be used" in said[0] and "holds int32 3x" in said[0]
    assert cache == TokenCache.build(kg, tok, 12) and cache.cache_path == entry


# ---- a shared run.root: entries and their locks under another user ----------------------------------------
def _build_entry(cache_dir) -> str:
    entry = cache_dir / "e"
    with token_store.building(entry):
        token_store.write(entry, {"t": np.arange(6, dtype=np.int32).reshape(2, 3)}, {"key": {"k": 1}})
    return "built"


def _read_entry_under_its_lock(cache_dir) -> str:
    entry = cache_dir / "e"
    with token_store.building(entry):  # the lock file is the first user's
        found = token_store.read(entry, {"k": 1}, expect={"t": ("int32", (2, 3))})
    return "read " + ",".join(str(int(v)) for v in found[0]["t"].flatten())


@pytest.mark.skipif(os.geteuid() != 0, reason="running a process as a second user id needs root")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o002, 0o775)])
def test_a_second_user_locks_and_reads_an_entry_another_user_built(world_dir, umask, mode):
    """The entry directory gets the modes the umask allows (not mkdtemp's 0o700, nor a fixed 0o755), and a user
    who may not write the first user's lock file (umask 022) still takes it to read the entry."""
    from test_files import GROUP, as_user

    cache = world_dir / "token-cache"
    cache.mkdir()
    os.chown(cache, 65533, GROUP)
    cache.chmod(0o2775 if umask == 0o002 else 0o755)
    assert as_user(65533, umask, _build_entry, cache, groups=(GROUP,)) == (0, "built")
    assert stat.S_IMODE((cache / "e").stat().st_mode) == mode
    groups = (65534, GROUP) if umask == 0o002 else ()
    assert as_user(65534, umask, _read_entry_under_its_lock, cache, groups=groups) == (0, "read 0,1,2,3,4,5")
