"""One stage served as one variant, measured in a process of its own: `python -m kgc_kd.serve.measure`.

A process per stage x variant, so that its resident memory is the memory of serving that variant (the model,
its runtime, the KG, the token table and the entity vectors) and nothing else: no other variant's weights,
no allocator state left by a previous measurement. What it measures, with the encoder's own inputs (the
export's tokenizer, as `kgc_kd.predict` serves it):

- entity-encoding throughput (batches of 256 over every entity, best of 3 passes) - and with those vectors;
- the variant's own test metrics: every test query (forward + inverse) encoded by the variant and ranked
  against the variant's own entity vectors with the chain's evaluation (`evaluate_queries`, filtered,
  realistic ranks, the run's rerank settings) - the quantisation error measured, never assumed;
- query-encoding latency at batch 1 (each call timed alone after a warm-up; p50/p95/p99) and the latency of
  a whole answer (encode + score every entity + top 10);
- query-encoding throughput at batch 64 and 256 (best of 3 passes);
- resident memory after loading and at its peak (VmHWM), and the bytes on disk of the served towers.

Tokenisation is not timed: the KG's texts come from the export's token table (a query is looked up, not
parsed). The parent (`kgc_kd.serve.bench`) reads the one JSON line this prints after `RESULT_PREFIX`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULT_PREFIX = "KGC-KD-SERVE-RESULT "
ENTITY_BATCH = 256


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {f"p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 95, 99)}


def _batches(collate, rows: torch.Tensor, size: int) -> list[dict]:
    return [collate(list(rows[i:i + size])) for i in range(0, len(rows), size)]


def _best_rate(fn, batches: list, items: int, sync, repeats: int = 3) -> float:
    """Items per second of `fn` over `batches` (`items` in all): the best of `repeats` passes; `sync()` waits
    for the device's queued work before each clock read."""
    best = 0.0
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for b in batches:
            fn(b)
        sync()
        best = max(best, items / max(time.perf_counter() - start, 1e-9))
    return round(best, 1)


