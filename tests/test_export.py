"""kgc_kd.chain.export.StageExporter alone (no Lightning, no stage store): an export directory written whole or
not at all, loading back with the same weights, the KG and the tokenizer, its token table linked, its entity
vectors kept under the key predict computes, and the stages of one KG sharing its files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import kgc_kd.chain.export as export_module
from conftest import make_tiny_bert, make_tokenizer
from kgc_kd.chain.export import StageExporter
from kgc_kd.data.batching import EntityCollator
from kgc_kd.data.kg_export import load_kg_export
from kgc_kd.data.synthetic import synthetic_kg
from kgc_kd.data.tokens import TokenCache
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.vocab import used_token_ids
from kgc_kd.serve.vectors import read_entity_vectors, vectors_key

KG = synthetic_kg(num_entities=12, num_relations=2, num_triples=40)


def _net(seed: int = 0) -> BiEncoder:
    return BiEncoder(make_tiny_bert(num_layers=1, seed=seed))


def _export(exporter: StageExporter, directory, net: BiEncoder | None = None) -> None:
    exporter.export(directory, net if net is not None else _net(), KG, max_length=24, link_graph=False)


def _files(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_an_interrupted_export_is_never_mistaken_for_one(tmp_path, monkeypatch):
    exporter, final = StageExporter(), tmp_path / "s" / "export"

    def killed(*args, **kwargs):  # after the model directories were written, before the KG
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "save_kg", killed)
    with pytest.raises(KeyboardInterrupt):
        _export(exporter, final)
    assert (tmp_path / "s" / "export.tmp" / "biencoder.json").is_file()  # the half-written one
    assert not final.exists()

    monkeypatch.undo()
    _export(exporter, final, _net(seed=1))
    assert (final / "biencoder.json").is_file() and not (tmp_path / "s" / "export.tmp").exists()
    whole = _files(final)
    monkeypatch.setattr(export_module, "save_kg", killed)
    with pytest.raises(KeyboardInterrupt):
        _export(exporter, final, _net(seed=2))  # a second export of the stage, killed: the first stays whole
    assert _files(final) == whole


def test_a_second_export_replaces_the_first_and_leaves_nothing_beside_it(tmp_path):
    exporter, final = StageExporter(), tmp_path / "s" / "export"
    _export(exporter, final, _net(seed=1))
    _export(exporter, final, _net(seed=2))
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["export"]
    loaded = BiEncoder.from_pretrained(final)
    want = _net(seed=2)
    for (k, a), (_, b) in zip(want.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_the_export_loads_back_with_the_same_weights_and_the_kg(tmp_path):
    exporter, final = StageExporter(make_tokenizer()), tmp_path / "export"
    net = _net(seed=3)
    _export(exporter, final, net)
    loaded = BiEncoder.from_pretrained(final)
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    kg, meta = load_kg_export(final)
    assert meta == {"max_length": 24, "link_graph": False}
    assert kg.entity_ids == KG.entity_ids and torch.equal(kg.train, KG.train) and torch.equal(kg.test, KG.test)
    tok = AutoTokenizer.from_pretrained(final / "query", local_files_only=True)
    assert tok.get_vocab() == make_tokenizer().get_vocab()  # the tokenizer travels with the export


def test_the_export_carries_the_token_table_as_links_to_its_cache_entry(tmp_path):
    tok = make_tokenizer()
    tokens = TokenCache.load_or_build(KG, tok, 24, cache_dir=tmp_path / "token-cache")
    exporter = StageExporter(tok)
    exporter.export(tmp_path / "s", _net(), KG, max_length=24, link_graph=False, tokens=tokens)
    entry = tmp_path / "s" / "token-cache" / tokens.cache_path.name
    files = sorted(p.name for p in tokens.cache_path.iterdir())
    assert files and sorted(p.name for p in entry.iterdir()) == files
    assert all(os.path.samefile(entry / f, tokens.cache_path / f) for f in files)  # no second copy
    # a pruned stage reads other ids than the table holds: no table in its export (predict tokenises once)
    pruned = _net()
    pruned.prune_vocabulary(used_token_ids([tokens.used_ids()], tok), len(tok))
    exporter.export(tmp_path / "p", pruned, KG, max_length=24, link_graph=False, tokens=tokens)
    assert not (tmp_path / "p" / "token-cache").exists()
    # a table kept only in memory: nothing to link
    exporter.export(tmp_path / "m", _net(), KG, max_length=24, link_graph=False, tokens=TokenCache.build(KG, tok, 24))
    assert not (tmp_path / "m" / "token-cache").exists() and (tmp_path / "m").is_dir()


def test_the_stages_of_one_kg_share_its_files(tmp_path):
    exporter = StageExporter()
    _export(exporter, tmp_path / "teacher")
    _export(exporter, tmp_path / "s")
    _export(exporter, tmp_path / "s")  # exported again: linked to the files of the export it replaces
    a, b = tmp_path / "teacher" / "kg", tmp_path / "s" / "kg"
    assert all(os.path.samefile(p, b / p.name) for p in a.iterdir())
    kg, _ = load_kg_export(tmp_path / "s")
    assert kg.entity_names == KG.entity_names and torch.equal(kg.train, KG.train)
    other = synthetic_kg(num_entities=14, num_relations=2, num_triples=40, seed=1)
    exporter.export(tmp_path / "o", _net(), other, max_length=24, link_graph=False)
    assert not os.path.samefile(a / "train.npy", tmp_path / "o" / "kg" / "train.npy")
    assert torch.equal(load_kg_export(tmp_path / "o")[0].train, other.train)


def test_a_new_exporter_writes_the_kg_afresh(tmp_path):
    _export(StageExporter(), tmp_path / "a")
    _export(StageExporter(), tmp_path / "b")  # another run: nothing to link to
    a, b = tmp_path / "a" / "kg", tmp_path / "b" / "kg"
    assert not any(os.path.samefile(p, b / p.name) for p in a.iterdir())


def test_the_exporter_needs_no_lightning():
    import subprocess
    import sys

    code = ("import sys, kgc_kd.chain.export; "
            "sys.exit(any(m == 'lightning' or m.startswith(('lightning.', 'pytorch_lightning')) for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("left", ["export.tmp", "export.old", "export"])
def test_a_link_out_of_the_root_where_the_export_goes_is_unlinked_and_its_target_survives(tmp_path, left):
    """An interrupted attempt's `export.tmp`, a replaced `export.old` or the old `export` itself, as a symbolic
    link to a directory outside the root: the export is written beside it, the link unlinked, never followed:
    nothing outside is written or removed."""
    victim = tmp_path / "victim"
    (victim / "query").mkdir(parents=True)
    (victim / "query" / "config.json").write_text("theirs")
    (victim / "biencoder.json").write_text("theirs")
    before = _files(victim)
    root = tmp_path / "root"
    final = root / "s" / "export"
    final.parent.mkdir(parents=True)
    (final.parent / left).symlink_to(victim, target_is_directory=True)
    StageExporter().export(final, _net(), KG, max_length=24, link_graph=False, root=root)
    assert _files(victim) == before
    assert sorted(p.name for p in final.parent.iterdir()) == ["export"]
    assert not final.is_symlink() and (final / "biencoder.json").read_text() != "theirs"


def test_an_export_outside_its_root_is_refused_before_anything_is_written(tmp_path):
    from kgc_kd.runtime.files import OutsideRoot

    root, outside = tmp_path / "root", tmp_path / "victim"
    (root / "stage-store").mkdir(parents=True)
    outside.mkdir()
    (root / "stage-store" / "s-k").symlink_to(outside, target_is_directory=True)  # an entry that leads out
    for final in (root / ".." / "victim" / "export", root / "stage-store" / "s-k" / "export"):
        with pytest.raises(OutsideRoot, match="lies outside its root"):
            StageExporter().export(final, _net(), KG, max_length=24, link_graph=False, root=root)
    assert list(outside.iterdir()) == []


def test_paths_relative_to_the_working_directory_export_where_they_say(tmp_path, monkeypatch):
    """`run.root=runs` (relative, as `make smoke` runs it): the export and its root are relative to the working
    directory, so the export lands at runs/stage-store/s-k/export, not under a second runs/ inside the root; a second
    export replaces it there."""
    monkeypatch.chdir(tmp_path)
    exporter = StageExporter()
    for seed in (1, 2):
        exporter.export(Path("runs/stage-store/s-k/export"), _net(seed), KG, max_length=24, link_graph=False,
                        root=Path("runs"))
        assert (tmp_path / "runs" / "stage-store" / "s-k" / "export" / "biencoder.json").is_file()
    assert sorted(p.name for p in (tmp_path / "runs").rglob("*") if p.is_dir() and p.name == "runs") == []
    assert sorted(p.name for p in (tmp_path / "runs" / "stage-store" / "s-k").iterdir()) == ["export"]


# ---- the entity vectors: encoded at export, so predict on a fresh export encodes nothing ------------------------
def _loaded_vectors(directory) -> torch.Tensor:
    """The entity vectors of the export as predict would encode them without a file: the saved model loaded back
    and its own tokenizer's token table (an independent path to the same numbers), float32."""
    kg, _ = load_kg_export(directory)
    tokens = TokenCache.build(kg, AutoTokenizer.from_pretrained(directory / "query", local_files_only=True), 24)
    net = BiEncoder.from_pretrained(directory)
    with torch.no_grad():
        return net.encode_entity(EntityCollator(tokens)(list(torch.arange(kg.num_entities)))["entity"]).float()


