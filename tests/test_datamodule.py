"""kgc_kd.data.datamodule.KGDataModule on the synthetic KG with the tiny tokenizer."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tokenizer, tiny_vocab

from kgc_kd.data.datamodule import KGDataModule
from kgc_kd.data.io import DataFormatError, DataWarning
from kgc_kd.data.synthetic import synthetic_kg
from kgc_kd.data.tokens import TABLES, TokenCache

SYN = {"num_entities": 20, "num_relations": 3, "num_triples": 120, "seed": 0}


def make_dm(**kw) -> KGDataModule:
    args = dict(source="synthetic", synthetic=SYN, batch_size=16, eval_batch_size=7, max_length=16)
    args.update(kw)
    return KGDataModule(**args)


@pytest.fixture(scope="module")
def dm():
    d = make_dm()
    d.connect(make_tokenizer())
    return d


def rows(t: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(x) for x in t.tolist()]


def test_kg_is_the_configured_synthetic_kg(dm):
    ref = synthetic_kg(**SYN)
    assert dm.kg.name == ref.name
    assert torch.equal(dm.kg.train, ref.train)


def test_train_examples_are_train_plus_inverses(dm):
    kg = dm.kg
    ex = dm.train_examples
    n = len(kg.train)
    assert ex.shape == (2 * n, 3)
    assert torch.equal(ex[:n], kg.train)
    R = kg.num_relations
    assert rows(ex[n:]) == [(t, r + R, h) for h, r, t in kg.train.tolist()]


def test_train_loader_drops_last_and_covers_examples(dm):
    torch.manual_seed(0)
    loader = dm.train_dataloader()
    ex = rows(dm.train_examples)
    assert len(ex) % 16 != 0  # so drop_last matters
    batches = list(loader)
    assert len(loader) == len(batches) == len(ex) // 16
    seen = []
    for b in batches:
        assert b["triples"].shape == (16, 3)
        assert b["fn_mask"].shape == (16, 16)
        assert b["hr"]["input_ids"].shape[0] == 16
        assert {"entities", "tail_index", "head_index"} <= set(b)  # dedup_entities defaults to True
        seen += rows(b["triples"])
    assert len(set(seen)) == len(seen) == (len(ex) // 16) * 16
    assert set(seen) <= set(ex)


def test_train_loader_without_dedup():
    d = make_dm(dedup_entities=False, tokenizer=make_tokenizer())
    b = next(iter(d.train_dataloader()))
    assert {"tail", "head"} <= set(b) and "entities" not in b
    assert b["tail"]["input_ids"].shape[0] == 16


@pytest.mark.parametrize("stage, split", [("val", "valid"), ("test", "test")])
def test_eval_loaders(dm, stage, split):
    loaders = getattr(dm, f"{stage}_dataloader")()
    assert isinstance(loaders, list) and len(loaders) == 2
    ent_loader, query_loader = loaders
    ent_batches = list(ent_loader)
    assert all(len(b["entity_ids"]) <= 7 for b in ent_batches)
    assert torch.equal(torch.cat([b["entity_ids"] for b in ent_batches]), torch.arange(dm.kg.num_entities))
    q_batches = list(query_loader)
    got = torch.cat([b["triples"] for b in q_batches])
    assert torch.equal(got, dm.kg.with_inverse(dm.kg.split(split)))  # not shuffled, nothing dropped
    assert len(got) == 2 * len(dm.kg.split(split))
    assert set(q_batches[0]) == {"triples", "hr", "query_index"}
    assert torch.equal(torch.cat([b["query_index"] for b in q_batches]), torch.arange(len(got)))


def test_val_max_queries_ranks_a_fixed_seeded_subset():
    full = torch.cat([b["triples"] for b in make_dm(tokenizer=make_tokenizer()).val_dataloader()[1]])
    assert len(full) > 9
    picks = []
    for _ in range(2):  # a new datamodule (a new stage, a new epoch) picks the same queries
        d = make_dm(tokenizer=make_tokenizer(), val_max_queries=9)
        batches = list(d.val_dataloader()[1])
        index = torch.cat([b["query_index"] for b in batches])
        triples = torch.cat([b["triples"] for b in batches])
        assert len(index) == 9 and torch.equal(index, index.unique())  # distinct, in split order
        assert torch.equal(triples, full[index])  # each query keeps its original index
        picks.append(index)
        test = torch.cat([b["triples"] for b in d.test_dataloader()[1]])
        assert torch.equal(test, d.kg.with_inverse(d.kg.test))  # the test split is always ranked in full
    assert torch.equal(picks[0], picks[1])
    expected = torch.randperm(len(full), generator=torch.Generator().manual_seed(0))[:9].sort().values
    assert torch.equal(picks[0], expected)
    # more than the split holds: all of it
    d = make_dm(tokenizer=make_tokenizer(), val_max_queries=10_000)
    assert torch.equal(torch.cat([b["triples"] for b in d.val_dataloader()[1]]), full)


@pytest.mark.parametrize("bad", [0, -3])
def test_val_max_queries_must_be_positive(bad):
    with pytest.raises(ValueError, match=f"eval.val_max_queries={bad}: expected a positive number"):
        make_dm(val_max_queries=bad)


def test_rerank_neighbourhoods_cover_valid_and_test_heads_once(dm):
    a = dm.rerank_neighbourhoods(2, "cpu")
    assert dm.rerank_neighbourhoods(2, torch.device("cpu")) is a  # built once, shared by every stage
    assert dm.rerank_neighbourhoods(1, "cpu") is not a and a.hops == 2
    kg = dm.kg
    assert a.heads.tolist() == sorted(set(torch.cat([kg.valid, kg.test])[:, [0, 2]].flatten().tolist()))
    adj = {e: set() for e in range(kg.num_entities)}
    for h, _, t in kg.train.tolist():
        adj[h].add(t)
        adj[t].add(h)
    for h in a.heads.tolist():  # two hops by hand: the head, its neighbours and theirs
        near = {h} | adj[h]
        assert a.members(h) == sorted(near | {x for n in adj[h] for x in adj[n]})


def test_connect_reuses_cache():
    d = make_dm()
    tok = make_tokenizer()
    d.connect(tok)
    first = d.tokens
    assert isinstance(first, TokenCache)
    d.connect(tok)
    assert d.tokens is first
    d.connect(make_tokenizer())  # another object, same vocabulary
    assert d.tokens is first
    from transformers import BertTokenizer

    vocab = tiny_vocab()
    vocab["zebra"] = len(vocab)
    d.connect(BertTokenizer(vocab=vocab, do_lower_case=True))
    assert d.tokens is not first
    d.connect(tok)
    assert d.tokens is first  # the earlier cache is kept


def test_batch_size_larger_than_train_examples():
    d = make_dm(batch_size=10_000, tokenizer=make_tokenizer())
    with pytest.raises(ValueError, match=r"data\.batch_size=10000"):
        d.train_dataloader()


def test_loaders_before_connect_raise():
    d = make_dm()
    for name in ("train_dataloader", "val_dataloader", "test_dataloader", "entity_dataloader"):
        with pytest.raises(RuntimeError, match=r"connect\(tokenizer\)"):
            getattr(d, name)()
    with pytest.raises(RuntimeError, match=r"connect\(tokenizer\)"):
        d.query_dataloader("valid")


def test_given_kg_is_used_without_loading():
    kg = synthetic_kg(12, 2, 60, seed=5)
    d = KGDataModule(source="does-not-exist", kg=kg, batch_size=4)
    assert d.kg is kg
    assert d.known_train is d.known_train  # built once


def write_kgbert_with_unknown(d):
    d.mkdir()
    (d / "entity2text.txt").write_text("a\tred thing\nb\tblue thing\nc\n", encoding="utf-8")
    (d / "relation2text.txt").write_text("r\tpart of\n", encoding="utf-8")
    (d / "train.tsv").write_text("a\tr\tb\nb\tr\tc\na\tr\tb\n", encoding="utf-8")
    (d / "dev.tsv").write_text("a\tr\tc\nq\tr\ta\n", encoding="utf-8")
    (d / "test.tsv").write_text("c\tr\ta\n", encoding="utf-8")
    return d


def test_drop_unknown_option(tmp_path):
    d = write_kgbert_with_unknown(tmp_path / "kg")
    with pytest.warns(DataWarning), pytest.raises(DataFormatError) as err:  # train.tsv was read (and warned on)
        KGDataModule(str(d)).kg
    assert str(err.value) == (f"{d / 'dev.tsv'}:2: unknown head id 'q' (not in the entity/relation files); "
                              "set data.drop_unknown=true to skip such triples")
    dm = KGDataModule(str(d), drop_unknown=True, batch_size=2)
    with pytest.warns(DataWarning) as record:
        kg = dm.kg
    assert [str(w.message) for w in record] == [
        f"{d / 'entity2text.txt'}:3: 1 of 3 entities have no text (no line or an empty one in entity2text.txt); "
        "their ids are used as names, e.g. 'c' (an empty text)",
        f"{d / 'train.tsv'}:3: 1 duplicate triple removed (the first occurrence is kept), first at line 3: "
        "a repeat of line 1",
        f"{d / 'dev.tsv'}:2: 1 triple skipped: unknown entity/relation ids (data.drop_unknown=true), first at "
        "line 2: unknown head id 'q' (not in the entity/relation files)",
    ]
    assert kg.notes == {"entities_without_text": 1, "train.duplicates": 1, "valid.unknown_dropped": 1}
    assert kg.train.tolist() == [[0, 0, 1], [1, 0, 2]] and kg.valid.tolist() == [[0, 0, 2]]
    assert kg.entity_names == ["red thing", "blue thing", "c"]
    assert dm.kg is kg  # loaded once: the warnings are not repeated


def test_drop_overlap_option(tmp_path):
    """dev.tsv line 2 is train.tsv's line 1: kept with a warning, dropped with drop_overlap (also through
    build_datamodule's data.drop_overlap), counted in the notes."""
    d = tmp_path / "kg"
    d.mkdir()
    (d / "entity2text.txt").write_text("a\tred thing\nb\tblue thing\nc\tgreen thing\n", encoding="utf-8")
    (d / "relation2text.txt").write_text("r\tpart of\n", encoding="utf-8")
    (d / "train.tsv").write_text("a\tr\tb\nb\tr\tc\n", encoding="utf-8")
    (d / "dev.tsv").write_text("c\tr\ta\na\tr\tb\n", encoding="utf-8")
    (d / "test.tsv").write_text("b\tr\ta\n", encoding="utf-8")
    with pytest.warns(DataWarning, match=r"dev\.tsv:2: 1 valid triple also occurs in the train split.*kept"):
        assert KGDataModule(str(d)).kg.valid.tolist() == [[2, 0, 0], [0, 0, 1]]
    from kgc_kd.chain.driver import build_datamodule
    from kgc_kd.config import load_config

    for dm in (KGDataModule(str(d), drop_overlap=True),
               build_datamodule(load_config([f"data.source={d}", "data.drop_overlap=true", f"run.root={tmp_path}"]))):
        with pytest.warns(DataWarning, match=r"dev\.tsv:2: 1 valid triple also occurs .* dropped"):
            kg = dm.kg
        assert kg.valid.tolist() == [[2, 0, 0]] and kg.notes == {"valid.overlap_dropped": 1}