def _cycled(rows: torch.Tensor, n: int) -> torch.Tensor:
    """`n` rows: `rows` repeated as often as needed (a small test split still fills the big batches)."""
    reps = -(-n // max(len(rows), 1))
    return rows.repeat(reps, 1)[:n]


def measure(export: Path, variant: str, *, eval_cfg: dict, threads: int, device: str = "cpu",
            latency_queries: int = 200, warmup: int = 20, batch_sizes: tuple[int, ...] = (64, 256)) -> dict:
    """Everything the module docstring lists, for the stage in `export` served as `variant`."""
    from transformers import AutoTokenizer

    from kgc_kd.data.batching import EntityCollator, QueryCollator
    from kgc_kd.data.kg_export import TOKEN_CACHE_DIR, load_kg_export
    from kgc_kd.data.tokens import TokenCache
    from kgc_kd.eval import evaluate_queries
    from kgc_kd.runtime.devices import synchronize
    from kgc_kd.runtime.memory import peak_rss_mib, rss_mib
    from kgc_kd.serve.variants import load_variant

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    sync = lambda: synchronize(device)  # noqa: E731 - a CUDA timer must not stop before the kernels ran
    started = time.perf_counter()
    kg, meta = load_kg_export(export)
    tokenizer = AutoTokenizer.from_pretrained(export / "query", local_files_only=True)
    link_graph = bool(meta.get("link_graph", False))
    tokens = TokenCache.load_or_build(kg, tokenizer, int(meta.get("max_length", 50)),
                                      cache_dir=export / TOKEN_CACHE_DIR, warn=False, link_graph=link_graph)
    served = load_variant(export, variant, device=device, threads=threads)
    load_s = time.perf_counter() - started
    rss_loaded = rss_mib()

    # entities: the vectors this variant ranks against, and how fast it makes them
    ent_batches = _batches(EntityCollator(tokens), torch.arange(kg.num_entities), ENTITY_BATCH)
    entity_vecs = torch.cat([served.encode_entity(b["entity"]) for b in ent_batches]).float()
    entities_per_s = _best_rate(lambda b: served.encode_entity(b["entity"]), ent_batches, kg.num_entities, sync)

    # the variant's own test metrics, as the chain evaluates a stage
    test = kg.with_inverse(kg.split("test"))
    qcollate = QueryCollator(tokens)
    query_vecs = torch.cat([served.encode_query(b["hr"]) for b in _batches(qcollate, test, ENTITY_BATCH)]).float()
    rerank = bool(eval_cfg.get("rerank_weight")) and int(eval_cfg.get("rerank_hops", 0)) > 0
    adjacency = None
    if rerank:
        from kgc_kd.eval.rerank import NeighbourGraph

        heads = torch.cat([kg.valid, kg.test])[:, [0, 2]]
        graph = NeighbourGraph.from_triples(kg.train, kg.num_entities, device=entity_vecs.device)
        adjacency = graph.neighbourhoods(heads, int(eval_cfg["rerank_hops"]))
    metrics, _ = evaluate_queries(query_vecs, entity_vecs, test, kg.num_relations, kg.filter_index,
                                  adjacency=adjacency, rerank_hops=int(eval_cfg.get("rerank_hops", 0)),
                                  rerank_weight=float(eval_cfg.get("rerank_weight", 0.0)),
                                  chunk_size=int(eval_cfg.get("chunk_size", 256)))

    # batch 1: each call alone, after a warm-up
    one = [qcollate([row]) for row in _cycled(test, latency_queries + warmup)]
    encode_s, answer_s = [], []
    for i, b in enumerate(one):
        sync()
        start = time.perf_counter()
        q = served.encode_query(b["hr"])
        sync()
        mid = time.perf_counter()
        (q @ entity_vecs.t()).topk(min(10, kg.num_entities))
        sync()
        end = time.perf_counter()
        if i >= warmup:
            encode_s.append(mid - start)
            answer_s.append(end - start)
    throughput = {}
    for size in batch_sizes:
        rows = _cycled(test, max(2 * size, 512))
        batches = _batches(qcollate, rows, size)
        served.encode_query(batches[0]["hr"])  # warm-up at this shape
        throughput[str(size)] = _best_rate(lambda b: served.encode_query(b["hr"]), batches, len(rows), sync)
    return {
        "variant": variant, "threads": threads, "device": device,
        "bytes_on_disk": int(served.bytes_on_disk),
        "test": {k: float(v) for k, v in metrics.items() if k in ("mrr", "hits@1", "hits@3", "hits@10")},
        "test_queries": len(test), "entities": kg.num_entities, "dim": int(entity_vecs.shape[1]),
        "latency_ms": _percentiles(encode_s), "answer_latency_ms": _percentiles(answer_s),
        "latency_samples": len(encode_s),
        "queries_per_s": throughput, "entities_per_s": entities_per_s,
        "rss_loaded_mib": None if rss_loaded is None else round(rss_loaded, 1), "peak_rss_mib": peak_rss_mib(),
        "load_s": round(load_s, 2),
        **({"peak_cuda_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
           if torch.device(device).type == "cuda" else {}),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m kgc_kd.serve.measure",
                                 description="Measure one exported stage served as one variant (kgc_kd.serve_bench "
                                             "runs this, one process per stage x variant).")
    ap.add_argument("export", type=Path)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--eval", default="{}", help="the run's eval section as JSON (rerank settings, chunk size)")
    ap.add_argument("--latency-queries", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args(argv)
    out = measure(args.export, args.variant, eval_cfg=json.loads(args.eval), threads=args.threads,
                  device=args.device, latency_queries=args.latency_queries, warmup=args.warmup)
    sys.stdout.write(RESULT_PREFIX + json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
