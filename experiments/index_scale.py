"""`python -m experiments.index_scale [--entities 459000] [--threads 2] [--out runs/index_scale]`: exact vs
approximate (FAISS) top-10 entity search at 1/10 of Wikidata5M's scale, on this machine's CPU.

Why: serving a stage answers a (head, relation) query by the nearest entity vectors. Exact search is one
matmul over every entity per query; at Wikidata5M's 4.6M entities that is the serving latency. This measures,
at 1/10 scale (459k entities, the vectors a real encoder gives, not random ones: real vectors cluster, which
is what makes an approximate index work or fail), what an approximate index (kgc_kd.serve.index) gains at batch 1
and what it costs in recall@10, build time and bytes, for several search settings.

The graph is `experiments.bench.wikidata_like.wikidata_like_kg` with texts of the MiniLM tokenizer's vocabulary
words (as the scale benchmark builds it) and 1,000 test triples; entity vectors are SimKGC's "name: description"
texts, query vectors "head name + relation text", both encoded by the first 2 layers of the packaged
all-MiniLM-L6-v2 (mean pooling, L2-normalised, max_length 32): the encoder cost of a pmd2-sized student. The
entity vectors are cached (fp16 .npy) under --out, so a rerun skips the encoding. Writes index_scale.json (every
figure, how it was taken) and index_scale.md (the table) under --out.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

WIKIDATA5M_ENTITIES = 4_594_485
LAYERS = 2
MAX_LENGTH = 32
ENCODE_BATCH = 256
NUM_QUERIES = 1_000
SEED = 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m experiments.index_scale", description=__doc__.split("\n\n")[1])
    ap.add_argument("--entities", type=int, default=round(WIKIDATA5M_ENTITIES / 10), help="entities (default 1/10 of Wikidata5M)")
    ap.add_argument("--threads", type=int, default=2, help="torch and faiss threads for encoding and search")
    ap.add_argument("--encode-threads", type=int, default=None,
                    help="torch threads for encoding only (default --threads; 1 can be faster on a CPU shared with other jobs)")
    ap.add_argument("--out", default="runs/index_scale", help="output directory (vectors cache, index, json, md)")
    ap.add_argument("--latency-queries", type=int, default=300, help="queries timed one at a time (>= 200)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed batch-1 searches before each timing")
    ap.add_argument("--kinds", nargs="+", default=["ivf", "hnsw"], help="index kinds built and measured "
                    "(kgc_kd.serve.index), each with its defaults, in this order (the json is written after each)")
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64, 256, 1024],
                    help="HNSW efSearch settings measured")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512], help="IVF nprobe settings measured")
    ap.add_argument("--ivf-nlist-extra", type=int, nargs="*", default=[1024],
                    help="further IVF indexes with these nlist (beside the default's 4 sqrt(E)), measured alike")
    return ap.parse_args(argv)


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": sys.version.split()[0],
            "loadavg_at_start": os.getloadavg()}


# ---- encoding -----------------------------------------------------------------------------------------------
def truncated_minilm(layers: int = LAYERS):
    """The packaged all-MiniLM-L6-v2 cut to its first `layers` layers (a pmd2-sized student's encoder cost)."""
    from kgc_kd.models.plm import load_encoder

    enc = load_encoder("minilm")
    enc.encoder.layer = enc.encoder.layer[:layers]
    enc.config.num_hidden_layers = layers
    return enc.eval()


def encode(texts: list[str], tokenizer, encoder, *, what: str, batch: int = ENCODE_BATCH) -> np.ndarray:
    """(N, D) float32 unit vectors (mean pooling, pooled in fp32), printing progress and rate: 459k texts take
    minutes. Under bf16 autocast (1.6-1.8x fp32 on this CPU, measured): how a student is served on a CPU, and the
    vectors are stored fp16 anyway."""
    import torch

    from kgc_kd.models.pooling import pool

    out = np.empty((len(texts), encoder.config.hidden_size), dtype=np.float32)
    start = last = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for b in range(0, len(texts), batch):
            t = tokenizer(texts[b:b + batch], padding=True, truncation=True, max_length=MAX_LENGTH,
                          return_tensors="pt")
            h = encoder(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                        token_type_ids=t.get("token_type_ids")).last_hidden_state
            out[b:b + batch] = pool(h, t["attention_mask"], "mean").numpy()
            now = time.perf_counter()
            if now - last > 30 or b + batch >= len(texts):
                done = min(b + batch, len(texts))
                print(f"[encode] {what}: {done:,}/{len(texts):,} in {now - start:.0f} s "
                      f"({done / (now - start):.0f} texts/s)", flush=True)
                last = now
    return out


def prepare(args: argparse.Namespace) -> dict:
    """The KG, its entity vectors (cached fp16 under --out) and the query vectors; their provenance and times."""
    import torch

    from experiments.bench.wikidata_like import vocabulary_words, wikidata_like_kg
    from kgc_kd.data.text import entity_texts
    from kgc_kd.models.plm import load_tokenizer

    torch.set_num_threads(args.encode_threads or args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer("minilm")
    t0 = time.perf_counter()
    kg = wikidata_like_kg(args.entities, words=vocabulary_words(tokenizer), num_test=NUM_QUERIES, seed=SEED)
    kg_s = time.perf_counter() - t0
    texts = entity_texts(kg)
    key = hashlib.sha256(f"{kg.name}|{LAYERS}|{MAX_LENGTH}|".encode() + "\n".join(texts).encode()).hexdigest()[:16]
    cache = out / f"entity_vectors_{args.entities}_{key}.npy"
    encoder = truncated_minilm()
    info: dict = {"kg": kg.name, "kg_build_s": kg_s, "entities": kg.num_entities, "vectors_cache": str(cache),
                  "encoder": f"all-MiniLM-L6-v2, first {LAYERS} of 6 layers, mean pooling, L2-normalised, "
                             f"max_length {MAX_LENGTH}, bf16 autocast, batch {ENCODE_BATCH}, "
                             f"{args.encode_threads or args.threads} threads"}
    record = cache.with_suffix(".json")  # how the cached vectors were encoded (time, rate, threads)
    if cache.is_file():
        vectors = np.load(cache, allow_pickle=False)
        info["encode_note"] = "read from the cache"
        if record.is_file():
            info["cached_encoding"] = json.loads(record.read_text())
        print(f"[encode] entity vectors read from {cache}", flush=True)
    else:
        t0 = time.perf_counter()
        v32 = encode(texts, tokenizer, encoder, what="entities")
        info["encode_s"] = time.perf_counter() - t0
        info["entities_per_s"] = len(texts) / info["encode_s"]
        vectors = v32.astype(np.float16)
        from kgc_kd.runtime.files import replace_atomically

        replace_atomically(cache, lambda f: np.save(f, vectors, allow_pickle=False))
        from kgc_kd.runtime.files import write_json_atomic

        write_json_atomic(record, {"encode_s": info["encode_s"], "entities_per_s": info["entities_per_s"],
                                   "threads": args.encode_threads or args.threads, "loadavg": os.getloadavg()})
    test = kg.test.numpy()[:NUM_QUERIES]
    qtexts = [f"{kg.entity_names[h]} {kg.relation_text(int(r))}" for h, r, _ in test]
    t0 = time.perf_counter()
    queries = encode(qtexts, tokenizer, encoder, what="queries")
    torch.set_num_threads(args.threads)
    info["query_encode_s"] = time.perf_counter() - t0
    info["queries"] = len(qtexts)
    info["query_text"] = "head name + ' ' + relation text (test triples, forward direction)"
    return {"vectors": vectors, "queries": queries, "info": info}


# ---- measuring ----------------------------------------------------------------------------------------------
def percentiles(times_s: list[float]) -> dict:
    ms = np.asarray(times_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "n": len(ms)}


def time_batch1(search, queries: np.ndarray, n: int, warmup: int) -> dict:
    """p50/p95 of `search(q[i:i+1])` over n queries, after `warmup` untimed ones."""
    for i in range(warmup):
        search(queries[i % len(queries)][None])
    times = []
    for i in range(n):
        q = queries[i % len(queries)][None]
        t0 = time.perf_counter()
        search(q)
        times.append(time.perf_counter() - t0)
    return percentiles(times)


def blas_threads(threads: int):
    """numpy's BLAS limited to `threads` (threadpoolctl where installed; else the BLAS default, said so)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext(), "BLAS default (threadpoolctl not installed)"
    return threadpool_limits(limits=threads, user_api="blas"), f"{threads} BLAS threads (threadpoolctl)"


def measure(args: argparse.Namespace, data: dict, save) -> dict:
    from kgc_kd.serve.index import EntityIndex, exact_search, recall_at_k, set_threads

    set_threads(args.threads)
    out = Path(args.out)
    vectors, queries = data["vectors"], data["queries"]
    v32 = np.ascontiguousarray(vectors, dtype=np.float32)
    digest = hashlib.sha256(vectors.tobytes()).hexdigest()
    limit, blas = blas_threads(args.threads)
    with limit:
        t0 = time.perf_counter()
        _, exact_ids = exact_search(v32, queries, 10)
        exact_all_s = time.perf_counter() - t0
        exact = time_batch1(lambda q: exact_search(v32, q, 10), queries, args.latency_queries, args.warmup)
    exact.update(batch_1000_s=exact_all_s, threads=blas)
    print(f"[exact] batch 1: p50 {exact['p50_ms']:.1f} ms, p95 {exact['p95_ms']:.1f} ms; "
          f"1,000 queries at once {exact_all_s:.2f} s ({blas})", flush=True)
    # how hard the search is: how far the true top-10 stand out from the rest, and how narrow the cone is
    s = queries[:100] @ v32.T
    top = -np.sort(-np.partition(s, s.shape[1] - 100, axis=1)[:, -100:], axis=1)
    shape = {"mean_vector_norm": float(np.linalg.norm(v32.mean(axis=0))), "top1": float(top[:, 0].mean()),
             "top10": float(top[:, 9].mean()), "top100": float(top[:, 99].mean()),
             "median": float(np.median(s, axis=1).mean()), "std": float(s.std(axis=1).mean())}
    del s
    print(f"[vectors] mean-vector norm {shape['mean_vector_norm']:.3f}; query scores: top-1 {shape['top1']:.3f}, "
          f"top-10 {shape['top10']:.3f}, median {shape['median']:.3f}, std {shape['std']:.4f}", flush=True)
    sweeps = {"hnsw": args.ef_search, "ivf": args.nprobe}
    indexes: list[dict] = []
    result = {"exact": exact, "indexes": indexes, "vectors_bytes_fp32": int(v32.nbytes), "score_shape": shape}
    configs = [(kind, {}) for kind in args.kinds]
    if "ivf" in args.kinds:
        at = args.kinds.index("ivf") + 1
        configs[at:at] = [("ivf", {"nlist": nlist}) for nlist in args.ivf_nlist_extra]
    for kind, params in configs:
        index_dir = out / "index"
        name = f"entity_index_{kind}" + "".join(f"_{k}{v}" for k, v in params.items())
        for p in index_dir.glob(f"{name}.*"):  # always a fresh build here: the build time is a figure
            p.unlink()
        index = EntityIndex.load_or_build(index_dir, vectors, digest, name=name, kind=kind, threads=args.threads,
                                          **params)
        faiss_file = index_dir / f"{name}.faiss"
        rows = []
        for value in sweeps.get(kind, [None]):
            if kind == "ivf" and value > index.meta["params"]["nlist"]:
                continue
            if value is not None:
                index.set_search(value)
            _, ids = index.search(queries, 10)
            rec = recall_at_k(ids, exact_ids, 10)
            lat = time_batch1(lambda q: index.search(q, 10), queries, args.latency_queries, args.warmup)
            row = {"search_param": index.search_param, "value": value, "recall@10": rec, **lat,
                   "speedup_p50": exact["p50_ms"] / lat["p50_ms"],
                   "default": not params and value == index.meta["params"].get(index.search_param or "")}
            rows.append(row)
            print(f"[{kind}{_built(index.meta)}] {index.search_param or 'exact'}={value or ''}: recall@10 {rec:.4f}, p50 {lat['p50_ms']:.2f} ms, "
                  f"p95 {lat['p95_ms']:.2f} ms, {row['speedup_p50']:.1f}x exact", flush=True)
        indexes.append({**index.meta, "bytes": faiss_file.stat().st_size if faiss_file.exists() else None,
                        "settings": rows})
        del index
        save(result)
    return result


def _built(meta: dict) -> str:
    """An IVF index's list count, shown beside its kind (the default's is 4 sqrt(E))."""
    return f" nlist={meta['params']['nlist']}" if meta["kind"] == "ivf" else ""


def table(result: dict) -> str:
    ex, data = result["exact"], result["data"]
    dim = result["indexes"][0]["dim"] if result["indexes"] else "?"
    lines = [f"Measured {result['date']} on {result['machine']['cores']} cores ({result['machine']['cpu']}), "
             f"{result['threads']} threads (FAISS; exact: {ex['threads']}), load average at start "
             f"{result['machine']['loadavg_at_start'][0]:.2f}; `{result['command']}`.",
             "",
             f"{data['entities']:,} entities x {dim} ({data['encoder']}); {data['queries']:,} test queries "
             f"({data['query_text']}); recall@10 against exact top-10 over them; latency at batch 1 over "
             f"{ex['n']} queries after warm-up.",
             ""]
    for ix in result["indexes"]:
        lines.append(f"- {ix['kind']} {json.dumps(ix['params'])}: built in {ix['build_s']:.1f} s, "
                     f"{(ix['bytes'] or 0) / 2**20:.0f} MiB on disk (fp32 vectors alone: "
                     f"{result['vectors_bytes_fp32'] / 2**20:.0f} MiB); build-time recall@10 {ix['recall@10']:.4f} "
                     f"({ix['recall_queries']})")
    lines += ["",
              "| search | recall@10 | p50 batch 1 | p95 batch 1 | speed-up (p50) |",
              "|---|---|---|---|---|",
              f"| exact (fp32 matmul + top-10) | 1.0000 | {ex['p50_ms']:.2f} ms | {ex['p95_ms']:.2f} ms | 1.0x |"]
    rows = [(ix, r) for ix in result["indexes"] for r in ix["settings"]]
    for ix, r in rows:
        setting = f"{r['search_param']}={r['value']}" if r["search_param"] else ""
        mark = " (default)" if r["default"] else ""
        lines.append(f"| {ix['kind']}{_built(ix)} {setting}{mark} | {r['recall@10']:.4f} | {r['p50_ms']:.2f} ms "
                     f"| {r['p95_ms']:.2f} ms | {r['speedup_p50']:.1f}x |")
    good = [(ix, r) for ix, r in rows if r["recall@10"] >= 0.95]
    best = max(good, key=lambda t: t[1]["speedup_p50"]) if good else None
    lines += ["", "Target (the issue): approximate >= 10x faster than exact at recall@10 >= 0.95. Reached: " +
              (f"{best[1]['speedup_p50']:.1f}x with {best[0]['kind']}{_built(best[0])} at "
               f"{best[1]['search_param']}={best[1]['value']} "
               f"(recall@10 {best[1]['recall@10']:.4f})." if best else "no setting reached recall@10 0.95.")]
    sh = result.get("score_shape")
    if sh:
        lines.append(f"How hard: the vectors lie in a narrow cone (mean-vector norm {sh['mean_vector_norm']:.2f}); "
                     f"a query's top-10 score is {sh['top10']:.3f} against a median of {sh['median']:.3f} "
                     f"(std {sh['std']:.4f}, over 100 queries): {(sh['top10'] - sh['median']) / sh['std']:.1f} std "
                     "above the crowd.")
    enc = data if data.get("encode_s") else data.get("cached_encoding")
    if enc:
        lines.append(f"Encoding the entities took {enc['encode_s']:.0f} s ({enc['entities_per_s']:.0f} texts/s, "
                     f"{enc.get('threads', '?')} thread(s)" + (", an earlier run; cached since)." if enc is not data else ")."))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.latency_queries < 200:
        raise SystemExit("error: --latency-queries must be >= 200")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    data = prepare(args)
    result = {"date": started, "machine": machine(), "threads": args.threads,
              "command": "python -m experiments.index_scale " + " ".join(argv if argv is not None else sys.argv[1:]),
              "data": data["info"]}
    from kgc_kd.runtime.files import write_json_atomic, write_text_atomic

    out = Path(args.out)

    def save(part: dict) -> None:  # after each index: a run cut short keeps what it measured
        result.update(part)
        write_json_atomic(out / "index_scale.json", result)
        write_text_atomic(out / "index_scale.md", table(result) + "\n")

    measure(args, data, save)
    text = table(result)
    print(text, flush=True)
    print(f"\nwrote {out / 'index_scale.json'} and {out / 'index_scale.md'}", flush=True)
    return result


if __name__ == "__main__":
    main()
