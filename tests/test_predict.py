import copy
import hashlib
import io
import json
import os
import pickle
import shlex
import shutil
import warnings

import numpy as np
import pytest
import torch

from conftest import make_tiny_bert, make_tokenizer
from kgc_kd import predict
from kgc_kd.data.batching import EntityCollator, QueryCollator
from kgc_kd.data.io import DataWarning
from kgc_kd.chain.store import ChainStore
from kgc_kd.data.kg_export import save_kg
from kgc_kd.data.synthetic import synthetic_kg
from kgc_kd.data.text import entity_texts
from kgc_kd.data.tokens import TokenCache
from test_kg_export import kg_to_json_v1
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.vocab import used_token_ids


@pytest.fixture
def export(tmp_path):
    kg = synthetic_kg(20, 2, 40, seed=3)
    net = BiEncoder(make_tiny_bert(dropout=0.0)).eval()
    d = tmp_path / "run" / "stages" / "s" / "export"
    net.save_pretrained(d, make_tokenizer())
    save_kg(kg, d, max_length=24)
    (tmp_path / "run" / "chain_state.json").write_text(json.dumps({"order": ["s"], "stages": {"s": {}}}))
    return d, kg, net


class CountingTokenizer:
    """The real tokenizer, with every text it is asked to tokenise recorded."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, []

    def __call__(self, texts, *args, **kwargs):
        self.texts += [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(texts, *args, **kwargs)

    def __len__(self):
        return len(self.tokenizer)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.fixture
def counted(monkeypatch):
    """Every tokenizer predict loads is counted: the list of their CountingTokenizers."""
    from transformers import AutoTokenizer

    made, load = [], AutoTokenizer.from_pretrained

    def from_pretrained(*args, **kwargs):
        made.append(CountingTokenizer(load(*args, **kwargs)))
        return made[-1]

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", from_pretrained)
    return made


def _ask(d, kg, h, r, k=5) -> list[str]:
    (result,) = predict.main([str(d), "--head", kg.entity_ids[h], "--relation", kg.relation_texts[r], "--top-k", str(k)])
    return [p["id"] for p in result["predictions"]]


def _expected(kg, net, h, r, k):
    """Brute force: the query against every entity vector as the export keeps it (float16), in float32."""
    tokens = TokenCache.build(kg, make_tokenizer(), 24)
    with torch.no_grad():
        e = net.encode_entity(EntityCollator(tokens)(list(torch.arange(kg.num_entities)))["entity"])
        q = net.encode_query(QueryCollator(tokens)([torch.tensor([h, r, 0])])["hr"])
    return (q @ e.half().float().t())[0].topk(k)


def test_top_k_equals_brute_force_and_marks_known_answers(export, capsys):
    d, kg, net = export
    h, r, t = kg.train[0].tolist()
    (result,) = predict.main([str(d), "--head", kg.entity_names[h], "--relation", kg.relation_texts[r],
                              "--top-k", "5"])
    exp = _expected(kg, net, h, r, 5)
    assert [p["id"] for p in result["predictions"]] == [kg.entity_ids[i] for i in exp.indices.tolist()]
    assert [p["score"] for p in result["predictions"]] == pytest.approx(exp.values.tolist(), abs=1e-4)
    for p in result["predictions"]:
        assert p["known"] == (p["id"] == kg.entity_ids[t])
    assert "(" + kg.entity_ids[h] in capsys.readouterr().out


def test_an_export_without_vectors_encodes_them_once_and_maps_them_after(export):
    d, kg, net = export
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        predict.main([str(d), "--head", kg.entity_ids[0], "--relation", kg.relation_texts[0]])
    assert [str(w.message) for w in record if issubclass(w.category, DataWarning)] == [
        f"{d} has no entity vectors; encoding 20 entities once, kept in {d / 'entity_vectors.npy'}"]
    stamp = (d / "entity_vectors.npy").stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        pred = predict.Predictor(d)
    assert (d / "entity_vectors.npy").stat().st_mtime_ns == stamp
    assert isinstance(pred.vectors, np.memmap) and pred.vectors.dtype == np.float16
    assert pred.entity_vecs.dtype == torch.float32  # exact search: converted once, in memory
    assert torch.equal(pred.entity_vecs, _fresh_vectors(kg, net).half().float())


def test_run_directory_and_query_file(export, tmp_path):
    d, kg, _ = export
    queries = tmp_path / "q.tsv"
    queries.write_text(f"{kg.entity_ids[0]}\t{kg.relation_texts[0]}\n{kg.entity_ids[2]}\tinverse {kg.relation_texts[1]}\n")
    out = tmp_path / "out.jsonl"
    results = predict.main([str(tmp_path / "run"), "--queries", str(queries), "--output", str(out), "--top-k", "3"])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines == results and len(lines) == 2 and lines[1]["relation"].startswith("inverse ")
    assert all(len(x["predictions"]) == 3 for x in lines)


def test_bad_input_is_a_clear_error(export, tmp_path, capsys):
    d, kg, _ = export
    with pytest.raises(SystemExit) as exc:
        predict.main([str(d), "--head", "no such entity", "--relation", kg.relation_texts[0]])
    assert exc.value.code == 2 and "no such entity" in capsys.readouterr().err
    bad = tmp_path / "bad.tsv"
    bad.write_text("only-one-field\n")
    with pytest.raises(SystemExit):
        predict.main([str(d), "--queries", str(bad)])
    assert "bad.tsv:1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict.main([str(tmp_path), "--head", "x", "--relation", "y"])


# ---- the command line ---------------------------------------------------------------------------------------
def test_help_shows_its_options_and_docs_and_takes_no_items(capsys):
    from test_cli import check_help

    text = check_help(capsys, predict.main, "-h", "python -m kgc_kd.predict ",
                      ("RUN_OR_EXPORT", "--head", "--relation", "--queries", "--top-k", "docs/predict.md",
                       "--backend {torch,onnx-fp32,onnx-int8}", "--index",
                       "  2  bad input", "No configuration items"), groups=False)
    assert "143" not in text


def test_unknown_option_or_missing_query_exits_2(export, capsys):
    d, kg, _ = export
    for argv, named in (([str(d), "--head", "x", "--relation", "y", "--bogus"], "unrecognized arguments: --bogus"),
                        ([str(d), "--top-k", "3"], "give --head and --relation, or --queries FILE")):
        with pytest.raises(SystemExit) as exc:
            predict.main(argv)
        assert exc.value.code == 2 and f"error: {named}" in capsys.readouterr().err


# ---- start-up from the export's token table ------------------------------------------------------------------
def test_an_export_with_a_token_cache_never_tokenises_and_answers_as_before(tmp_path, counted):
    kg = synthetic_kg(20, 2, 40, seed=3)
    net = BiEncoder(make_tiny_bert(dropout=0.0)).eval()
    tokens = TokenCache.load_or_build(kg, make_tokenizer(), 24, cache_dir=tmp_path / "run-root" / "token-cache")
    store = ChainStore(tmp_path / "run", make_tokenizer())
    store.export("s", net, kg, max_length=24, link_graph=False, tokens=tokens)
    d = store.export_dir("s")
    assert (d / "token-cache" / tokens.cache_path.name / "meta.json").is_file()
    h, r, _ = kg.train[0].tolist()
    got = _ask(d, kg, h, r)
    assert [tok.texts for tok in counted] == [[]]  # not one text tokenised: the table was mapped
    assert got == [kg.entity_ids[i] for i in _expected(kg, net, h, r, 5).indices.tolist()]


def test_an_old_export_is_tokenised_once_then_its_table_is_kept(tmp_path, counted):
    kg = synthetic_kg(20, 2, 40, seed=3)
    net = BiEncoder(make_tiny_bert(dropout=0.0)).eval()
    d = tmp_path / "export"
    net.save_pretrained(d, make_tokenizer())
    (d / "kg.json").write_text(json.dumps(kg_to_json_v1(kg, max_length=24)))  # an export of format 1
    h, r, _ = kg.train[1].tolist()
    want = [kg.entity_ids[i] for i in _expected(kg, net, h, r, 5).indices.tolist()]
    assert _ask(d, kg, h, r) == want
    assert set(entity_texts(kg)) <= set(counted[-1].texts)  # tokenised this once ...
    assert len(list((d / "token-cache").glob("*/meta.json"))) == 1  # ... and kept in the export
    assert _ask(d, kg, h, r) == want and counted[-1].texts == []


def test_a_pruned_stage_tokenises_with_its_own_tokenizer_once_and_answers_as_unpruned(tmp_path, counted):
    kg = synthetic_kg(20, 2, 40, seed=3)
    net = BiEncoder(make_tiny_bert(dropout=0.0)).eval()
    tok = make_tokenizer()
    tokens = TokenCache.load_or_build(kg, tok, 24, cache_dir=tmp_path / "token-cache")
    pruned = copy.deepcopy(net)
    pruned.prune_vocabulary(used_token_ids([tokens.used_ids()], tok), len(tok))
    store = ChainStore(tmp_path / "run", tok)
    store.export("p", pruned, kg, max_length=24, link_graph=False, tokens=tokens)
    d = store.export_dir("p")
    h, r, _ = kg.train[2].tolist()
    want = [kg.entity_ids[i] for i in _expected(kg, net, h, r, 5).indices.tolist()]
    assert _ask(d, kg, h, r) == want and counted[-1].texts  # tokenised with the pruned tokenizer ...
    assert _ask(d, kg, h, r) == want and counted[-1].texts == []  # ... once


# ---- the export's entity vectors: keyed by its content, checked on every read, rebuilt when unusable -----------
class Payload:
    """What a crafted array would run on unpickling: a shell command creating `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def _fresh_vectors(kg, net):
    tokens = TokenCache.build(kg, make_tokenizer(), 24)
    with torch.no_grad():
        return net.encode_entity(EntityCollator(tokens)(list(torch.arange(kg.num_entities)))["entity"]).float()


def _answers(d, kg, k=5) -> list[list]:
    """Every (head, relation) of the first training triples: ids and scores of the top k."""
    out = []
    for h, r, _ in kg.train[:4].tolist():
        (result,) = predict.main([str(d), "--head", kg.entity_ids[h], "--relation", kg.relation_texts[r],
                                  "--top-k", str(k)])
        out.append([(p["id"], p["score"]) for p in result["predictions"]])
    return out


@pytest.fixture
def export14(tmp_path):
    kg = synthetic_kg(14, 2, 30, seed=5)
    net = BiEncoder(make_tiny_bert(dropout=0.0)).eval()
    d = tmp_path / "export"
    net.save_pretrained(d, make_tokenizer())
    save_kg(kg, d, max_length=24)
    return d, kg, net


def _resign(d, **changes):
    """The sidecar rewritten to record the .npy's present bytes (only what is asked is wrong)."""
    meta = d / "entity_vectors.json"
    info = json.loads(meta.read_text())
    digest = hashlib.sha256((d / "entity_vectors.npy").read_bytes()).hexdigest()
    meta.write_text(json.dumps({**info, "sha256": digest, **changes}))


def _damage(d, how, marker):
    npy = d / "entity_vectors.npy"
    good = np.load(npy)
    if how == "zero bytes":
        npy.write_bytes(b"")
    elif how == "truncated":
        npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    elif how == "one byte flipped":
        data = bytearray(npy.read_bytes())
        data[-5] ^= 0x10
        npy.write_bytes(bytes(data))
    elif how == "three rows":  # the case of issue 28: 3 answers, score 0.0000, for a 14-entity KG
        np.save(npy, np.zeros((3, 32), np.float16))
        _resign(d, shape=[3, 32])
    elif how == "float32":
        np.save(npy, good.astype(np.float32))
        _resign(d, dtype="float32")
    elif how == "another key":
        _resign(d, key={**json.loads((d / "entity_vectors.json").read_text())["key"], "kg": "0" * 64})
    elif how == "pickled object array":
        np.save(npy, np.array([Payload(marker)] * good.size, dtype=object).reshape(good.shape), allow_pickle=True)
        _resign(d)
    else:
        raise AssertionError(how)


DAMAGES = {"zero bytes": "damaged", "truncated": "damaged", "one byte flipped": "damaged",
           "three rows": "records float16 [3, 32], expected float16 [14, 32]",
           "float32": "records float32 [14, 32], expected float16 [14, 32]",
           "another key": "stale: computed for another model/KG (kg differs)",
           "pickled object array": "Python objects"}


@pytest.mark.parametrize("how", DAMAGES)
def test_unusable_vectors_are_rebuilt_with_one_warning_and_never_run_code(export14, tmp_path, how):
    d, kg, net = export14
    want = _answers(d, kg)
    good = np.load(d / "entity_vectors.npy")
    marker = tmp_path / "payload-ran"
    _damage(d, how, marker)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pred = predict.Predictor(d)
    said = [str(w.message) for w in record if issubclass(w.category, DataWarning)]
    assert len(said) == 1 and said[0].startswith(f"{d / 'entity_vectors.npy'}: entity vectors cannot be used ("), said
    assert DAMAGES[how] in said[0] and "\n" not in said[0]
    assert not marker.exists()  # the payload never ran
    assert torch.equal(pred.entity_vecs, _fresh_vectors(kg, net).half().float())
    assert np.array_equal(np.load(d / "entity_vectors.npy"), good)  # rebuilt in place, atomically
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert _answers(d, kg) == want  # the answers of a fresh run, and the rebuilt file is read without a word


def test_weights_only_wins_over_the_environment_in_this_torch(tmp_path, monkeypatch):
    """What AtomicCheckpointIO's reads rely on, read in torch's serialization.load: an explicit weights_only=True is
    kept when TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (only an unset one is forced to False)."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path, marker = tmp_path / "x.pt", tmp_path / "payload-ran"
    torch.save({"v": Payload(marker)}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not marker.exists()


def test_vectors_are_keyed_by_content_so_a_copied_export_keeps_them(export14, tmp_path, monkeypatch):
    d, kg, _ = export14
    want = _answers(d, kg)
    copy_dir = tmp_path / "copy"
    shutil.copytree(d, copy_dir, copy_function=shutil.copy)  # new modification times, same bytes
    stamp = (copy_dir / "entity_vectors.npy").stat().st_mtime_ns
    monkeypatch.setattr(predict, "encode_entities", _no_encoding)
    assert _answers(copy_dir, kg) == want
    assert (copy_dir / "entity_vectors.npy").stat().st_mtime_ns == stamp  # read, not computed again


def _no_encoding(*args, **kwargs):
    raise AssertionError("predict encoded the entities")


@pytest.mark.parametrize("change", ["entity weights", "entity text", "training triple"])
def test_another_model_or_kg_never_reuses_the_vectors(export14, change):
    d, kg, net = export14
    _answers(d, kg)
    if change == "entity weights":  # another model saved over the export, the old file time kept
        stamp = (d / "entity" / "model.safetensors").stat()
        net = BiEncoder(make_tiny_bert(dropout=0.0, seed=7)).eval()
        net.save_pretrained(d, make_tokenizer())
        os.utime(d / "entity" / "model.safetensors", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    elif change == "entity text":
        names = d / "kg" / "entity_names.txt"
        lines = names.read_text().split("\n")
        lines[3] = "zebra " + lines[3]
        names.write_text("\n".join(lines))
        kg.entity_names[3] = lines[3]
    else:  # changes no entity text: the key changes all the same (the link graph reads the triples)
        train = np.load(d / "kg" / "train.npy")
        train[0, 2] = (train[0, 2] + 1) % kg.num_entities
        np.save(d / "kg" / "train.npy", train)
        kg.train = torch.from_numpy(train).long()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pred = predict.Predictor(d)
    said = [str(w.message) for w in record if issubclass(w.category, DataWarning)]
    part = "model" if change == "entity weights" else "kg"
    assert said == [f"{d / 'entity_vectors.npy'}: entity vectors cannot be used (stale: computed for another "
                    f"model/KG ({part} differs)); they are computed again"]
    assert torch.equal(pred.entity_vecs, _fresh_vectors(kg, net).half().float())
    key = json.loads((d / "entity_vectors.json").read_text())["key"]
    assert key == predict.vectors_key(d, 24, False)  # replaced: one file, of this export
    assert sorted(p.name for p in d.glob("entity_vectors*")) == ["entity_vectors.json", "entity_vectors.npy"]


def test_a_read_only_export_keeps_its_vectors_in_memory(export14, monkeypatch):
    """Tests run as root, for whom every directory is writable: the permission check itself is switched off."""
    d, kg, net = export14
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pred = predict.Predictor(d)
    said = [str(w.message) for w in record if issubclass(w.category, DataWarning)]
    assert said == [f"{d} has no entity vectors; encoding 14 entities once, kept in memory ({d} is read-only)"]
    assert not list(d.glob("entity_vectors*")) and not list(d.glob(".*"))
    fp16 = _fresh_vectors(kg, net).half()
    assert torch.equal(pred.entity_vecs, fp16.float())
    assert pred.vectors_sha256 == hashlib.sha256(_npy_bytes(fp16.numpy())).hexdigest()  # as its file would be


def _npy_bytes(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


# ---- a fresh export: predict encodes nothing ----------------------------------------------------------------
def test_a_fresh_export_starts_without_encoding_an_entity(tmp_path, monkeypatch):
    kg = synthetic_kg(20, 2, 40, seed=3)
    net = BiEncoder(make_tiny_bert(dropout=0.0)).eval()
    tokens = TokenCache.load_or_build(kg, make_tokenizer(), 24, cache_dir=tmp_path / "token-cache")
    store = ChainStore(tmp_path / "run", make_tokenizer())
    store.export("s", net, kg, max_length=24, link_graph=False, tokens=tokens)
    d = store.export_dir("s")
    monkeypatch.setattr(predict, "encode_entities", _no_encoding)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # no "has no entity vectors", no stale key
        pred = predict.Predictor(d)
    assert json.loads((d / "entity_vectors.json").read_text())["key"] == predict.vectors_key(d, 24, False)
    assert torch.equal(pred.entity_vecs, _fresh_vectors(kg, net).half().float())
    h, r, _ = kg.train[0].tolist()
    assert _ask(d, kg, h, r) == [kg.entity_ids[i] for i in _expected(kg, net, h, r, 5).indices.tolist()]


# ---- --backend onnx-*: the ONNX towers, exported once, ranking against their own entity vectors ----------------
@pytest.fixture(scope="module")
def chain_made(tmp_path_factory):
    """A chain's export of a 20-entity KG (its entity vectors written by the exporter); each test works on a copy."""
    tmp = tmp_path_factory.mktemp("chain")
    kg = synthetic_kg(20, 2, 40, seed=3)
    net = BiEncoder(make_tiny_bert(dropout=0.0)).eval()
    tokens = TokenCache.load_or_build(kg, make_tokenizer(), 24, cache_dir=tmp / "token-cache")
    store = ChainStore(tmp / "run", make_tokenizer())
    store.export("s", net, kg, max_length=24, link_graph=False, tokens=tokens)
    return store.export_dir("s"), kg, net


@pytest.fixture(scope="module")
def onnx_made(chain_made, tmp_path_factory):
    """`chain_made`'s export with its ONNX towers (fp32 and int8), exported once for the module (the exporter
    takes tens of seconds)."""
    for module in ("onnxruntime", "onnxscript"):
        pytest.importorskip(module, reason="the serve extra is not installed: pip install 'kgc-kd[serve]'")
    from kgc_kd.serve.onnx_export import export_onnx

    d, kg, net = chain_made
    d = _copy(d, tmp_path_factory.mktemp("onnx") / "export")
    export_onnx(d, log=lambda line: None)
    return d, kg, net


def _copy(d, to, onnx=True):
    """The export copied (same bytes and sizes: its ONNX towers stay current), with or without onnx/."""
    shutil.copytree(d, to, copy_function=shutil.copy, ignore=None if onnx else shutil.ignore_patterns("onnx"))
    return to


def _said(record):
    return [str(w.message) for w in record if issubclass(w.category, DataWarning)]


def _onnx_brute_force(d, kg, variant, h, r, k):
    """The variant's query tower against the variant's stored entity vectors, scored here in float32."""
    from kgc_kd.serve.onnx_runtime import OnnxBiEncoder

    tokens = TokenCache.build(kg, make_tokenizer(), 24)
    q = OnnxBiEncoder.open(d, variant).encode_query(QueryCollator(tokens)([torch.tensor([h, r, 0])])["hr"])
    stem = f"entity_vectors-{variant}"
    e = torch.from_numpy(np.load(d / f"{stem}.npy", allow_pickle=False).astype(np.float32))
    return (q @ e.t())[0].topk(k)


def test_onnx_backends_rank_against_their_own_vectors(onnx_made, tmp_path, monkeypatch, capsys):
    src, kg, net = onnx_made
    d = _copy(src, tmp_path / "export")
    torch_file = (d / "entity_vectors.npy").read_bytes()
    h, r, _ = kg.train[0].tolist()
    argv = [str(d), "--head", kg.entity_ids[h], "--relation", kg.relation_texts[r], "--top-k", "5"]
    for variant in ("onnx-fp32", "onnx-int8"):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            (first,) = predict.main(argv + ["--backend", variant])
        npy = d / f"entity_vectors-{variant}.npy"
        assert _said(record) == [f"{d} has no {variant} entity vectors; encoding 20 entities once, kept in {npy}"]
        assert "ONNX towers" not in capsys.readouterr().err  # they were there and current
        info = json.loads((d / f"entity_vectors-{variant}.json").read_text())
        assert info["key"] == predict.vectors_key(d, 24, False, variant)
        want = _onnx_brute_force(d, kg, variant, h, r, 5)
        assert [p["id"] for p in first["predictions"]] == [kg.entity_ids[i] for i in want.indices.tolist()]
        assert [p["score"] for p in first["predictions"]] == pytest.approx(want.values.tolist(), abs=1e-4)
        monkeypatch.setattr(predict, "encode_entities", _no_encoding)
        with warnings.catch_warnings():
            warnings.simplefilter("error", DataWarning)
            assert predict.main(argv + ["--backend", variant]) == [first]  # mapped, not encoded again
        monkeypatch.undo()
    torch_vecs = np.load(d / "entity_vectors.npy").astype(np.float32)
    fp32 = np.load(d / "entity_vectors-onnx-fp32.npy").astype(np.float32)
    int8 = np.load(d / "entity_vectors-onnx-int8.npy").astype(np.float32)
    assert np.abs(fp32 - torch_vecs).max() <= 2e-3  # the same model: float16 rounding apart
    cosine = (int8 * torch_vecs).sum(1)
    assert cosine.min() > 0.9 and not np.array_equal(int8, fp32)  # quantised: close, not equal
    assert (d / "entity_vectors.npy").read_bytes() == torch_file  # the torch vectors untouched


def test_an_export_without_onnx_towers_gets_them_once(onnx_made, tmp_path, monkeypatch, capsys):
    from kgc_kd.serve import onnx_export

    src, kg, _ = onnx_made
    d = _copy(src, tmp_path / "export", onnx=False)
    calls = []

    def exported(export, **kwargs):  # the real exporter's result, without its tens of seconds
        calls.append(export)
        shutil.copytree(src / "onnx", export / "onnx", copy_function=shutil.copy)
        return export / "onnx"

    monkeypatch.setattr(onnx_export, "export_onnx", exported)
    argv = [str(d), "--head", kg.entity_ids[0], "--relation", kg.relation_texts[0], "--backend", "onnx-fp32"]
    first = predict.main(argv)
    assert capsys.readouterr().err.splitlines() == [f"{d} has no ONNX towers; exporting them once into {d / 'onnx'}"]
    assert calls == [d]
    assert predict.main(argv) == first and calls == [d] and capsys.readouterr().err == ""


def test_onnx_towers_of_another_model_are_exported_again(onnx_made, tmp_path, monkeypatch):
    from kgc_kd.serve import onnx_export

    src, kg, _ = onnx_made
    d = _copy(src, tmp_path / "export")
    manifest = d / "onnx" / "manifest.json"
    good = manifest.read_text()
    manifest.write_text(json.dumps({**json.loads(good), "model": "0" * 64}))  # as another stage's towers say
    calls = []

    def exported(export, **kwargs):
        calls.append(export)
        manifest.write_text(good)
        return export / "onnx"

    monkeypatch.setattr(onnx_export, "export_onnx", exported)
    h, r, _ = kg.train[1].tolist()
    (result,) = predict.main([str(d), "--head", kg.entity_ids[h], "--relation", kg.relation_texts[r],
                              "--backend", "onnx-fp32", "--top-k", "3"])
    assert calls == [d]  # once: reopened after it
    want = _onnx_brute_force(d, kg, "onnx-fp32", h, r, 3)
    assert [p["id"] for p in result["predictions"]] == [kg.entity_ids[i] for i in want.indices.tolist()]


def test_onnx_refuses_another_device_and_a_read_only_export_in_one_line(onnx_made, tmp_path, monkeypatch, capsys):
    src, kg, _ = onnx_made
    d = _copy(src, tmp_path / "export")
    argv = ["--head", kg.entity_ids[0], "--relation", kg.relation_texts[0], "--backend", "onnx-int8"]
    with pytest.raises(SystemExit) as exc:
        predict.main([str(d), *argv, "--device", "cuda"])
    assert exc.value.code == 2 and "onnx-int8 runs on the CPU" in capsys.readouterr().err
    bare = _copy(src, tmp_path / "bare", onnx=False)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(SystemExit) as exc:
        predict.main([str(bare), *argv])
    err = capsys.readouterr().err.splitlines()
    assert exc.value.code == 2 and err[-1].startswith(f"error: {bare} is read-only") and len(err) == 2


# ---- --index: approximate search, built once beside the vectors, its recall measured on test queries -----------
def test_index_is_built_once_with_its_recall_and_rebuilt_for_other_vectors(chain_made, tmp_path, monkeypatch,
                                                                            capsys):
    pytest.importorskip("faiss", reason="the serve extra is not installed: pip install 'kgc-kd[serve]'")
    src, kg, net = chain_made
    d = _copy(src, tmp_path / "export")
    h, r, _ = kg.train[0].tolist()
    argv = [str(d), "--head", kg.entity_ids[h], "--relation", kg.relation_texts[r], "--top-k", "5", "--index"]
    (first,) = predict.main(argv)
    queries = 2 * len(kg.test)  # the test split, forward and inverse
    assert capsys.readouterr().out.splitlines()[0].startswith(
        f"[index] entity_index: ivf over 20 entities built in ")
    record = json.loads((d / "entity_index.json").read_text())
    assert record["vectors_sha256"] == hashlib.sha256((d / "entity_vectors.npy").read_bytes()).hexdigest()
    assert record["recall_queries"] == f"{queries} given queries" and record["recall@10"] == 1.0  # 20 entities
    want = _expected(kg, net, h, r, 5)
    assert [p["id"] for p in first["predictions"]] == [kg.entity_ids[i] for i in want.indices.tolist()]
    assert [p["score"] for p in first["predictions"]] == pytest.approx(want.values.tolist(), abs=1e-4)

    def no_queries(self):
        raise AssertionError("test queries encoded for an index that was there")

    monkeypatch.setattr(predict.Predictor, "_recall_queries", no_queries)
    assert predict.main(argv) == [first] and "[index]" not in capsys.readouterr().out
    monkeypatch.undo()

    other = BiEncoder(make_tiny_bert(dropout=0.0, seed=7)).eval()
    other.save_pretrained(d, make_tokenizer())  # another model: its vectors, then its index, are stale
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (again,) = predict.main(argv)
    assert _said(caught) == [
        f"{d / 'entity_vectors.npy'}: entity vectors cannot be used (stale: computed for another model/KG (model "
        "differs)); they are computed again",
        f"{d / 'entity_index.faiss'}: stale: built for other entity vectors; rebuilt"]
    assert "recall@10 = 1.000" in capsys.readouterr().out
    want = _expected(kg, other, h, r, 5)
    assert [p["id"] for p in again["predictions"]] == [kg.entity_ids[i] for i in want.indices.tolist()]
