"""The serving benchmark of a finished run: every stage x variant measured, tabled, plotted, and the deployment
question answered in the run's report.

`serve_bench(run_dir)` checks everything first (the run and each stage's export, the variants on this
hardware, the libraries, that the run directory can be written), then exports the ONNX towers the ONNX
variants need (`onnx_export.export_onnx`, reused where current), then measures each stage x variant in a
process of its own (`kgc_kd.serve.measure`), printing one line per measurement, and writes beside the run's
report: `serve.json` (every measurement, the machine, the threads), `serve.md` (the table), `serve.png` (test MRR
against p50 query latency at batch 1, one point per stage x variant, the teacher fp32 marked as the baseline),
and the deployment answer (`serve.deployment`), which the entry point (`kgc_kd.serve_bench`) also adds to
the run's report.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from kgc_kd.runtime.files import replace_atomically, write_json_atomic, write_text_atomic
from kgc_kd.serve.measure import RESULT_PREFIX
from kgc_kd.serve.deployment import deployment, format_deployment, megabytes
from kgc_kd.serve.variants import ONNX_VARIANTS, check_variants

SERVE_FILES = ("serve.json", "serve.md", "serve.png")
MRR_TOLERANCE = 1e-3  # the fp32 variant's test MRR against the run's report (batch composition changes padding)


class BenchError(ValueError):
    """A run the benchmark cannot measure; the message is one line naming the file or option."""


def run_stages(run_dir: Path) -> tuple[list[str], dict[str, dict]]:
    """The run's finished stages in chain order and their report rows (`report.json`)."""
    state, report = run_dir / "chain_state.json", run_dir / "report.json"
    for f in (state, report):
        if not f.is_file():
            raise BenchError(f"{f}: not found; serve_bench measures a finished run (python -m kgc_kd.fit wrote "
                             "chain_state.json and report.json there)")
    order = list(json.loads(state.read_text()).get("order", []))
    rows = {r["name"]: r for r in json.loads(report.read_text()).get("stages", [])}
    return order, rows


def eval_settings(run_dir: Path) -> dict:
    """The run's eval section (rerank settings, chunk size) from its config.yaml, so a variant is ranked exactly
    as the chain ranked the stage."""
    import yaml

    cfg = run_dir / "config.yaml"
    if not cfg.is_file():
        raise BenchError(f"{cfg}: not found; the run's config says how its stages were evaluated")
    ev = (yaml.safe_load(cfg.read_text()) or {}).get("eval") or {}
    return {k: ev[k] for k in ("rerank_weight", "rerank_hops", "chunk_size") if k in ev}


