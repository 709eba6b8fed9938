"""kgc_kd.serve.onnx_export: the towers written as ONNX graphs with dynamic axes, the manifest checked against the
files themselves (hashlib, onnx), reuse without work, a rebuild (one line) for another model's or damaged towers,
a shared encoder written once, and the CLI.

Exports take seconds each (tracing), so each kind is built once per session (`exported`) and shared with
tests/test_onnx_runtime.py; a test that changes an export works on a copy."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import make_tiny_bert, make_tokenizer
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.vocab import used_token_ids
from kgc_kd.runtime.files import OutsideRoot
from kgc_kd.serve import onnx_export
from kgc_kd.serve.digest import model_digest
from kgc_kd.serve.onnx_export import MANIFEST, ONNX_DIR, export_onnx, onnx_problem

pytest.importorskip("onnxruntime", reason="the serve extra is not installed: pip install 'kgc-kd[serve]'")
pytest.importorskip("onnxscript", reason="the serve extra is not installed: pip install 'kgc-kd[serve]'")

PRUNE_TEXTS = ["red green blue thing", "small old entity of relation", "is a", "inverse 3 4", "bright warm"]
KINDS = {  # name -> (shared encoder, pruned vocabulary, int8)
    "plain": (False, False, True),
    "shared": (True, False, True),
    "pruned": (False, True, False),
}
_BUILT: dict[str, tuple[Path, BiEncoder, float]] = {}


def make_biencoder(shared: bool = False) -> BiEncoder:
    """Two different towers (seeds 0 and 1), so a graph served on the wrong side would show; no dropout."""
    query = make_tiny_bert(dropout=0.0, seed=0)
    return BiEncoder(query, None if shared else make_tiny_bert(dropout=0.0, seed=1), shared=shared).eval()


def save_export(directory: Path, *, shared: bool = False, pruned: bool = False) -> BiEncoder:
    """An exported stage's model files (no KG: the ONNX towers depend on the model only); returns the bi-encoder
    as it was before pruning (with the source tokenizer's ids it is the reference of the pruned export)."""
    tok = make_tokenizer()
    net = make_biencoder(shared)
    saved = net
    if pruned:
        import copy

        saved = copy.deepcopy(net)
        saved.prune_vocabulary(used_token_ids(tok(PRUNE_TEXTS, add_special_tokens=False)["input_ids"], tok),
                               tok.vocab_size)
    saved.save_pretrained(directory, tok)
    return net


def exported(tmp_path_factory, kind: str) -> tuple[Path, BiEncoder, float]:
    """(export directory with its onnx/, the bi-encoder before pruning, seconds export_onnx took), built once
    per session inside a run directory (runs/stages/<kind>/export, chain_state.json naming the stage)."""
    if kind not in _BUILT:
        shared, pruned, int8 = KINDS[kind]
        run = tmp_path_factory.mktemp(f"run-{kind}")
        export = run / "stages" / kind / "export"
        net = save_export(export, shared=shared, pruned=pruned)
        (run / "chain_state.json").write_text(json.dumps({"order": [kind], "stages": {kind: {}}}))
        import time

        start = time.perf_counter()
        export_onnx(export, int8=int8)
        _BUILT[kind] = (export, net, time.perf_counter() - start)
    return _BUILT[kind]


def copy_export(export: Path, to: Path, with_onnx: bool = True) -> Path:
    shutil.copytree(export, to, ignore=None if with_onnx else shutil.ignore_patterns(ONNX_DIR))
    return to


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return exported(tmp_path_factory, "plain")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return exported(tmp_path_factory, "shared")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_towers_and_manifest_are_written_with_dynamic_axes(plain):
    import onnx

    export, _, seconds = plain
    out = export / ONNX_DIR
    names = {"query.onnx", "entity.onnx", "query.int8.onnx", "entity.int8.onnx"}
    assert {p.name for p in out.iterdir()} == names | {MANIFEST}
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == 1 and manifest["model"] == model_digest(export)
    assert manifest["files"] == {n: {"bytes": (out / n).stat().st_size, "sha256": sha256(out / n)} for n in names}
    assert sha256(out / "query.onnx") != sha256(out / "entity.onnx")  # two towers, two graphs
    assert (out / "query.int8.onnx").stat().st_size < (out / "query.onnx").stat().st_size / 2
    assert not manifest["shared"] and manifest["int8"] and manifest["dim"] == 32 and manifest["pooling"] == "mean"
    for name in names:
        model = onnx.load(str(out / name))
        onnx.checker.check_model(model)
        assert manifest["opset"] == {o.domain: o.version for o in model.opset_import}[""]
        inputs = {i.name: i.type.tensor_type for i in model.graph.input}
        assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids"}
        for t in inputs.values():  # int64, both axes symbolic (named), not fixed to the probe's 2 x 8
            assert t.elem_type == onnx.TensorProto.INT64
            assert [bool(d.dim_param) and not d.HasField("dim_value") for d in t.shape.dim] == [True, True]
        (output,) = model.graph.output
        assert output.name == "vector" and output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        batch, dim = output.type.tensor_type.shape.dim
        assert batch.dim_param and dim.dim_value == 32
    parity = manifest["parity"]
    assert parity["batch"] != list(onnx_export.EXPORT_PROBE)
    for side in ("query", "entity"):
        assert parity[f"{side}.onnx"]["max_abs_diff"] < 1e-5
        int8 = parity[f"{side}.int8.onnx"]
        assert 0 < int8["max_abs_diff"] < 0.05 and int8["min_cosine"] > 0.99
    assert not [p.name for p in export.iterdir() if p.name.endswith(".tmp")]  # nothing left behind
    print(f"tiny two-tower export with int8: {seconds:.1f} s")


def test_current_towers_are_reused_without_work(plain, monkeypatch):
    export, _, _ = plain
    out = export / ONNX_DIR
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    monkeypatch.setattr(onnx_export, "write_towers", lambda *a, **k: pytest.fail("exported again"))
    said: list[str] = []
    assert export_onnx(export, log=said.append) == out.resolve()
    assert export_onnx(export, int8=False, log=said.append) == out.resolve()  # fp32 asked of an int8 export: reused
    assert said == [] and onnx_problem(export) is None
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()} == before