def test_the_export_keeps_its_entity_vectors_under_the_key_predict_computes(tmp_path):
    tok = make_tokenizer()
    tokens = TokenCache.load_or_build(KG, tok, 24, cache_dir=tmp_path / "token-cache")
    net = BiEncoder(make_tiny_bert(num_layers=1, seed=4, dropout=0.3))  # dropout: eval mode must be used
    net.train()
    final = tmp_path / "s" / "export"
    StageExporter(tok).export(final, net, KG, max_length=24, link_graph=False, tokens=tokens)
    assert net.training and all(m.training for m in net.modules())  # the training copy's mode is kept
    assert next(net.parameters()).device.type == "cpu"
    info = json.loads((final / "entity_vectors.json").read_text())
    assert info["key"] == vectors_key(final, 24, False) and info["shape"] == [KG.num_entities, 32]
    stored = np.load(final / "entity_vectors.npy", allow_pickle=False)
    assert stored.dtype == np.float16
    assert np.array_equal(stored, _loaded_vectors(final).half().numpy())
    assert read_entity_vectors(final, vectors_key(final, 24, False), (KG.num_entities, 32)) is not None


def test_vectors_are_encoded_in_fp32_under_an_outer_autocast(tmp_path):
    tok = make_tokenizer()
    tokens = TokenCache.build(KG, tok, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # where a Trainer's precision plugin might have left one
        StageExporter(tok).export(tmp_path / "e", _net(seed=5), KG, max_length=24, link_graph=False, tokens=tokens)
    stored = np.load(tmp_path / "e" / "entity_vectors.npy", allow_pickle=False)
    assert np.array_equal(stored, _loaded_vectors(tmp_path / "e").half().numpy())  # bf16 would differ by ~1e-2


def test_a_pruned_stage_keeps_the_vectors_its_pruned_tokenizer_gives(tmp_path, monkeypatch):
    """In the chain a pruned net reads the source tokenizer's ids (input_map); the export's pruned tokenizer gives
    predict the same word pieces under pruned ids: the vectors are the same, and predict encodes nothing."""
    from kgc_kd import predict

    tok = make_tokenizer()
    tokens = TokenCache.load_or_build(KG, tok, 24, cache_dir=tmp_path / "token-cache")
    pruned = _net(seed=6).eval()
    pruned.prune_vocabulary(used_token_ids([tokens.used_ids()], tok), len(tok))
    StageExporter(tok).export(tmp_path / "p", pruned, KG, max_length=24, link_graph=False, tokens=tokens)
    stored = np.load(tmp_path / "p" / "entity_vectors.npy", allow_pickle=False)
    assert np.array_equal(stored, _loaded_vectors(tmp_path / "p").half().numpy())

    def no_encoding(*args, **kwargs):
        raise AssertionError("predict encoded the entities")

    monkeypatch.setattr(predict, "encode_entities", no_encoding)
    assert torch.equal(predict.Predictor(tmp_path / "p").entity_vecs, torch.from_numpy(stored).float())


def test_no_vectors_without_the_inputs_predict_builds(tmp_path):
    tokens = TokenCache.build(KG, make_tokenizer(), 24)
    _export(StageExporter(), tmp_path / "none")  # no token table given
    StageExporter().export(tmp_path / "other", _net(), KG, max_length=20, link_graph=False, tokens=tokens)
    StageExporter().export(tmp_path / "linked", _net(), KG, max_length=24, link_graph=True, tokens=tokens)
    for name in ("none", "other", "linked"):
        assert not list((tmp_path / name).glob("entity_vectors*")), name