def test_link_graph_option_reaches_the_loaders():
    plain = make_dm(tokenizer=make_tokenizer())
    linked = make_dm(link_graph=True, tokenizer=make_tokenizer())
    assert plain.link_graph is False and plain.tokens.link is None
    assert linked.tokens.link is not None and linked.tokens.link.graph.num_entities == linked.kg.num_entities
    e = torch.arange(linked.kg.num_entities)
    assert not torch.equal(linked.tokens.text_lengths(e), plain.tokens.text_lengths(e))  # names were appended
    # the same triples in the same order (no shuffle), the inputs now as the link-graph cache builds them
    plain.shuffle = linked.shuffle = False
    batch = next(iter(linked.train_dataloader()))
    h, r, t = batch["triples"].unbind(1)
    assert torch.equal(batch["triples"], next(iter(plain.train_dataloader()))["triples"])
    want = linked.tokens.hr_batch(h, r, t)
    assert all(torch.equal(batch["hr"][k], want[k]) for k in want)
    entities, queries = linked.val_dataloader()
    first = next(iter(entities))
    ids = first["entity_ids"]
    assert all(torch.equal(first["entity"][k], v) for k, v in linked.tokens.entity_batch(ids).items())
    q = next(iter(queries))
    want = linked.tokens.hr_batch(q["triples"][:, 0], q["triples"][:, 1])  # evaluation: no exclusion
    assert all(torch.equal(q["hr"][k], want[k]) for k in want)


