"""One step of the scale benchmark, in a process of its own: `python -m experiments.bench.scale_steps STEP ARGS`.

ARGS is a JSON object (the step's inputs: `num_entities`, `seed`, `threads`, paths, ...). The process
sets torch's intra-op threads (`threads`), runs the step's set-up (imports, the tokenizer, the graph the
step reads: whatever a run has already done before this step), then measures the step itself and prints
one JSON line:

- `seconds`: wall time of the measured part, plus the step's own inner timings (`kg_s`, `tokens_s`, ...);
- `start_rss_mib`: resident memory when the measured part starts (torch, the tokenizer, the inputs);
- `peak_growth_mib`: the high-water mark of resident memory while measuring, over that start (VmHWM is
  reset to the current RSS at the start through /proc/self/clear_refs, as `measure.PeakMemory` does);
- `kept_growth_mib`: resident memory after the step, its result still referenced and after a garbage
  collection, over the start: what a run keeps for the rest of its life;
- the step's own figures (batch times, sizes, whether a cache was read).

A fresh process per step makes peak and kept memory the step's alone: in the harness process they would
sit on whatever earlier steps left in the allocator. Steps read only the project's real code paths, as a
user's run calls them.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from experiments.bench.measure import PeakMemory
from kgc_kd.runtime.memory import rss_mib

# a step: its set-up, returning the measured part; that returns (figures, result kept referenced)
Measure = Callable[[], tuple[dict, object]]


# ---- shared set-up ------------------------------------------------------------------------------------------
def _tokenizer(plm: str):
    from kgc_kd.models.plm import load_tokenizer

    return load_tokenizer(plm)


def _words(tokenizer) -> list[str]:
    from experiments.bench.wikidata_like import vocabulary_words

    return vocabulary_words(tokenizer)


def _kg(args: dict, words: list[str]):
    from experiments.bench.wikidata_like import wikidata_like_kg

    return wikidata_like_kg(int(args["num_entities"]), words=words, seed=int(args["seed"]))


def _train_triples(args: dict) -> tuple[torch.Tensor, int]:
    """The training graph alone (no texts): Wikidata5M's shape at `num_entities`, and its relation count."""
    from experiments.bench.wikidata_like import WIKIDATA5M, wikidata_like_triples

    return wikidata_like_triples(int(args["num_entities"]), seed=int(args["seed"])), WIKIDATA5M["relations"]


def _with_inverse(triples: torch.Tensor, num_relations: int) -> torch.Tensor:
    """The rows KG.with_inverse makes ((h, r, t) then (t, r + R, h)), for a graph held without its texts."""
    return torch.cat([triples, torch.stack([triples[:, 2], triples[:, 1] + num_relations, triples[:, 0]], 1)])


def _load_or_build(kg, tokenizer, args: dict):
    """The token table as a run gets it: from the disk cache under `cache_dir` (built there if absent)."""
    from kgc_kd.data.tokens import TokenCache

    return TokenCache.load_or_build(kg, tokenizer, max_length=int(args["max_length"]), cache_dir=args["cache_dir"],
                                    link_graph=bool(args.get("link_graph", False)))


def _files(directory: str | Path) -> dict[str, int]:
    """Every file under `directory` with its modification time: what a step wrote there, compared before/after."""
    d = Path(directory)
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()} if d.is_dir() else {}


def _batch_times(fn: Callable[[torch.Tensor], object], examples: torch.Tensor, *, batch_size: int, batches: int,
                 warmup: int, seed: int) -> dict:
    """ms per call of fn on consecutive batches of one shuffled pass over `examples` (as a shuffled loader
    draws them), after `warmup` calls on batches of their own."""
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))
    need = min(warmup + batches, len(examples) // batch_size)
    if need <= warmup:
        raise ValueError(f"{len(examples):,} examples make no timed batch of {batch_size} after {warmup} warm-up")
    times, cpu = [], []  # wall and this process's CPU time: on a shared machine the two tell load from work
    for i in range(need):
        batch = examples[order[i * batch_size:(i + 1) * batch_size]]
        start, start_cpu = time.perf_counter(), time.process_time()
        fn(batch)
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - start))
            cpu.append(1000 * (time.process_time() - start_cpu))
    return {"batch_size": batch_size, "batches": len(times), "warmup": warmup, "median_ms": statistics.median(times),
            "max_ms": max(times), "mean_ms": statistics.fmean(times), "median_cpu_ms": statistics.median(cpu)}


