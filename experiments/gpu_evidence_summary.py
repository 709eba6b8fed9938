"""Summarise what experiments/gpu_evidence.sh gathered into summary.json and summary.md.

Reads from the evidence folder EV (all optional: a missing piece is reported as missing, never guessed):
- steps.tsv            one line per step: name, exit status, seconds, timeout, start/end (unix s), note;
- <step>.log           each step's output (the tail of a failed step's log goes into the summary);
- <step>.peak.json     experiments/gpu_evidence_peak.py: the step's torch.cuda.max_memory_allocated;
- nvidia-smi.csv       one sample a second: GPU utilisation and memory, cut per step by its start/end;
- device.json          experiments/gpu_evidence_device.py: device, torch/CUDA, versions against pyproject;
- test-gpu.xml, test-gpu-slow.xml   pytest's junit XML of `-m "gpu and not slow"` and `-m "gpu and slow"`;
- throughput.json      experiments/bert_base_throughput.py: bert-base-shaped and MiniLM examples/s;
- runs/<step>/         copies of each chain run's report.json (or, for a run cut short, chain_state.json:
                       the finished stages), config.yaml and metrics.csv.

Per stage: test MRR (mean of head and tail prediction), tail/mrr and head/mrr, train seconds and
evaluation seconds (PhaseTimer's `train` and `eval` phases, `phases_s` in the stage row: training steps
only, data waiting excluded; validation + test ranking), and training examples/s = steps x global batch /
train seconds, where steps is the stage's optimizer steps (Lightning's global_step) and the global batch
is data.batch_size x devices x num_nodes x accumulate_grad_batches from the run's config.yaml.

Usage: python experiments/gpu_evidence_summary.py EV OUT     (writes OUT/summary.json and OUT/summary.md)
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import yaml

# What each run of the script is; the WN18RR caveat is printed with its table.
RUN_NOTES = {
    "canary": ("the default chain (bundled UMLS) with ONE training batch per stage and the default trainer (on a GPU: "
               "bf16-mixed, gradient clipping, fused AdamW): a plumbing check, not a result"),
    "umls-full": "the default chain (bundled UMLS) in full",
    "wn18rr": ("conf/experiment/wn18rr_simkgc.yaml (link-graph text, re-rank 0.05 over 5 hops, batch 1024) for one "
               "epoch, then one 3-layer student for one epoch. The encoder is all-MiniLM-L6-v2, NOT SimKGC's "
               "bert-base-uncased (no bert-base weights on the device), and one epoch instead of 50: the MRR is "
               "not comparable to SimKGC's published WN18RR figure"),
}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _float(x: str) -> float | None:
    try:
        return float(x)
    except ValueError:
        return None


def _steps(ev: Path) -> list[dict]:
    rows = []
    path = ev / "steps.tsv"
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 7 or parts[0] == "step":
            continue
        name, rc, seconds, limit, t0, t1, note = parts[:6] + ["\t".join(parts[6:])]
        rows.append({"step": name, "rc": int(rc) if rc.lstrip("-").isdigit() else rc, "seconds": _float(seconds),
                     "timeout_s": int(limit) if limit.isdigit() else None, "timed_out": rc in ("124", "137"),
                     "start_unix": _float(t0), "end_unix": _float(t1), "note": note})
    return rows


def _gpu_samples(ev: Path) -> list[dict]:
    """nvidia-smi.csv rows (unix seconds, utilisation %, memory MiB); [] without nvidia-smi."""
    path = ev / "nvidia-smi.csv"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines()[1:]:
        f = line.split(",")
        if len(f) >= 7 and all(_float(x) is not None for x in f[:6]):
            rows.append({"t": float(f[0]), "gpu": int(float(f[1])), "util": float(f[2]), "mem_used": float(f[4]),
                         "mem_total": float(f[5])})
    return rows


def _step_costs(ev: Path, steps: list[dict], samples: list[dict]) -> None:
    """Adds to each step its CUDA peak (gpu_evidence_peak.py) and nvidia-smi's utilisation/memory over its span."""
    for st in steps:
        peak = _read_json(ev / f"{st['step']}.peak.json") or {}
        st["max_memory_allocated_mib"] = peak.get("max_memory_allocated_mib")
        st["peak_note"] = peak.get("note", "")
        span = [x for x in samples if st["start_unix"] is not None and st["end_unix"] is not None
                and st["start_unix"] <= x["t"] <= st["end_unix"]]
        st["gpu_samples"] = len(span)
        st["gpu_util_mean_pct"] = round(sum(x["util"] for x in span) / len(span), 1) if span else None
        st["gpu_util_max_pct"] = max((x["util"] for x in span), default=None)
        st["gpu_memory_used_max_mib"] = max((x["mem_used"] for x in span), default=None)
        log = ev / f"{st['step']}.log"
        st["log_tail"] = (log.read_text(errors="replace").splitlines()[-15:]
                          if log.is_file() and st["rc"] not in (0, "skipped") else [])