def test_build_datamodule_passes_link_graph_and_the_token_cache(tmp_path):
    from kgc_kd.chain.driver import build_datamodule
    from kgc_kd.config import load_config

    for value in (False, True):
        cfg = load_config(["data.source=synthetic", f"data.link_graph={str(value).lower()}", f"run.root={tmp_path}"])
        dm = build_datamodule(cfg, make_tokenizer())
        assert dm.link_graph is value and (dm.tokens.link is not None) is value
        assert dm.token_cache_dir == tmp_path / "token-cache" and dm.tokens.cache_path.parent == dm.token_cache_dir
    assert len([p for p in (tmp_path / "token-cache").iterdir() if not p.name.startswith(".")]) == 1  # one entry


def test_token_cache_dir_maps_one_entry_for_every_datamodule(tmp_path):
    a = make_dm(token_cache_dir=tmp_path, tokenizer=make_tokenizer())
    b = make_dm(token_cache_dir=tmp_path, tokenizer=make_tokenizer())  # a later stage, rank or run
    memory = make_dm(tokenizer=make_tokenizer())
    assert memory.tokens.cache_path is None and a.tokens.cache_path == b.tokens.cache_path
    assert a.tokens.cache_path.parent == tmp_path and a.tokens == b.tokens == memory.tokens
    a.shuffle = memory.shuffle = False
    got, want = next(iter(a.train_dataloader())), next(iter(memory.train_dataloader()))
    assert all(torch.equal(got["hr"][k], want["hr"][k]) for k in want["hr"])


