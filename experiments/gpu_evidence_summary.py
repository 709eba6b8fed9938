"""Summarise what experiments/gpu_evidence.sh left in $OUT into $OUT/summary.json and $OUT/summary.md.

Reads, all optional (a missing piece is reported as missing, never guessed):
- $OUT/device.json           written by the script's first step (torch, CUDA, device name);
- $OUT/steps.tsv             one line per step: name, exit status, seconds, timeout, note;
- $OUT/test-gpu.xml          pytest's junit XML of `pytest -m gpu`;
- $OUT/runs/<step>/          copies of each chain run's report.json (or, for a run cut short, its
                             chain_state.json: the finished stages) and config.yaml.

Per stage: test MRR (mean of head and tail prediction), tail/mrr and head/mrr, train seconds and
evaluation seconds (PhaseTimer's `train` and `eval` phases, `phases_s` in the stage row: training steps
only, data waiting excluded; validation + test ranking), and training examples/s = steps x global batch /
train seconds, where steps is the stage's optimizer steps (Lightning's global_step) and the global batch
is data.batch_size x devices x num_nodes x accumulate_grad_batches from the run's config.yaml.

Usage: python experiments/gpu_evidence_summary.py OUT
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
    "umls-smoke": "the default chain (bundled UMLS), two training batches per stage: a plumbing check, not a result",
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


def _steps(out: Path) -> list[dict]:
    rows = []
    path = out / "steps.tsv"
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 4 or parts[0] == "step":
            continue
        name, rc, seconds, limit = parts[:4]
        note = parts[4] if len(parts) > 4 else ""
        rows.append({"step": name, "rc": int(rc) if rc.lstrip("-").isdigit() else rc,
                     "seconds": float(seconds) if seconds else None, "timeout_s": int(limit) if limit.isdigit() else None,
                     "timed_out": rc in ("124", "137"), "note": note})
    return rows


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


def summarise(out: Path) -> dict:
    device = _read_json(out / "device.json") or {}
    dry = (out / "DRY_RUN").is_file()
    runs_dir = out / "runs"
    order = ["umls-smoke", "umls-full", "wn18rr"]
    found = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    found.sort(key=lambda p: order.index(p.name) if p.name in order else len(order))
    return {
        "dry_run": dry,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
        "device_name": device.get("device_name"),
        "cuda_available": device.get("cuda_available"),
        "torch": device.get("torch"), "torch_cuda": device.get("torch_cuda"), "python": device.get("python"),
        "device": device,
        "steps": _steps(out),
        "test_gpu": _junit(out / "test-gpu.xml"),
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
              f"{d.get('bf16_supported')}, Python {s['python']}",
              f"- lightning {d.get('lightning')}, transformers {d.get('transformers')}", ""]
    lines += ["## Steps", "", "| step | exit status | seconds | timeout (s) | note |", "|---|---|---|---|---|"]
    for st in s["steps"]:
        rc = f"{st['rc']} (timed out)" if st["timed_out"] else str(st["rc"])
        lines.append(f"| {st['step']} | {rc} | {_fmt(st['seconds'], '{:.0f}')} | {_fmt(st['timeout_s'])} | {st['note']} |")
    lines.append("")
    t = s["test_gpu"]
    lines += ["## CUDA test suite (`pytest -m gpu`)", ""]
    if t is None:
        lines.append("no test-gpu.xml (pytest did not run or collected nothing; see test-gpu.log)")
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
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    out = Path(argv[0])
    s = summarise(out)
    (out / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    (out / "summary.md").write_text(to_markdown(s))
    print(f"wrote {out / 'summary.json'} and {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