# ---- the steps ----------------------------------------------------------------------------------------------
def kg_step(args: dict) -> Measure:
    """The KG alone (ids, names, descriptions as Python strings; triples): its share of data preparation."""
    words = _words(_tokenizer(args["plm"]))

    def measure():
        kg = _kg(args, words)
        return {"num_entities": kg.num_entities, "num_triples": len(kg.train) + len(kg.valid) + len(kg.test),
                "text_chars": sum(map(len, kg.entity_names)) + sum(map(len, kg.entity_descs))}, kg
    return measure


def tokens_step(args: dict) -> Measure:
    """Data preparation as a run does it: the KG, then its token table (TokenCache.load_or_build under
    `cache_dir`). Run twice in fresh processes: the first builds the cache, the second should read it."""
    tokenizer = _tokenizer(args["plm"])
    words = _words(tokenizer)
    before = _files(args["cache_dir"])

    def measure():
        t0 = time.perf_counter()
        kg = _kg(args, words)
        t1 = time.perf_counter()
        tokens = _load_or_build(kg, tokenizer, args)
        t2 = time.perf_counter()
        after = _files(args["cache_dir"])
        wrote = sorted(k for k, v in after.items() if before.get(k) != v)
        return {"num_entities": kg.num_entities, "link_graph": bool(args.get("link_graph", False)),
                "kg_s": t1 - t0, "tokens_s": t2 - t1, "cache_files_before": len(before),
                "cache_files_written": len(wrote),
                "read_cache": bool(before) and not wrote}, (kg, tokens)
    return measure


def collate_step(args: dict) -> Measure:
    """The training collate's false-negative mask (`in_batch_mask`) against the train triples and their
    inverses (`KnownTriples(rows, E, 2R)`, as `KnownTriples.train_of` builds it), on batches of
    `batch_size` train + inverse rows; the key set's build time apart."""
    from kgc_kd.data.negatives import KnownTriples, in_batch_mask

    train, num_relations = _train_triples(args)
    examples = _with_inverse(train, num_relations)
    n = int(args["num_entities"])
    del train

    def measure():
        t0 = time.perf_counter()
        known = KnownTriples(examples, n, 2 * num_relations)
        build_s = time.perf_counter() - t0
        times = _batch_times(lambda b: in_batch_mask(b, known), examples, batch_size=int(args["batch_size"]),
                             batches=int(args["batches"]), warmup=int(args["warmup"]), seed=int(args["seed"]))
        return {"num_entities": n, "num_keys": len(examples), "known_build_s": build_s, **times}, known
    return measure


def train_collate_step(args: dict) -> Measure:
    """The whole TrainCollator (mask, hr / entity inputs, de-duplication) on the KG with its token table
    read from the disk cache the tokens step wrote; batches of train + inverse rows as the loader draws them."""
    from kgc_kd.data.batching import TrainCollator
    from kgc_kd.data.negatives import KnownTriples

    tokenizer = _tokenizer(args["plm"])
    kg = _kg(args, _words(tokenizer))
    tokens = _load_or_build(kg, tokenizer, args)
    examples = kg.with_inverse(kg.train)

    def measure():
        t0 = time.perf_counter()
        collate = TrainCollator(tokens, KnownTriples.train_of(kg))
        build_s = time.perf_counter() - t0
        times = _batch_times(lambda b: collate(list(b)), examples, batch_size=int(args["batch_size"]),
                             batches=int(args["batches"]), warmup=int(args["warmup"]), seed=int(args["seed"]))
        return {"num_entities": kg.num_entities, "num_keys": len(examples), "known_build_s": build_s, **times}, collate
    return measure