def test_workers_map_the_token_table_instead_of_copying_it(tmp_path):
    import pickle

    d = make_dm(token_cache_dir=tmp_path, tokenizer=make_tokenizer(), num_workers=1)
    memory = make_dm(tokenizer=make_tokenizer()).tokens
    tables = sum(getattr(memory, k).numel() * 4 for k in TABLES)
    # what a spawned worker receives: the entry's path instead of the tables (the collate function holds them)
    assert len(pickle.dumps(memory)) - len(pickle.dumps(d.tokens)) > tables - 200
    mapped = str(d.tokens.cache_path / "entity_table.npy")
    before = open("/proc/self/maps").read().count(mapped)
    copy = pickle.loads(pickle.dumps(d.train_dataloader().collate_fn)).tokens
    assert open("/proc/self/maps").read().count(mapped) > before  # the copy maps the file again
    assert copy == d.tokens == memory and copy.cache_path == d.tokens.cache_path
    d.shuffle = False
    batches = list(d.train_dataloader())  # a forked worker (it shares the mapping): the batches of this process
    d.num_workers = 0
    assert len(batches) == len(d.train_dataloader()) > 1
    assert all(torch.equal(x["hr"]["input_ids"], y["hr"]["input_ids"]) for x, y in zip(batches, d.train_dataloader()))


# ---- loader workers and pinned memory: resolved once from the device (resolve_loader) ----------------------------
def test_resolve_loader_auto_follows_the_device(monkeypatch):
    from kgc_kd.data import datamodule as dmod

    monkeypatch.setattr(dmod, "cpu_cores", lambda: 16)
    monkeypatch.setattr(dmod, "uses_cuda", lambda acc: False)
    cpu = dmod.resolve_loader(None, None, "auto")
    assert (cpu.num_workers, cpu.pin_memory) == (0, False) and "no CUDA device" in cpu.why
    monkeypatch.setattr(dmod, "uses_cuda", lambda acc: acc in ("auto", "gpu", "cuda"))
    gpu = dmod.resolve_loader(None, None, "gpu")
    assert (gpu.num_workers, gpu.pin_memory) == (4, True) and "CUDA run" in gpu.why
    assert dmod.resolve_loader(None, None, "cpu").num_workers == 0  # trainer.accelerator=cpu on a GPU machine
    monkeypatch.setattr(dmod, "cpu_cores", lambda: 2)
    assert dmod.resolve_loader(None, None, "auto").num_workers == 2  # min(4, cores)
    # an explicit value always wins, either way
    assert dmod.resolve_loader(0, False, "gpu") == dmod.LoaderSettings(
        0, False, "num_workers set by data.num_workers; pin_memory set by data.pin_memory")
    monkeypatch.setattr(dmod, "uses_cuda", lambda acc: False)
    assert (dmod.resolve_loader(2, True, "auto").num_workers, dmod.resolve_loader(2, True, "auto").pin_memory) == (2, True)


def test_the_chain_resolves_the_loader_once_and_the_loaders_use_it(monkeypatch):
    from kgc_kd.chain.driver import build_datamodule
    from kgc_kd.config import load_config
    from kgc_kd.data import datamodule as dmod

    cfg = load_config(["data.source=synthetic", "data.batch_size=8", "trainer.accelerator=cpu"])
    d = build_datamodule(cfg)
    assert (d.num_workers, d.pin_memory) == (0, False)
    assert d.loader_settings.as_dict() == {"num_workers": 0, "pin_memory": False,
                                           "reason": "num_workers unset: no CUDA device; pin_memory unset: no CUDA device"}
    monkeypatch.setattr(dmod, "uses_cuda", lambda acc: True)  # what a CUDA run resolves
    monkeypatch.setattr(dmod, "cpu_cores", lambda: 8)
    d = build_datamodule(cfg)
    assert (d.num_workers, d.pin_memory) == (4, True)
    d.connect(make_tokenizer())
    for loader in (d.train_dataloader(), d.entity_dataloader(), d.query_dataloader("valid")):
        assert loader.num_workers == 4 and loader.pin_memory is True and loader.persistent_workers is True