def preflight(run_dir: Path, stages: list[str] | None, variants: list[str] | None, device: str
              ) -> tuple[list[tuple[str, Path]], list[str], dict[str, str], dict]:
    """Everything the benchmark needs, checked before anything is written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BenchError(f"{run_dir}: no such run directory")
    order, rows = run_stages(run_dir)
    if stages is not None:
        unknown = [s for s in stages if s not in order]
        if unknown:
            raise BenchError(f"--stages {','.join(unknown)}: not a finished stage of {run_dir}; finished: "
                             f"{', '.join(order) or 'none'}")
    chosen = stages if stages is not None else order
    if not chosen:
        raise BenchError(f"{run_dir}: no finished stage to measure")
    exports = []
    for name in chosen:
        export = run_dir / "stages" / name / "export"
        if not (export / "biencoder.json").is_file():
            raise BenchError(f"{export}: the export of stage {name} is missing (no biencoder.json)")
        if name not in rows:
            raise BenchError(f"{run_dir / 'report.json'}: no row for stage {name}")
        exports.append((name, export))
    measured, skipped = check_variants(variants, device)
    if any(v in ONNX_VARIANTS for v in measured):  # towers to export must have somewhere to go
        from kgc_kd.serve.onnx_export import needed_files, onnx_problem

        for name, export in exports:
            if onnx_problem(export, needed=needed_files("onnx-int8" in measured)) and not os.access(export, os.W_OK):
                raise BenchError(f"{export}: read-only, and its ONNX towers are missing or stale; export them where "
                                 "it can be written (python -m kgc_kd.serve.onnx_export) or measure "
                                 "--variants fp32,bf16")
    if not os.access(run_dir, os.W_OK):
        raise BenchError(f"{run_dir}: cannot be written (serve.json, serve.md, serve.png go there)")
    return exports, measured, skipped, eval_settings(run_dir)


def _measure_in_process(export: Path, variant: str, *, threads: int, device: str, eval_cfg: dict,
                        latency_queries: int) -> dict:
    cmd = [sys.executable, "-m", "kgc_kd.serve.measure", str(export), "--variant", variant, "--threads",
           str(threads), "--device", device, "--eval", json.dumps(eval_cfg),
           "--latency-queries", str(latency_queries)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"measuring {export} as {variant} failed (exit {done.returncode}): {tail}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def format_serve(result: dict) -> str:
    """serve.md: the table of stage x variant, then the deployment answer."""
    m = result["machine"]
    lines = [f"# Serving benchmark: {result['run_dir']}", "",
             f"{result['date']}; {m['cpu']} ({m['cores']} cores), {result['threads']} threads, device "
             f"{result['device']}; torch {m['torch']}, onnxruntime {m.get('onnxruntime') or '-'}.", ""]
    if result["skipped"]:
        lines += [f"Not measured: {', '.join(f'{v} ({why})' for v, why in result['skipped'].items())}.", ""]
    head = ["stage", "variant", "bytes", "RSS peak", "p50 / p95 / p99 ms (batch 1)", "answer p50 ms",
            "q/s @64", "q/s @256", "entities/s", "test MRR", "MRR vs fp32"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fp32 = {r["stage"]: r["test"]["mrr"] for r in result["rows"] if r["variant"] == "fp32"}
    for r in result["rows"]:
        lat = r["latency_ms"]
        ref = fp32.get(r["stage"])
        rel = f"{100 * (r['test']['mrr'] - ref) / ref:+.2f}%" if ref else "-"
        lines.append("| " + " | ".join([
            r["stage"], r["variant"], megabytes(r["bytes_on_disk"]), f"{r['peak_rss_mib']:.0f} MiB",
            f"{lat['p50']:.2f} / {lat['p95']:.2f} / {lat['p99']:.2f}", f"{r['answer_latency_ms']['p50']:.2f}",
            f"{r['queries_per_s']['64']:.0f}", f"{r['queries_per_s']['256']:.0f}", f"{r['entities_per_s']:.0f}",
            f"{r['test']['mrr']:.4f}", rel]) + " |")
    lines += ["", "bytes: the served towers' weights and configs (one tower where the encoder is shared; "
              "tokenizer and entity vectors not counted). Latency: query encoding alone, each call timed after "
              "a warm-up; answer = encode + score every entity + top 10. Test MRR: the variant's own vectors "
              "(queries and entities), filtered, realistic ranks, as the chain evaluates a stage."]
    check = result.get("report_check")
    if check:
        lines.append(f"fp32 test MRR against the run's report: "
                     + "; ".join(f"{s} {c['measured']:.4f} vs {c['report']:.4f}" for s, c in check.items()) + ".")
    lines += ["", format_deployment(result["deployment"])]
    return "\n".join(lines) + "\n"


def plot_serve(path: Path, result: dict) -> None:
    """Test MRR against p50 query latency at batch 1: one point per stage x variant, teacher fp32 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"fp32": "o", "bf16": "s", "onnx-fp32": "^", "onnx-int8": "D"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, marker in markers.items():
        pts = [r for r in result["rows"] if r["variant"] == variant]
        if pts:
            ax.scatter([r["latency_ms"]["p50"] for r in pts], [r["test"]["mrr"] for r in pts], marker=marker,
                       label=variant, s=40)
            for r in pts:
                ax.annotate(r["stage"], (r["latency_ms"]["p50"], r["test"]["mrr"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
    base = result["deployment"].get("baseline")
    if base:
        ax.axhline(base["mrr"], color="grey", ls="--", lw=0.8, label="teacher fp32 MRR")
        ax.axvline(base["p50_ms"], color="grey", ls=":", lw=0.8, label="teacher fp32 p50")
    ax.set_xscale("log")
    ax.set_xlabel(f"query latency p50, batch 1 (ms, log scale; {result['threads']} threads)")
    ax.set_ylabel("test MRR (the variant's own vectors)")
    ax.set_title(f"Serving: {Path(result['run_dir']).name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    replace_atomically(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)


def machine(threads: int) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "onnxruntime": ort,
            "python": platform.python_version()}


def serve_bench(run_dir: Path, *, stages: list[str] | None = None, variants: list[str] | None = None,
                threads: int | None = None, device: str = "cpu", latency_queries: int = 200,
                log=None) -> dict:
    """Measure every stage x variant of the finished run in `run_dir`; see the module docstring."""
    run_dir = Path(run_dir)
    log = log or (lambda line: print(line, flush=True))  # progress as it happens, even into a pipe
    exports, measured, skipped, eval_cfg = preflight(run_dir, stages, variants, device)
    threads = int(threads or os.cpu_count() or 1)
    for variant, why in skipped.items():
        log(f"[serve] {variant}: not measured ({why})")
    if any(v in ONNX_VARIANTS for v in measured):
        from kgc_kd.serve.onnx_export import export_onnx

        for name, export in exports:
            start = time.perf_counter()
            export_onnx(export, int8="onnx-int8" in measured)
            log(f"[serve] {name}: ONNX towers ready in {time.perf_counter() - start:.1f} s ({export / 'onnx'})")
    rows, total, started = [], len(exports) * len(measured), time.perf_counter()
    for name, export in exports:
        for variant in measured:
            r = _measure_in_process(export, variant, threads=threads, device=device, eval_cfg=eval_cfg,
                                    latency_queries=latency_queries)
            r["stage"] = name
            rows.append(r)
            log(f"[serve] {len(rows)}/{total} {name} {variant}: {megabytes(r['bytes_on_disk'])}, p50 "
                f"{r['latency_ms']['p50']:.2f} ms, {r['queries_per_s']['256']:.0f} q/s @256, test MRR "
                f"{r['test']['mrr']:.4f} ({time.perf_counter() - started:.0f} s)")
    _, report_rows = run_stages(run_dir)
    check = {r["stage"]: {"measured": r["test"]["mrr"], "report": float(report_rows[r["stage"]]["test"]["mrr"])}
             for r in rows if r["variant"] == "fp32" and "mrr" in report_rows[r["stage"]].get("test", {})}
    for stage, c in check.items():
        c["equal"] = abs(c["measured"] - c["report"]) <= MRR_TOLERANCE
        if not c["equal"]:
            log(f"[serve] warning: {stage} fp32 test MRR {c['measured']:.4f} differs from the run's report "
                f"({c['report']:.4f}) by more than {MRR_TOLERANCE}")
    result = {"format": 1, "run_dir": str(run_dir), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "device": device, "threads": threads, "machine": machine(threads), "variants": measured,
              "skipped": skipped, "eval": eval_cfg, "rows": rows, "report_check": check,
              "deployment": deployment(rows)}
    write_json_atomic(run_dir / "serve.json", result)
    write_text_atomic(run_dir / "serve.md", format_serve(result))
    plot_serve(run_dir / "serve.png", result)
    log(f"[serve] wrote {run_dir / 'serve.md'}, serve.json, serve.png")
    return result
