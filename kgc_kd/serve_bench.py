"""`python -m kgc_kd.serve_bench RUN [--stages a,b] [--variants fp32,onnx-int8] [--threads N]`

The serving benchmark of a finished run (`kgc_kd.serve.bench`): every stage x variant (fp32, bf16 where the
hardware has it, ONNX fp32, ONNX int8) measured in a process of its own; serve.md, serve.json and serve.png
written beside the run's report, and the report given the deployment answer.
"""

from __future__ import annotations

from pathlib import Path

from kgc_kd.cli import EXIT_BAD_INPUT, EXIT_OK, console_script, exit_statuses, parser

EXAMPLES = (
    "python -m kgc_kd.serve_bench runs/<name>                      # every stage x every variant this machine serves",
    "python -m kgc_kd.serve_bench runs/<name> --stages teacher,pmd2 --variants fp32,onnx-int8 --threads 1",
)


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> dict:
    ap = parser("python -m kgc_kd.serve_bench",
                "Measure a finished run's stages as they would be served: bytes on disk, resident memory, query "
                "latency at batch 1 (p50/p95/p99), throughput at batch 64 and 256, entity throughput and each "
                "variant's own test MRR; writes serve.md, serve.json and serve.png beside the run's report and "
                "adds the deployment answer to report.md/json.",
                items=None, statuses=(EXIT_OK, EXIT_BAD_INPUT), examples=EXAMPLES,
                notes=("Variants: fp32 and bf16 (PyTorch), onnx-fp32 and onnx-int8 (ONNX Runtime, int8 by its "
                       "dynamic quantizer; needs pip install 'kgc-kd[serve]'). Unnamed, every variant this "
                       "hardware serves is measured and the others are named as skipped; a named one it cannot "
                       "serve is an error.",
                       "Measure on a quiet machine: the latencies are wall-clock."),
                docs=("docs/serving.md", "docs/performance.md#serving-measured"))
    ap.add_argument("run", metavar="RUN", help="a finished run directory (runs/<name>, with report.json)")
    ap.add_argument("--stages", help="comma-separated stage names (default: every finished stage)")
    ap.add_argument("--variants", help="comma-separated among fp32,bf16,onnx-fp32,onnx-int8 (default: all this "
                                       "hardware serves)")
    ap.add_argument("--threads", type=int, help="intra-op threads for torch and ONNX Runtime (default: all cores)")
    ap.add_argument("--device", default="cpu", help="torch device for the fp32/bf16 variants (default cpu)")
    ap.add_argument("--latency-queries", type=int, default=200,
                    help="batch-1 queries timed per variant after 20 warm-up calls (default 200)")
    args = ap.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    if args.latency_queries < 1:
        ap.error(f"--latency-queries must be >= 1, got {args.latency_queries}")
    with exit_statuses(KeyError, ValueError):
        from kgc_kd.chain.report import add_deployment
        from kgc_kd.serve.bench import serve_bench

        run_dir = Path(args.run)
        result = serve_bench(run_dir, stages=_names(args.stages), variants=_names(args.variants),
                             threads=args.threads, device=args.device, latency_queries=args.latency_queries)
        add_deployment(run_dir, result["deployment"])
        print(f"[serve] {run_dir / 'report.md'}: deployment answer added")
        return result


script = console_script(main)

if __name__ == "__main__":
    main()