def filter_step(args: dict) -> Measure:
    """The filtered setting's index over train + valid + test, both directions (`KG.filter_index`)."""
    kg = _kg(args, _words(_tokenizer(args["plm"])))

    def measure():
        index = kg.filter_index
        return {"num_entities": kg.num_entities,
                "num_triples": len(kg.train) + len(kg.valid) + len(kg.test)}, index
    return measure


def simkgc_write_step(args: dict) -> Measure:
    """Write the KG in SimKGC's preprocessed layout (entities.json, {train,valid,test}.txt.json) under `dir`,
    as SimKGC's preprocess.py does (json.dump with indent=4). Set-up for `simkgc_json`: not a target."""
    kg = _kg(args, _words(_tokenizer(args["plm"])))
    d = Path(args["dir"])

    def dump(path: Path, items) -> int:  # json.dump(list, indent=4), one item at a time: no list of dicts
        with open(path, "w", encoding="utf-8") as f:
            f.write("[")
            for i, item in enumerate(items):
                text = json.dumps(item, ensure_ascii=False, indent=4).replace("\n", "\n    ")
                f.write(("," if i else "") + "\n    " + text)
            f.write("\n]")
        return path.stat().st_size

    def measure():
        d.mkdir(parents=True, exist_ok=True)
        names, rel = kg.entity_names, kg.relation_texts
        size = dump(d / "entities.json", ({"entity_id": e, "entity": n, "entity_desc": s}
                                          for e, n, s in zip(kg.entity_ids, names, kg.entity_descs)))
        for split in ("train", "valid", "test"):
            size += dump(d / f"{split}.txt.json", ({"head_id": kg.entity_ids[h], "head": names[h], "relation": rel[r],
                                                    "tail_id": kg.entity_ids[t], "tail": names[t]}
                                                   for h, r, t in kg.split(split).tolist()))
        return {"num_entities": kg.num_entities, "file_mib": size / 2**20}, None
    return measure


def simkgc_json_step(args: dict) -> Measure:
    """Reading a SimKGC json directory into a KG (`kgc_kd.data.simkgc_json.load_simkgc_dir`)."""
    from kgc_kd.data.simkgc_json import load_simkgc_dir

    d = Path(args["dir"])
    size = sum(p.stat().st_size for p in d.glob("*.json"))

    def measure():
        kg = load_simkgc_dir(d)
        return {"num_entities": kg.num_entities, "num_triples": len(kg.train) + len(kg.valid) + len(kg.test),
                "file_mib": size / 2**20}, kg
    return measure


def eval_cpu_step(args: dict) -> Measure:
    """A filtered ranking on the CPU from random unit vectors (`evaluate_queries`, chunk `chunk_size`):
    `num_queries` train triples and their inverses against every entity, filtered by the whole graph. The
    measured part allocates the (E, D) entity and (Q, D) query matrices, so its peak growth is comparable
    with the evaluation memory plan at fp32."""
    from kgc_kd.eval import evaluate_queries
    from kgc_kd.eval.filter import FilterIndex

    train, num_relations = _train_triples(args)
    n, dim, q = int(args["num_entities"]), int(args["dim"]), int(args["num_queries"]) // 2
    index = FilterIndex.from_forward(train, num_relations)
    queries = _with_inverse(train[:q], num_relations)
    del train
    g = torch.Generator().manual_seed(int(args["seed"]))

    def unit(rows: int) -> torch.Tensor:
        v = torch.randn(rows, dim, generator=g)
        return v.div_(v.norm(dim=1, keepdim=True))

    def measure():
        ent, qv = unit(n), unit(len(queries))
        t0 = time.perf_counter()
        metrics, _ = evaluate_queries(qv, ent, queries, num_relations, index, chunk_size=int(args["chunk_size"]))
        return {"num_entities": n, "num_queries": len(queries), "dim": dim, "chunk_size": int(args["chunk_size"]),
                "rank_s": time.perf_counter() - t0, "mrr": float(metrics["mrr"])}, (ent, qv)
    return measure


