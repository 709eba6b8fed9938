"""kgc_kd/serve/bench.py and its entry point kgc_kd/serve_bench.py: a finished run's stages measured as served."""

import json
from pathlib import Path

import pytest

from kgc_kd import fit, serve_bench
from kgc_kd.serve import variants
from kgc_kd.serve.bench import BenchError, preflight
from test_cli import check_help

VARIANTS = "fp32,onnx-fp32,onnx-int8"


def _argv(tmp_path, plm):
    return ["data=synthetic", f"model.plm={plm}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            "data.batch_size=8", "data.max_length=24", "optim.lr=1e-3", "teacher.epochs=1", "trainer.max_epochs=1",
            f"run.root={tmp_path}", "run.name=chain", "eval.untrained_baseline=false", "run.logger=csv",
            "stages=[{name: g2, layers: 2}]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import save_tiny_plm

    root = tmp_path_factory.mktemp("serve")
    plm = save_tiny_plm(root / "plm4", num_layers=4)
    fit.main(_argv(root, plm))
    return root / "chain"


@pytest.fixture(scope="module")
def measured(run):
    result = serve_bench.main([str(run), "--variants", VARIANTS, "--threads", "1", "--latency-queries", "20"])
    return run, result


@pytest.mark.slow
def test_every_stage_x_variant_is_measured_and_fp32_equals_the_report(measured):
    run, result = measured
    report = {r["name"]: r for r in json.loads((run / "report.json").read_text())["stages"]}
    rows = result["rows"]
    assert [(r["stage"], r["variant"]) for r in rows] == [(s, v) for s in ("teacher", "g2")
                                                         for v in VARIANTS.split(",")]
    for r in rows:
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] and r["latency_samples"] == 20
        assert r["queries_per_s"]["64"] > 0 and r["queries_per_s"]["256"] > 0 and r["entities_per_s"] > 0
        assert r["peak_rss_mib"] >= r["rss_loaded_mib"] > 0 and r["threads"] == 1
        if r["variant"] == "fp32":  # the chain's own evaluation, reproduced from the export
            assert r["test"]["mrr"] == pytest.approx(report[r["stage"]]["test"]["mrr"], abs=1e-3)
            assert result["report_check"][r["stage"]]["equal"] is True
    by = {(r["stage"], r["variant"]): r for r in rows}
    assert by[("g2", "fp32")]["bytes_on_disk"] < by[("teacher", "fp32")]["bytes_on_disk"]  # fewer layers
    assert by[("g2", "onnx-int8")]["bytes_on_disk"] < by[("g2", "onnx-fp32")]["bytes_on_disk"]


@pytest.mark.slow
def test_the_table_json_plot_and_the_reports_deployment_answer_are_written(measured):
    run, result = measured
    saved = json.loads((run / "serve.json").read_text())
    assert saved["rows"] == result["rows"] and saved["threads"] == 1 and saved["variants"] == VARIANTS.split(",")
    md = (run / "serve.md").read_text()
    assert "| g2 | onnx-int8 |" in md and "## Deployment" in md
    assert (run / "serve.png").stat().st_size > 1000
    report = json.loads((run / "report.json").read_text())
    assert set(report["deployment"]["grades"]) == {"teacher", "g2"}
    assert "## Deployment" in (run / "report.md").read_text()
    assert len(report["rows"]) == 2  # the report's own rows are computed again, not lost


def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path, capsys, monkeypatch):
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(BenchError, match="no such run directory"):
        preflight(tmp_path / "nope", None, None, "cpu")
    with pytest.raises(BenchError, match=r"--stages pmd9: not a finished stage of .*; finished: teacher, g2"):
        preflight(run, ["pmd9"], None, "cpu")
    monkeypatch.setattr(variants, "cpu_flags", lambda: set())
    with pytest.raises(SystemExit) as exit_:
        serve_bench.main([str(run), "--variants", "bf16"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "variant bf16 cannot be served on cpu here: this CPU has no native bf16" in err
    with pytest.raises(SystemExit):
        serve_bench.main([str(run), "--variants", "int4"])
    assert "unknown variant 'int4'" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before  # refused before any write


def test_a_missing_export_is_named(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    shutil.rmtree(copy / "stages" / "g2" / "export")
    with pytest.raises(BenchError, match=r"stages/g2/export: the export of stage g2 is missing"):
        preflight(copy, None, ["fp32"], "cpu")


def test_help_shows_its_options(capsys):
    check_help(capsys, serve_bench.main, "--help", "python -m kgc_kd.serve_bench",
               ("--variants", "--threads", "--stages", "docs/serving.md"), groups=False)


def test_a_read_only_export_without_onnx_towers_is_refused_before_any_export(run, tmp_path, monkeypatch):
    import os
    import shutil

    from kgc_kd.serve import bench

    copy = tmp_path / "ro"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "onnx"))
    exports = {copy / "stages" / s / "export" for s in ("teacher", "g2")}
    real = os.access
    monkeypatch.setattr(bench.os, "access", lambda p, mode: Path(p) not in exports and real(p, mode))
    with pytest.raises(BenchError, match=r"stages/teacher/export: read-only, and its ONNX towers are missing"):
        preflight(copy, None, ["fp32", "onnx-int8"], "cpu")
    assert preflight(copy, None, ["fp32"], "cpu")[1] == ["fp32"]  # the torch variants need no writing
    assert not any((e / "onnx").exists() for e in exports)