def _junit(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        return {"error": f"unreadable junit xml: {err}"}
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    skipped, failed = [], []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag, into in (("skipped", skipped), ("failure", failed), ("error", failed)):
            el = case.find(tag)
            if el is not None:
                into.append({"test": name, "message": (el.get("message") or "").strip()[:300]})
    total["skipped_tests"] = skipped
    total["failed_tests"] = failed
    return total


def _world(cfg: dict) -> tuple[int | None, str]:
    t = cfg.get("trainer", {})
    devices, nodes = t.get("devices", 1), t.get("num_nodes", 1) or 1
    if isinstance(devices, list):
        n = len(devices)
    elif isinstance(devices, int) and devices > 0:
        n = devices
    elif isinstance(devices, str) and devices.isdigit() and int(devices) > 0:
        n = int(devices)
    else:
        return None, f"trainer.devices={devices!r}: the number of processes is not in the config"
    return n * int(nodes), ""


def _stage_rows(run: Path) -> tuple[list[dict], str, dict]:
    """The stage rows of a run copy: report.json when the run finished, else chain_state.json."""
    report = _read_json(run / "report.json")
    if isinstance(report, dict) and report.get("stages"):
        return report["stages"], "report.json", report
    state = _read_json(run / "chain_state.json")
    if isinstance(state, dict) and state.get("stages"):
        rows = [state["stages"][n] for n in state.get("order", []) if n in state["stages"]]
        return rows, "chain_state.json (the run did not finish: only its completed stages)", {}
    return [], "no report.json or chain_state.json", {}


def _run(run: Path) -> dict:
    cfg = {}
    if (run / "config.yaml").is_file():
        cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
    rows, source, report = _stage_rows(run)
    world, why = _world(cfg) if cfg else (None, "no config.yaml")
    data, trainer = cfg.get("data", {}), cfg.get("trainer", {})
    batch = data.get("batch_size")
    accum = trainer.get("accumulate_grad_batches", 1) or 1
    global_batch = batch * world * accum if (batch and world) else None
    stages = []
    for r in rows:
        phases = r.get("phases_s") or {}
        train_s, eval_s, steps = phases.get("train"), phases.get("eval"), r.get("steps")
        test = r.get("test") or {}
        eps = None
        if global_batch and steps and train_s:
            eps = round(steps * global_batch / train_s, 1)
        stages.append({
            "stage": r.get("name"), "kind": r.get("kind"), "layers": r.get("layers"),
            "params_total": r.get("params_total"), "epochs": r.get("epochs"), "steps": steps,
            "test_mrr": test.get("mrr"), "test_tail_mrr": test.get("tail/mrr"), "test_head_mrr": test.get("head/mrr"),
            "test_hits@1": test.get("hits@1"), "test_hits@10": test.get("hits@10"), "best_val_mrr": r.get("best_val_mrr"),
            "train_s": train_s, "eval_s": eval_s, "data_s": phases.get("data"), "fit_s": r.get("fit_time_s"),
            "examples_per_s": eps, "queries_per_s": r.get("queries_per_s"), "entities_per_s": r.get("entities_per_s"),
        })
    return {
        "run": run.name, "note": RUN_NOTES.get(run.name, ""), "rows_from": source,
        "data": report.get("data"), "wall_time_s": report.get("wall_time_s"),
        "precision": report.get("precision") or trainer.get("precision"), "peak_rss_mib": report.get("peak_rss_mib"),
        "plm": cfg.get("model", {}).get("plm"), "data_source": data.get("source"),
        "global_batch": global_batch, "global_batch_note": why
        or f"data.batch_size {batch} x {world} process(es) x accumulate_grad_batches {accum}",
        "stages": stages,
    }


def _fmt(v: Any, spec: str = "{}") -> str:
    if v is None:
        return "-"
    try:
        return spec.format(v)
    except (ValueError, TypeError):
        return str(v)


# Figures the bert-base throughput is set beside (quoted, not measured by this script)
REFERENCES = [
    {"what": "SimKGC's published setting (bert-base-uncased, WN18RR)", "hardware": "4 x V100 32GB, DataParallel",
     "batch": 1024, "precision": "fp16 AMP",
     "examples_per_s": ">= 402 (86,835 triples x 50 epochs in < 3 h, evaluation included: a lower bound)",
     "source": "SimKGC README (../shared/research/simkgc_pmd_spec.md, section D)"},
    {"what": "this project, all-MiniLM-L6-v2 on WN18RR (2026-11-27)", "hardware": "1 x H200", "batch": 1024,
     "precision": "bf16-mixed", "examples_per_s": "7,900 (SimKGC's own code on the same card: 6,250)",
     "source": "quoted in issue 26; train phase only, not re-measured here"},
]


def summarise(ev: Path) -> dict:
    device = _read_json(ev / "device.json") or {}
    dry = (ev / "DRY_RUN").is_file()
    runs_dir = ev / "runs"
    order = ["canary", "wn18rr", "umls-full"]
    found = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    found.sort(key=lambda p: order.index(p.name) if p.name in order else len(order))
    steps = _steps(ev)
    _step_costs(ev, steps, _gpu_samples(ev))
    tests = {name: _junit(ev / f"{name}.xml") for name in ("test-gpu", "test-gpu-slow")}
    return {
        "dry_run": dry,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
        "device_name": device.get("device_name"),
        "cuda_available": device.get("cuda_available"),
        "torch": device.get("torch"), "torch_cuda": device.get("torch_cuda"), "python": device.get("python"),
        "device": device,
        "versions_out_of_range": [v for v in device.get("versions", []) if not v.get("in_range")],
        "steps": steps,
        "tests": tests,
        "throughput": _read_json(ev / "throughput.json"),
        "throughput_references": REFERENCES,
        "runs": [_run(p) for p in found],
    }


def to_markdown(s: dict) -> str:
    lines = ["# GPU evidence: summary", ""]
    if s["dry_run"]:
        lines += ["**DRY RUN** (GPU_EVIDENCE_DRY=1): every step shrunk to a few batches to exercise the script; "
                  "no number below means anything.", ""]
    d = s["device"]
    lines += [f"- date (UTC): {s['date']}",
              f"- device: {s['device_name'] or 'no CUDA device'} (torch.cuda.is_available(): {s['cuda_available']})",
              f"- torch {s['torch']}, CUDA build {s['torch_cuda']}, cuDNN {d.get('cudnn')}, bf16 supported: "
              f"{d.get('bf16_supported')}, Python {s['python']}, pytest-timeout {d.get('pytest_timeout')}"]
    vs = {v["package"]: v["installed"] for v in d.get("versions", [])}
    if vs:
        lines.append("- " + ", ".join(f"{k} {vs.get(k)}" for k in ("lightning", "transformers", "torchmetrics",
                                                                     "tokenizers", "omegaconf")))
    bad = s["versions_out_of_range"]
    lines.append("- versions against pyproject.toml: " + ("all in range" if d.get("versions") and not bad else
                 "not checked" if not d.get("versions") else
                 "; ".join(f"**{v['package']} {v['installed']}** (wants {v['wants']})" for v in bad)))
    lines += ["", "## Steps", "",
              "| step | exit status | seconds | timeout (s) | CUDA peak allocated (MiB) | GPU util mean / max (%) | "
              "GPU memory used max (MiB) | note |", "|---|---|---|---|---|---|---|---|"]
    for st in s["steps"]:
        rc = f"{st['rc']} (timed out)" if st["timed_out"] else str(st["rc"])
        util = (f"{st['gpu_util_mean_pct']:.0f} / {st['gpu_util_max_pct']:.0f}"
                if st["gpu_util_mean_pct"] is not None else "-")
        lines.append(f"| {st['step']} | {rc} | {_fmt(st['seconds'], '{:.0f}')} | {_fmt(st['timeout_s'])} | "
                     f"{_fmt(st['max_memory_allocated_mib'], '{:.0f}')} | {util} | "
                     f"{_fmt(st['gpu_memory_used_max_mib'], '{:.0f}')} | {st['note']} |")
    lines += ["", "CUDA peak allocated: torch.cuda.max_memory_allocated of the step's own process "
              "(experiments/gpu_evidence_peak.py; DDP ranks a test spawns not counted); GPU util/memory: nvidia-smi "
              "sampled each second over the step's span.", ""]
    for st in s["steps"]:
        if st["log_tail"]:
            lines += [f"### {st['step']}: the end of its log", "", "```", *st["log_tail"], "```", ""]
    for name, t in s["tests"].items():
        sel = "gpu and not slow" if name == "test-gpu" else "gpu and slow"
        lines += [f"## CUDA tests (`pytest -m \"{sel}\"`)", ""]
        if t is None:
            lines.append(f"no {name}.xml (pytest did not run or collected nothing; see {name}.log)")
        elif "error" in t:
            lines.append(t["error"])
        else:
            lines.append(f"{t['tests']} tests: {t['passed']} passed, {t['failures']} failed, {t['errors']} errors, "
                         f"{t['skipped']} skipped")
            for f in t["failed_tests"]:
                lines.append(f"- FAILED {f['test']}: {f['message']}")
            reasons: dict[str, int] = {}
            for k in t["skipped_tests"]:
                reasons[k["message"]] = reasons.get(k["message"], 0) + 1
            for msg, n in reasons.items():
                lines.append(f"- skipped ({n}): {msg}")
        lines.append("")
    tp = s["throughput"]
    lines += ["## Training throughput comparable with SimKGC (experiments/bert_base_throughput.py)", ""]
    if not tp:
        lines.append("no throughput.json (the bert-base step did not run; see steps)")
    else:
        lines += [f"WN18RR recipe {tp.get('recipe')}, precision {tp.get('precision')}, {tp.get('device')}, "
                  f"{tp.get('num_workers')} loader workers; examples/s over the timed steps after "
                  f"{tp.get('warmup_steps')} warm-up steps, the wait for data included.", "",
                  "| encoder | layers x width | weights | batch | timed steps | examples/s (data included) | "
                  "examples/s (train only) | peak allocated (MiB) | stopped by |", "|---|---|---|---|---|---|---|---|---|"]
        for r in tp.get("encoders", []):
            lines.append(f"| {r.get('encoder')} | {r.get('num_hidden_layers')} x {r.get('hidden_size')} | "
                         f"{r.get('weights')} | {r.get('batch_size')} | {_fmt(r.get('timed_steps'))} | "
                         f"{_fmt(r.get('examples_per_s'), '{:.0f}')} | {_fmt(r.get('train_examples_per_s'), '{:.0f}')} | "
                         f"{_fmt(r.get('peak_allocated_mib'))} | {r.get('stopped_by')}"
                         + (f"; {r['error']}" if r.get("error") else "") + " |")
    lines += ["", "Beside (quoted, not measured by this script):", "",
              "| what | hardware | batch | precision | examples/s | source |", "|---|---|---|---|---|---|"]
    for r in s["throughput_references"]:
        lines.append(f"| {r['what']} | {r['hardware']} | {r['batch']} | {r['precision']} | {r['examples_per_s']} | "
                     f"{r['source']} |")
    lines.append("")
    for run in s["runs"]:
        lines += [f"## {run['run']}", "", run["note"] + "." if run["note"] else "", "",
                  f"- data: {run['data'] or run['data_source']}; encoder: {run['plm']}; precision: {run['precision']}; "
                  f"wall {_fmt(run['wall_time_s'])} s; peak RSS {_fmt(run['peak_rss_mib'])} MiB",
                  f"- global batch {_fmt(run['global_batch'])} ({run['global_batch_note']}); rows from {run['rows_from']}",
                  "", "| stage | layers | steps | test MRR | tail MRR | head MRR | H@10 | train (s) | eval (s) | "
                      "examples/s (train) | queries/s | entities/s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in run["stages"]:
            lines.append(" | ".join([
                f"| {r['stage']}", _fmt(r["layers"]), _fmt(r["steps"]), _fmt(r["test_mrr"], "{:.4f}"),
                _fmt(r["test_tail_mrr"], "{:.4f}"), _fmt(r["test_head_mrr"], "{:.4f}"), _fmt(r["test_hits@10"], "{:.4f}"),
                _fmt(r["train_s"], "{:.1f}"), _fmt(r["eval_s"], "{:.1f}"), _fmt(r["examples_per_s"], "{:.0f}"),
                _fmt(r["queries_per_s"], "{:.0f}"), _fmt(r["entities_per_s"], "{:.0f}")]) + " |")
        if not run["stages"]:
            lines.append("| (no finished stage) |||||||||||| ")
        lines.append("")
    lines += ["examples/s = optimizer steps x global batch / train seconds (PhaseTimer's train phase: training step, "
              "backward and optimizer step, CUDA synchronised; data waiting excluded). eval (s) = validation of every "
              "epoch + the test ranking."
              + (" The MiniLM weights travelled in fp16 (../shared/tools/gpu-pack) and were restored to fp32 once "
                 "(/tmp/minilm), so they differ from the packaged model by that rounding."
                 if any(str(r.get("plm", "")).startswith("/tmp/minilm") for r in s["runs"]) else ""), ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    ev, out = Path(argv[0]), Path(argv[1])
    s = summarise(ev)
    (out / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    (out / "summary.md").write_text(to_markdown(s))
    print(f"wrote {out / 'summary.json'} and {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