def test_a_shared_encoder_is_exported_once_and_serves_both_sides(shared):
    export, _, _ = shared
    out = export / ONNX_DIR
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["shared"] is True
    for q8 in ("", ".int8"):
        q, e = out / f"query{q8}.onnx", out / f"entity{q8}.onnx"
        assert q.read_bytes() == e.read_bytes()
        assert os.path.samefile(q, e)  # a hard link: the graph is on disk once
        assert manifest["files"][q.name] == manifest["files"][e.name]


def test_another_models_towers_are_exported_again_with_one_line(plain, shared, tmp_path):
    """The plain export's onnx/ copied into a copy of the shared export: found stale, exported again (one line
    saying why), and then current for the copy's own model."""
    target = copy_export(shared[0], tmp_path / "export", with_onnx=False)
    shutil.copytree(plain[0] / ONNX_DIR, target / ONNX_DIR)
    digest = model_digest(target)
    old = json.loads((plain[0] / ONNX_DIR / MANIFEST).read_text())["model"]
    assert onnx_problem(target) == (f"{target / ONNX_DIR} was exported from another model (sha256 {old[:12]}…, "
                                    f"this export's {digest[:12]}…)")
    said: list[str] = []
    export_onnx(target, log=said.append)
    assert said == [f"{target / ONNX_DIR} was exported from another model (sha256 {old[:12]}…, this export's "
                    f"{digest[:12]}…); exporting the ONNX towers again"]
    manifest = json.loads((target / ONNX_DIR / MANIFEST).read_text())
    assert manifest["model"] == digest != old and manifest["shared"] is True
    assert (target / ONNX_DIR / "query.onnx").read_bytes() == (shared[0] / ONNX_DIR / "query.onnx").read_bytes()
    assert onnx_problem(target) is None
    assert sorted(p.name for p in target.iterdir()) == ["biencoder.json", "entity", ONNX_DIR, "query"]


def test_damage_is_named_in_one_line(plain, tmp_path):
    target = copy_export(plain[0], tmp_path / "export")
    out = target / ONNX_DIR
    manifest_text = (out / MANIFEST).read_text()
    assert onnx_problem(target) is None  # a copied export keeps its towers (by content, not by path)

    size = (out / "entity.int8.onnx").stat().st_size
    with open(out / "entity.int8.onnx", "r+b") as f:
        f.truncate(size - 10)
    assert onnx_problem(target) == f"{out / 'entity.int8.onnx'} is {size - 10} bytes, {MANIFEST} records {size}"
    (out / "entity.int8.onnx").unlink()
    assert onnx_problem(target) == f"{out / 'entity.int8.onnx'} is missing"

    manifest = json.loads(manifest_text)
    manifest["files"] = {k: v for k, v in manifest["files"].items() if ".int8." not in k}
    (out / MANIFEST).write_text(json.dumps(manifest))
    assert onnx_problem(target, needed=onnx_export.needed_files(int8=False)) is None
    assert onnx_problem(target, needed=onnx_export.needed_files(int8=True)) == \
        f"{out} has no query.int8.onnx (exported with --no-int8)"

    (out / MANIFEST).write_text("{not json")
    assert onnx_problem(target).startswith(f"{out / MANIFEST} is not JSON (")
    (out / MANIFEST).write_text(json.dumps({"format": 99, "model": "x", "files": {}}))
    assert onnx_problem(target) == \
        f"{out / MANIFEST} is not an ONNX manifest of format 1 (format 99, or no model/files)"
    (out / MANIFEST).unlink()
    assert onnx_problem(target) == f"{out} has no {MANIFEST}"
    shutil.rmtree(out)
    assert onnx_problem(target) == onnx_export.NOTHING_YET


def test_refusals_before_any_work(tmp_path, plain):
    with pytest.raises(FileNotFoundError, match="not an exported stage"):
        export_onnx(tmp_path)
    target = copy_export(plain[0], tmp_path / "export", with_onnx=False)
    (tmp_path / "elsewhere").mkdir()
    (target / ONNX_DIR).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutsideRoot, match="the ONNX towers"):
        export_onnx(target)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_cli_prints_the_files_of_a_run_directory_stage(plain, capsys):
    export, _, _ = plain
    run = export.parents[2]
    manifest = onnx_export.main([str(run), "--stage", "plain"])
    assert manifest == json.loads((export / ONNX_DIR / MANIFEST).read_text())
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{(export / ONNX_DIR).resolve()}  (model sha256 {manifest['model'][:12]}…, opset ")
    for name, info in manifest["files"].items():
        assert any(line.split()[:2] == [name, f"{info['bytes']:,}"] for line in printed[1:]), name
    assert onnx_export.main([str(export), "--no-int8"]) == manifest  # the export directory itself; reused
    with pytest.raises(SystemExit) as exc:
        onnx_export.main([str(run), "--stage", "nope"])
    assert exc.value.code == 2 and "no finished stage 'nope'" in capsys.readouterr().err
