"""kgc_kd.chain.store.ChainStore alone (no Lightning): the run directory's layout, the lock, the state file, where
exports go (what they hold: test_export.py). The teacher handed from one stage to the next is the driver's
(test_driver.py)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from transformers import AutoTokenizer

import kgc_kd.chain.export as export_module
from conftest import make_tiny_bert, make_tokenizer
from kgc_kd.chain.store import ChainStore
from kgc_kd.data.synthetic import synthetic_kg
from kgc_kd.eval import RankingOutput, Ranks
from kgc_kd.models.biencoder import BiEncoder

KG = synthetic_kg(num_entities=12, num_relations=2, num_triples=40)
KEYS = {"teacher": "k0", "s": "k1"}


def _net(seed: int = 0) -> BiEncoder:
    return BiEncoder(make_tiny_bert(num_layers=1, seed=seed))


def _export(store: ChainStore, name: str, net: BiEncoder | None = None) -> None:
    store.export(name, net if net is not None else _net(), KG, max_length=24, link_graph=False)


def test_the_layout_of_a_run_directory(tmp_path):
    store = ChainStore(tmp_path / "run")
    assert store.stage_dir("pmd4") == tmp_path / "run" / "stages" / "pmd4"
    assert store.export_dir("pmd4") == tmp_path / "run" / "stages" / "pmd4" / "export"
    assert store.state_path == tmp_path / "run" / "chain_state.json"
    assert store.rows() == [] and store.untrained_test is None
    assert not store.state_path.exists()  # nothing is written before a stage is recorded


def test_a_recorded_stage_is_read_back_by_a_new_store(tmp_path):
    store = ChainStore(tmp_path, make_tokenizer())
    store.set_untrained({"mrr": 0.01}, 1.5)
    _export(store, "teacher")
    row = {"name": "teacher", "kind": "teacher", "test": {"mrr": 0.5}}
    store.record("teacher", row)
    # the file format existing run directories have: these keys, this content
    assert json.loads((tmp_path / "chain_state.json").read_text()) == {
        "stages": {"teacher": row}, "order": ["teacher"], "untrained_test": {"mrr": 0.01}, "untrained_eval_s": 1.5}
    again = ChainStore(tmp_path)
    assert again.is_done("teacher") and not again.is_done("pmd6")
    assert again.rows() == [row]
    assert (again.untrained_test, again.untrained_eval_s) == ({"mrr": 0.01}, 1.5)


def test_a_state_file_written_before_the_store_existed_still_resumes(tmp_path):
    rows = {"teacher": {"name": "teacher", "test": {"mrr": 0.7}}, "pmd6": {"name": "pmd6", "test": {"mrr": 0.8}}}
    (tmp_path / "chain_state.json").write_text(json.dumps(
        {"stages": rows, "untrained_test": None, "untrained_eval_s": 0.0, "order": ["teacher", "pmd6"]}))
    store = ChainStore(tmp_path)
    assert store.rows() == [rows["teacher"], rows["pmd6"]]
    assert store.untrained_test is None and store.untrained_eval_s == 0.0


def test_is_done_needs_the_row_and_the_export(tmp_path):
    store = ChainStore(tmp_path)
    store.record("s", {"name": "s"})
    assert not store.is_done("s")  # recorded, export missing
    _export(store, "t")
    assert not store.is_done("t")  # exported, never recorded
    _export(store, "s")
    assert store.is_done("s") and (store.export_dir("s") / "kg.json").is_file()


def test_rows_come_in_the_order_stages_finished_and_a_rerecorded_stage_keeps_its_place(tmp_path):
    store = ChainStore(tmp_path)
    for name in ("teacher", "b", "a"):
        store.record(name, {"name": name, "v": 1})
    store.record("b", {"name": "b", "v": 2})
    assert [(r["name"], r["v"]) for r in store.rows()] == [("teacher", 1), ("b", 2), ("a", 1)]
    assert [r["name"] for r in ChainStore(tmp_path).rows()] == ["teacher", "b", "a"]


def test_an_interrupted_export_is_not_a_done_stage(tmp_path, monkeypatch):
    store = ChainStore(tmp_path)
    store.record("s", {"name": "s"})

    def killed(*args, **kwargs):  # after the model directories were written, before the KG
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "save_kg", killed)
    with pytest.raises(KeyboardInterrupt):
        _export(store, "s")
    assert (store.stage_dir("s") / "export.tmp" / "biencoder.json").is_file()  # the half-written one
    assert not store.export_dir("s").exists() and not store.is_done("s")
    assert not ChainStore(tmp_path).is_done("s")
    monkeypatch.undo()
    _export(store, "s")
    assert store.is_done("s") and not (store.stage_dir("s") / "export.tmp").exists()


def test_exports_go_to_the_stage_directory_with_the_run_tokenizer(tmp_path):
    store = ChainStore(tmp_path / "run", make_tokenizer(), keys=KEYS, store_root=tmp_path)
    assert store.tokenizer is store.exporter.tokenizer
    store.open_stage("s")
    _export(store, "s")
    assert (tmp_path / "stage-store" / "s-k1" / "export" / "biencoder.json").is_file()
    tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "stages" / "s" / "export" / "query", local_files_only=True)
    assert tok.get_vocab() == make_tokenizer().get_vocab()


def test_predictions_go_next_to_the_export(tmp_path):
    store = ChainStore(tmp_path)
    ranks = Ranks(optimistic=torch.tensor([1.0, 2.0]), pessimistic=torch.tensor([1.0, 4.0]),
                  realistic=torch.tensor([1.0, 3.0]))
    ev = {"triples": torch.tensor([[0, 1, 5], [3, 0, 7]]), "output": RankingOutput(ranks, None, None), "metrics": {}}
    store.write_predictions("s", KG, ev)
    lines = (tmp_path / "stages" / "s" / "predictions_test.jsonl").read_text().splitlines()
    assert [json.loads(line)["rank"] for line in lines] == [1.0, 3.0]


def test_the_store_needs_no_lightning():
    import subprocess

    code = ("import sys, kgc_kd.chain.store; "
            "sys.exit(any(m == 'lightning' or m.startswith(('lightning.', 'pytorch_lightning')) for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---- the stage store: stages keyed by what determines them, shared by the runs under one root ----------------


def test_with_keys_stages_live_in_the_store_and_the_run_links_to_them(tmp_path):
    store = ChainStore(tmp_path / "run", keys=KEYS, store_root=tmp_path)
    assert store.stage_dir("s") == tmp_path / "stage-store" / "s-k1"
    assert not (tmp_path / "run").exists()  # reading paths creates nothing
    store.open_stage("s")
    link = tmp_path / "run" / "stages" / "s"
    assert link.is_symlink() and link.resolve() == (tmp_path / "stage-store" / "s-k1").resolve()
    store.keys["s"] = "k2"  # another key: the link moves to the other entry
    store.open_stage("s")
    assert link.resolve() == (tmp_path / "stage-store" / "s-k2").resolve()


def test_a_stage_recorded_by_one_run_is_reused_by_another_with_its_row_and_baseline(tmp_path):
    first = ChainStore(tmp_path / "a", keys=KEYS, store_root=tmp_path)
    first.set_untrained({"mrr": 0.1}, 1.5)
    first.open_stage("teacher")
    _export(first, "teacher", _net(seed=3))
    first.record("teacher", {"name": "teacher", "test": {"mrr": 0.5}})
    second = ChainStore(tmp_path / "b", keys=KEYS, store_root=tmp_path)
    assert second.is_done("teacher") and not second.is_done("s") and second.rows() == []
    assert second.adopt("teacher") is True
    assert second.rows() == [{"name": "teacher", "test": {"mrr": 0.5}, "reused_from_store": True}]
    assert second.untrained_test == {"mrr": 0.1} and second.untrained_eval_s == 1.5
    assert json.loads((tmp_path / "b" / "chain_state.json").read_text())["order"] == ["teacher"]
    assert (tmp_path / "b" / "stages" / "teacher" / "export" / "biencoder.json").is_file()  # through the link
    assert first.adopt("teacher") is False  # its own stage: recorded here, not taken from the store
    other = ChainStore(tmp_path / "c", keys={"teacher": "another"}, store_root=tmp_path)
    assert not other.is_done("teacher")  # another key is another stage


def test_a_run_directory_from_before_the_store_keeps_its_own_stage_directories(tmp_path):
    old = ChainStore(tmp_path / "run")
    _export(old, "teacher")
    old.record("teacher", {"name": "teacher"})
    store = ChainStore(tmp_path / "run", keys=KEYS, store_root=tmp_path)
    assert store.stage_dir("teacher") == tmp_path / "run" / "stages" / "teacher" and store.is_done("teacher")


def test_a_claimed_stage_is_locked_against_other_processes_until_released(tmp_path):
    import subprocess

    store = ChainStore(tmp_path / "run", keys=KEYS, store_root=tmp_path)
    lock = tmp_path / "stage-store" / "s-k1.lock"
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a')\n"
             "try: fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError: sys.exit(3)")
    with store.claim("s"):
        assert subprocess.run([sys.executable, "-c", probe, str(lock)]).returncode == 3
    assert subprocess.run([sys.executable, "-c", probe, str(lock)]).returncode == 0
    with ChainStore(tmp_path / "run", writes=False, keys=KEYS, store_root=tmp_path).claim("s", lock=False):
        assert subprocess.run([sys.executable, "-c", probe, str(lock)]).returncode == 0  # a non-zero rank


def test_adopt_joins_a_stage_once(tmp_path):
    first = ChainStore(tmp_path / "a", keys=KEYS, store_root=tmp_path)
    first.open_stage("teacher")
    _export(first, "teacher", _net(seed=3))
    first.record("teacher", {"name": "teacher"})
    second = ChainStore(tmp_path / "b", keys=KEYS, store_root=tmp_path)
    assert second.adopt("teacher") is True
    assert second.rows() == [{"name": "teacher", "reused_from_store": True}]
    assert (tmp_path / "b" / "stages" / "teacher").is_symlink()
    assert second.adopt("teacher") is False  # adopted already: now this run's row
    assert second.rows() == [{"name": "teacher", "reused_from_store": True}]


# ---- the test split a row's metrics are on: not in the key, recorded with every row ------------------------------
SPLIT1, SPLIT2 = {"sha256": "t1", "triples": len(KG.test)}, {"sha256": "t2", "triples": 1}


def _kg_with_test(test) -> "KG":
    from kgc_kd.data.kg import KG as KGClass

    return KGClass(name=KG.name, entity_ids=KG.entity_ids, entity_names=KG.entity_names,
                   entity_descs=KG.entity_descs, relation_ids=KG.relation_ids, relation_texts=KG.relation_texts,
                   train=KG.train, valid=KG.valid, test=test, source=KG.source)


def test_every_row_records_its_test_split_and_another_split_is_not_current(tmp_path):
    first = ChainStore(tmp_path / "a", keys=KEYS, store_root=tmp_path, test_data=SPLIT1)
    first.open_stage("teacher")
    _export(first, "teacher")
    first.record("teacher", {"name": "teacher", "test": {"mrr": 0.5}})
    assert first.row("teacher")["test_data"] == SPLIT1 and first.test_is_current("teacher")
    entry = json.loads((tmp_path / "stage-store" / "teacher-k0" / "stage.json").read_text())
    assert entry["row"] == {"name": "teacher", "test": {"mrr": 0.5}, "test_data": SPLIT1}
    other = ChainStore(tmp_path / "b", keys=KEYS, store_root=tmp_path, test_data=SPLIT2)
    assert other.is_done("teacher") and other.adopt("teacher")  # the same key: the same trained stage
    assert not other.test_is_current("teacher")  # ... tested on another split
    assert ChainStore(tmp_path / "c", keys=KEYS, store_root=tmp_path, test_data=SPLIT1).adopt("teacher")
    assert ChainStore(tmp_path / "c", keys=KEYS, store_root=tmp_path, test_data=SPLIT1).test_is_current("teacher")
    old_row = ChainStore(tmp_path / "d", test_data=SPLIT1)
    old_row._adopt("teacher", {"name": "teacher", "test": {"mrr": 0.5}})  # a row from before test_data: not current
    assert not old_row.test_is_current("teacher")


def test_retested_records_new_metrics_predictions_and_the_exports_kg(tmp_path):
    from kgc_kd.data.kg_export import load_kg_export

    first = ChainStore(tmp_path / "a", keys=KEYS, store_root=tmp_path, test_data=SPLIT1)
    first.set_untrained({"mrr": 0.01}, 1.0)
    for name in ("teacher", "s"):  # s's export hard-links the teacher's kg/ files (one KG object)
        first.open_stage(name)
        _export(first, name)
        first.record(name, {"name": name, "test": {"mrr": 0.5}, "steps": 7})
    second = ChainStore(tmp_path / "b", keys=KEYS, store_root=tmp_path, test_data=SPLIT2)
    second.adopt("teacher")
    second.set_untrained({"mrr": 0.02}, 2.0)
    cut = _kg_with_test(KG.test[:1])
    ranks = Ranks(optimistic=torch.tensor([1.0, 2.0]), pessimistic=torch.tensor([1.0, 2.0]),
                  realistic=torch.tensor([1.0, 2.0]))
    ev = {"triples": cut.with_inverse(cut.test), "output": RankingOutput(ranks, None, None), "metrics": {}}
    row = second.retested("teacher", {"mrr": 0.9}, cut, ev, max_length=24, link_graph=False)
    assert row == {"name": "teacher", "test": {"mrr": 0.9}, "steps": 7, "reused_from_store": True,
                   "retested_from": "t1", "test_data": SPLIT2}
    assert second.test_is_current("teacher") and second.rows() == [row]
    entry = json.loads((tmp_path / "stage-store" / "teacher-k0" / "stage.json").read_text())
    assert entry["row"] == {k: v for k, v in row.items() if k != "reused_from_store"}
    assert entry["untrained_test"] == {"mrr": 0.02}
    exported, meta = load_kg_export(tmp_path / "stage-store" / "teacher-k0" / "export")
    assert torch.equal(exported.test, KG.test[:1]) and torch.equal(exported.train, KG.train)
    assert meta == {"max_length": 24, "link_graph": False}
    lines = (tmp_path / "stage-store" / "teacher-k0" / "predictions_test.jsonl").read_text().splitlines()
    assert len(lines) == 2  # one test triple, both directions
    s_kg, _ = load_kg_export(tmp_path / "stage-store" / "s-k1" / "export")
    assert torch.equal(s_kg.test, KG.test)  # a file linked into another export is replaced, not rewritten
    assert ChainStore(tmp_path / "c", keys=KEYS, store_root=tmp_path, test_data=SPLIT2).adopt("teacher")


def test_a_row_recorded_under_another_key_is_not_this_stages(tmp_path):
    """The run directory's own row counts only under the key it was recorded with: after the training data
    changed (another key), an export under the new key without its record is no finished stage."""
    ChainStore(tmp_path / "run", keys=KEYS, store_root=tmp_path).record("teacher", {"name": "teacher"})
    store = ChainStore(tmp_path / "run", keys={"teacher": "k9"}, store_root=tmp_path)
    store.open_stage("teacher")
    _export(store, "teacher")  # killed between the export and its record
    assert not store.is_done("teacher")
    store.record("teacher", {"name": "teacher", "steps": 2})
    assert store.is_done("teacher") and store.adopt("teacher") is False
    assert json.loads((tmp_path / "run" / "chain_state.json").read_text())["keys"] == {"teacher": "k9"}