def predict_export_step(args: dict) -> Measure:
    """Set-up for `predict_start`: an exported stage in `dir` as `ChainStore.export` writes one (the KG via
    `kg_export.save_kg`, the run's token table linked from the disk cache), with a tiny one-layer encoder
    over the configured tokenizer's vocabulary: start-up reads the KG, the tokens and the weights, and a tiny
    encoder keeps the first start's entity encoding (a model's speed, not start-up) short."""
    from transformers import BertConfig, BertModel

    from kgc_kd.data.kg_export import link_token_cache, save_kg
    from kgc_kd.models.biencoder import BiEncoder

    tokenizer = _tokenizer(args["plm"])
    kg = _kg(args, _words(tokenizer))
    tokens = _load_or_build(kg, tokenizer, args)
    torch.manual_seed(int(args["seed"]))
    encoder = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64,
                                   max_position_embeddings=max(64, int(args["max_length"]))), add_pooling_layer=False)
    d = Path(args["dir"])

    def measure():
        BiEncoder(encoder).eval().save_pretrained(d, tokenizer)
        save_kg(kg, d, max_length=int(args["max_length"]), link_graph=False)
        linked = link_token_cache(tokens.cache_path, d)
        return {"num_entities": kg.num_entities, "token_table_linked": linked is not None}, None
    return measure


def predict_start_step(args: dict) -> Measure:
    """`kgc_kd.predict` starting on the export `predict_export` wrote: the Predictor as `python -m
    kgc_kd.predict` builds it (KG, token table, weights, entity vectors), then one query ranked. Run twice:
    the first start encodes the entities (with the tiny encoder) and caches the vectors next to the export;
    the second is the start-up a user sees on every later call. The imports (transformers' modelling code:
    seconds on a busy machine, whatever the graph's size) are set-up, timed apart as `imports_s`."""
    t0 = time.perf_counter()
    import kgc_kd.models.plm  # noqa: F401  (transformers' AutoModel / PreTrainedModel, which the Predictor loads)
    from kgc_kd.predict import Predictor

    imports_s = time.perf_counter() - t0
    d = Path(args["dir"])

    def measure():
        t0 = time.perf_counter()
        pred = Predictor(d)
        t1 = time.perf_counter()
        pred.rank(pred.kg.entity_ids[0], pred.kg.relation_texts[0], 10)
        first_query_s = time.perf_counter() - t1
        return {"num_entities": pred.kg.num_entities, "imports_s": imports_s, "start_s": t1 - t0,
                "first_query_s": first_query_s}, pred
    return measure


STEPS: dict[str, Callable[[dict], Measure]] = {
    "kg": kg_step, "tokens": tokens_step, "collate": collate_step, "train_collate": train_collate_step,
    "filter": filter_step, "simkgc_write": simkgc_write_step, "simkgc_json": simkgc_json_step,
    "eval_cpu": eval_cpu_step, "predict_export": predict_export_step, "predict_start": predict_start_step,
}


def run_step(name: str, args: dict) -> dict:
    """Set up and measure step `name` in this process (see the module docstring for the figures)."""
    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    row = {"step": name, "threads": torch.get_num_threads()}
    measure = STEPS[name](args)
    gc.collect()
    start_rss = rss_mib()
    with PeakMemory("cpu") as mem:  # VmHWM reset to the resident memory here
        start = time.perf_counter()
        figures, result = measure()
        seconds = time.perf_counter() - start
    gc.collect()
    kept = rss_mib()
    row.update(seconds=seconds, start_rss_mib=start_rss, peak_growth_mib=mem.delta_mib,
               kept_growth_mib=None if kept is None or start_rss is None else max(0.0, kept - start_rss),
               memory_method=mem.method, **figures)
    del result
    return row


def main(argv: list[str]) -> None:
    name, args = argv[0], json.loads(argv[1])
    print(json.dumps(run_step(name, args)), flush=True)
    sys.stdout.flush()
    os._exit(0)  # the kept result is not torn down object by object: the figures are out


if __name__ == "__main__":  # python -m experiments.bench.scale_steps STEP '{"num_entities": ..., ...}'
    main(sys.argv[1:])
