"""`python -m experiments.bench [options] [key=value ...]`: the benchmark harness behind `make bench`.

Writes OUT (JSON, every figure with its spread and how it was taken) and OUT with .md (the readable
table). Sections (`--sections`, default all): `peak` matmul peak per precision, `train` training-step
throughput and FLOP utilisation of the teacher and a student stage at fp32 and bf16-mixed, `eval`
encoding/ranking speed and peak memory of a full evaluation on the configured KG, `scaling` ranking
memory/time on random embeddings for growing entity counts, `rerank` SimKGC's graph re-ranking on WN18RR
(`--rerank-data`, a KG-BERT directory) from random vectors, neighbourhood search and ranking timed
apart, `stages` parameters and latency of every
stage against the teacher, `chain` the default chain end to end (time by stage and phase, peak memory),
and, only when named (`--sections scale`: ~20 min on a 2-core CPU), `scale` the host side of a
Wikidata5M-sized run on a Wikidata-shaped synthetic graph at fractions of its size (`--scale-fractions`),
each step in a fresh process, extrapolated to full scale beside its targets (scale.py).
`key=value` items configure the model and data exactly as for `kgc_kd.fit` (the chain gets them too),
so tiny models make the harness fast in tests. Every ratio is taken within the same invocation.
torch, Lightning and the sections are imported after parsing: `--help` and a bad option answer at once.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

from experiments.bench.scale import DEFAULT_FRACTIONS, WIKIDATA5M, parse_fraction
from kgc_kd.cli import EXIT_BAD_INPUT, EXIT_OK, exit_statuses, parser

SECTIONS = ("peak", "train", "eval", "scaling", "rerank", "stages", "chain", "scale")
NAMED_ONLY = ("scale",)  # not among the default sections: it runs ~20 min on its own graph
PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed"}


EXAMPLES = ("python -m experiments.bench                                     # = make bench: every section, the default run",
            "python -m experiments.bench --sections train eval --repeats 3   # some sections only",
            "python -m experiments.bench data=nations model.plm=/models/bert-base-uncased --sections eval",
            "python -m experiments.bench --sections scale --out runs/bench-scale/bench.json   # Wikidata5M-sized host costs")


def parse(argv: list[str]) -> argparse.Namespace:
    ap = parser("python -m experiments.bench",
                "The benchmark harness behind `make bench`: speed and memory of the configured model and data "
                f"(sections {', '.join(SECTIONS)}), written to --out (JSON) and the same name with .md (the "
                "table).", items="configuration items of the model and data, as for kgc_kd.fit (the forms "
                "below); the chain section gets them too", statuses=(EXIT_OK, EXIT_BAD_INPUT), examples=EXAMPLES,
                docs=("docs/performance.md (sections, figures)", "docs/configuration.md (forms and keys)"))
    ap.add_argument("--out", default="runs/bench/bench.json", help="the JSON file (the table goes next to it)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, metavar="SECTION",
                    help=f"some of {', '.join(SECTIONS)} (default: all but {', '.join(NAMED_ONLY)}); ITEMs go before "
                         "it, or after --")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs before each measurement")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs; figures are their median")
    ap.add_argument("--matmul-n", type=int, default=2048, help="size of the square matmul that measures the peak")
    ap.add_argument("--stage", type=int, default=0, help="index of the student stage whose step is timed")
    ap.add_argument("--scale-entities", type=int, nargs="+", default=[1_000, 10_000, 100_000], metavar="N",
                    help="entity counts of the scaling section (default 1000 10000 100000)")
    ap.add_argument("--scale-queries", type=int, default=10_000, metavar="N",
                    help="queries of the scaling section (default 10000)")
    ap.add_argument("--rerank-data", metavar="DIR",
                    help="WN18RR in the KG-BERT layout for the rerank section (without it the default run skips "
                         "the section, and naming it in --sections is an error)")
    ap.add_argument("--rerank-hops", type=int, default=5, help="as conf/experiment/wn18rr_*.yaml (eval.rerank_hops)")
    ap.add_argument("--rerank-weight", type=float, default=0.05,
                    help="as conf/experiment/wn18rr_*.yaml (eval.rerank_weight)")
    ap.add_argument("--scale-fractions", type=parse_fraction, nargs="+", metavar="F",
                    default=[parse_fraction(f) for f in DEFAULT_FRACTIONS],
                    help="fractions of Wikidata5M's entities the scale section measures (default 1/50 1/10; "
                         "'1/50' or '0.02'); the train collate and predict run at the largest, the CPU evaluation "
                         "at the smallest")
    ap.add_argument("--scale-link-graph-fractions", type=parse_fraction, nargs="*", metavar="F",
                    default=[parse_fraction("1/50")],
                    help="fractions at which data preparation with data.link_graph is measured (default 1/50)")
    ap.add_argument("--scale-collate-entities", type=int, default=WIKIDATA5M["entities"], metavar="N",
                    help="entities of the extra collate-mask graph (default Wikidata5M's 4594485: its 41.2M "
                         "train + inverse keys; 0: none)")
    ap.add_argument("--scale-threads", type=int, nargs="+", default=[1, 2], metavar="N",
                    help="torch intra-op threads the collate is measured at (default 1 2)")
    ap.add_argument("--scale-batches", type=int, default=20, metavar="N",
                    help="timed collate batches per measurement, after --warmup (default 20)")
    ap.add_argument("--chain-run", help="read this finished run's report instead of running the chain")
    ap.add_argument("--run", help="measure this finished run's exported stages (section stages)")
    ap.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    args = ap.parse_intermixed_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> dict:
    args = parse(sys.argv[1:] if argv is None else argv)
    with exit_statuses():
        return run(args)


def rerank_skip_reason(rerank_data: str | None) -> str | None:
    """Why the rerank section cannot run (no --rerank-data, or files missing there), or None."""
    if rerank_data is None:
        return "no --rerank-data DIR (WN18RR in the KG-BERT layout) given"
    from experiments.bench.evaluation import missing_kgbert_files

    missing = missing_kgbert_files(rerank_data)
    return (f"no WN18RR in the KG-BERT layout at {rerank_data} (missing: {', '.join(missing)}); "
            "give the directory with --rerank-data DIR") if missing else None


def run(args: argparse.Namespace) -> dict:
    from kgc_kd.config import load_config

    cfg = load_config(args.overrides)
    sections = set(args.sections or [s for s in SECTIONS if s not in NAMED_ONLY])
    rerank_skip = rerank_skip_reason(args.rerank_data) if "rerank" in sections else None
    if rerank_skip and args.sections:  # asked for by name: an error before anything runs
        print(f"error: rerank section: {rerank_skip}", file=sys.stderr)
        raise SystemExit(2)
    from experiments.bench import chain_run, evaluation, peak, scale, stages, train_step
    from experiments.bench.table import format_tables
    from kgc_kd.chain.driver import build_datamodule
    from kgc_kd.models.biencoder import build_biencoder
    from kgc_kd.models.plm import load_tokenizer
    from kgc_kd.runtime.files import write_json_atomic, write_text_atomic

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(cfg.model.plm)
    dm = build_datamodule(cfg, tokenizer)
    rw = {"warmup": args.warmup, "repeats": args.repeats}
    result: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "machine": machine(), "device": args.device, "overrides": args.overrides,
                    "data": dm.kg.summary(), "plm": cfg.model.plm, **rw}

    def save() -> None:  # after every section: a long run interrupted late still leaves its figures
        write_json_atomic(out, result)
        write_text_atomic(out.with_suffix(".md"), format_tables(result) + "\n")

    if "peak" in sections or "train" in sections:
        result["matmul_peak"] = {p: peak.matmul_peak(p, n=args.matmul_n, device=args.device, **rw) for p in PRECISIONS}
        save()
    if "train" in sections:
        rows = []
        for kind in ("teacher", "student"):
            if kind == "student" and not len(cfg.stages):
                continue
            for p, prec in PRECISIONS.items():
                r = train_step.step_throughput(cfg, dm, tokenizer, kind, prec, stage_index=args.stage, **rw)
                pk = result["matmul_peak"][p]["flops_per_s"]
                r["peak_fraction"] = r["flops_per_s"] / pk if r["flops_per_s"] else None
                rows.append(r)
        for r in rows:  # bf16 speed-up of the same stage, same run
            base = next(x for x in rows if x["stage"] == r["stage"] and x["precision"] == "32-true")
            r["speedup_vs_fp32"] = r["examples_per_s"] / base["examples_per_s"]
        result["train_step"] = rows
        save()
    if "eval" in sections:
        net = build_biencoder(dict(cfg.model))
        result["evaluation"] = evaluation.real_evaluation(net, dm, chunk_size=cfg.eval.chunk_size,
                                                          device=args.device, **rw)
        save()
    if "scaling" in sections:
        result["eval_scaling"] = [evaluation.synthetic_ranking_process(n, args.scale_queries, chunk_size=cfg.eval.chunk_size,
                                                                       device=args.device)
                                  for n in args.scale_entities]
        save()
    if "rerank" in sections:
        if rerank_skip:
            print(f"rerank section skipped: {rerank_skip}", file=sys.stderr, flush=True)
            result["rerank_evaluation"] = {"skipped": rerank_skip}
        else:
            result["rerank_evaluation"] = evaluation.rerank_evaluation(
                args.rerank_data, hops=args.rerank_hops, weight=args.rerank_weight, chunk_size=cfg.eval.chunk_size,
                device=args.device, **rw)
        save()
    if "stages" in sections:
        models = stages.exported_models(args.run) if args.run else stages.chain_models(cfg, dm, tokenizer)
        result["stages"] = stages.stage_latency(models, dm, device=args.device, **rw)
        save()
    if "chain" in sections:
        result["chain"] = (chain_run.read_chain_report(Path(args.chain_run)) if args.chain_run
                           else chain_run.run_chain_subprocess(args.overrides, out.parent))
        save()
    if "scale" in sections:
        result["scale"] = scale.scale_section(out.parent / "scale-work", plm=cfg.model.plm,
                                              fractions=args.scale_fractions,
                                              link_graph_fractions=args.scale_link_graph_fractions,
                                              collate_entities=args.scale_collate_entities, threads=args.scale_threads,
                                              batches=args.scale_batches, warmup=args.warmup)
        save()
    print(format_tables(result), flush=True)
    print(f"\nwrote {out} and {out.with_suffix('.md')}", flush=True)
    return result


if __name__ == "__main__":
    main()
