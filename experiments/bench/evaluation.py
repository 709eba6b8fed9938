"""Evaluation speed and memory: encoding entities and queries, ranking, and how memory scales.

Three parts. On the real KG (the configured PLM and data): entities encoded/s, queries encoded/s,
queries ranked/s and the peak memory of one full filtered evaluation of the test split (entity
vectors computed once and shared by both directions, as in `lit/base.py`). On synthetic KGs with
random embeddings (1e3 .. 1e5 entities): ranking time and peak memory, which must grow as
O(chunk x entities) + the embeddings themselves, never O(queries x entities). On WN18RR (a KG-BERT
directory) with random unit vectors: SimKGC's graph re-ranking, the neighbourhood search (once per
run) timed apart from the re-ranked filtered ranking (every evaluation).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from experiments.bench import child_env
from experiments.bench.measure import PeakMemory, timed
from kgc_kd.data.datamodule import KGDataModule
from kgc_kd.data.kg import KG
from kgc_kd.data.negatives import KnownTriples, in_batch_mask
from kgc_kd.data.sources import load_kg
from kgc_kd.eval import NeighbourGraph, build_filter_index, evaluate_queries
from kgc_kd.models.biencoder import BiEncoder

KGBERT_FILES = ("train.tsv", "dev.tsv", "test.tsv", "entity2text.txt", "relation2text.txt")


def _batches(loader, key: str, device) -> list[dict]:
    return [{k: v.to(device) for k, v in b[key].items()} for b in loader]


@torch.no_grad()
def encode_all(encode, batches: list[dict]) -> torch.Tensor:
    return torch.cat([encode(b) for b in batches])


@torch.no_grad()
def real_evaluation(net: BiEncoder, dm: KGDataModule, *, chunk_size: int, warmup: int, repeats: int,
                    device: torch.device | str = "cpu", split: str = "test") -> dict:
    net = net.to(device).eval()
    kg = dm.kg
    ent_batches = _batches(dm.entity_dataloader(), "entity", device)
    q_loader = dm.query_dataloader(split)
    q_batches = _batches(q_loader, "hr", device)
    triples = torch.cat([b["triples"] for b in q_loader])
    n_e, n_q = kg.num_entities, len(triples)
    ent = timed(lambda: encode_all(net.encode_entity, ent_batches), warmup=warmup, repeats=repeats, device=device)
    qry = timed(lambda: encode_all(net.encode_query, q_batches), warmup=warmup, repeats=repeats, device=device)
    e_vecs = encode_all(net.encode_entity, ent_batches)
    q_vecs = encode_all(net.encode_query, q_batches)
    filt = kg.filter_index

    def rank():
        return evaluate_queries(q_vecs, e_vecs, triples, kg.num_relations, filt, chunk_size=chunk_size)

    rk = timed(rank, warmup=warmup, repeats=repeats, device=device)

    def full():  # what one evaluation costs end to end: entities once, queries of both directions, ranking
        return evaluate_queries(encode_all(net.encode_query, q_batches), encode_all(net.encode_entity, ent_batches),
                                triples, kg.num_relations, filt, chunk_size=chunk_size)

    with PeakMemory(device) as mem:
        full()
    full_t = timed(full, warmup=0, repeats=max(1, repeats // 2), device=device)
    return {
        "split": split, "num_entities": n_e, "num_queries": n_q, "chunk_size": chunk_size,
        "entities_per_s": n_e / ent["median_s"], "queries_encoded_per_s": n_q / qry["median_s"],
        "queries_ranked_per_s": n_q / rk["median_s"],
        "queries_evaluated_per_s": n_q / full_t["median_s"],
        "entity_encode_s": ent["median_s"], "query_encode_s": qry["median_s"], "rank_s": rk["median_s"],
        "full_eval_s": full_t["median_s"],
        "peak_mib": mem.peak_mib, "peak_delta_mib": mem.delta_mib, "memory_method": mem.method,
    }


def synthetic_ranking(num_entities: int, num_queries: int, *, dim: int = 384, num_relations: int = 10,
                      train_per_entity: int = 2, chunk_size: int = 256, repeats: int = 1, seed: int = 0,
                      device: torch.device | str = "cpu") -> dict:
    """Rank `num_queries` random queries (half tail, half head prediction) against `num_entities`
    random unit vectors, filtered by a random train graph of `train_per_entity` x E triples."""
    g = torch.Generator().manual_seed(seed)
    n_test = max(1, -(-num_queries // 2))  # ceil: an odd count keeps every query
    e = torch.randint(num_entities, (n_test + train_per_entity * num_entities, 2), generator=g)
    r = torch.randint(num_relations, (len(e), 1), generator=g)
    triples = torch.cat([e[:, :1], r, e[:, 1:]], dim=1)
    test, train = triples[:n_test], triples[n_test:]
    queries = torch.cat([test, torch.stack([test[:, 2], test[:, 1] + num_relations, test[:, 0]], 1)])[:num_queries]
    filt = build_filter_index([train, test], num_relations)
    ent = torch.nn.functional.normalize(torch.randn(num_entities, dim, generator=g), dim=1).to(device)
    qv = torch.nn.functional.normalize(torch.randn(len(queries), dim, generator=g), dim=1).to(device)

    def rank():
        return evaluate_queries(qv, ent, queries, num_relations, filt, chunk_size=chunk_size)

    with PeakMemory(device) as mem:
        metrics, _ = rank()
    t = timed(rank, warmup=0, repeats=repeats, device=device)
    emb_mib = (ent.numel() + qv.numel()) * 4 / 2**20
    return {
        "num_entities": num_entities, "num_queries": len(queries), "dim": dim, "chunk_size": chunk_size,
        "rank_s": t["median_s"], "queries_ranked_per_s": len(queries) / t["median_s"],
        "peak_mib": mem.peak_mib, "peak_delta_mib": mem.delta_mib, "memory_method": mem.method,
        "embeddings_mib": emb_mib,
        # one chunk's float scores + float comparison workspace: the working set the ranking is allowed
        "chunk_working_set_mib": chunk_size * num_entities * 8 / 2**20,
        "mrr": float(metrics["mrr"]),
    }


def rerank_problem(kg: KG, *, dim: int = 384, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Test queries of both directions (forward, then inverse) and random unit vectors for entities and queries."""
    g = torch.Generator().manual_seed(seed)
    queries = kg.with_inverse(kg.test)
    ent = torch.nn.functional.normalize(torch.randn(kg.num_entities, dim, generator=g), dim=1)
    qv = torch.nn.functional.normalize(torch.randn(len(queries), dim, generator=g), dim=1)
    return queries, ent, qv


def missing_kgbert_files(directory: str | Path) -> list[str]:
    d = Path(directory)
    return [f for f in KGBERT_FILES if not (d / f).is_file()]


def rerank_evaluation(data_dir: str | Path, *, hops: int, weight: float, warmup: int, repeats: int,
                      dim: int = 384, chunk_size: int = 256, device: torch.device | str = "cpu",
                      seed: int = 0, mask_batch: int = 1024) -> dict:
    """Filtered ranking of every test query (both directions) of a KG-BERT directory (WN18RR), from random
    unit vectors, with SimKGC's graph re-ranking. Timed apart: the train graph's layout, the neighbourhood
    search for the test heads (both once per run: every stage reuses them), and the ranking with and without
    the re-ranking bonus (every evaluation). The filter index is built before any timing. Also timed: the
    in-batch false-negative mask of one training batch of `mask_batch` examples (the collate function's
    share, on the CPU), and the dense all-pairs key search it replaces there."""
    kg = load_kg(str(data_dir), name_separator=", ")
    queries, ent, qv = rerank_problem(kg, dim=dim, seed=seed)
    ent, qv = ent.to(device), qv.to(device)
    filt = kg.filter_index
    heads = queries[:, 0]

    graph_t = timed(lambda: NeighbourGraph.from_triples(kg.train, kg.num_entities, device=device),
                    warmup=warmup, repeats=repeats, device=device)
    graph = NeighbourGraph.from_triples(kg.train, kg.num_entities, device=device)
    nbr_t = timed(lambda: graph.neighbourhoods(heads, hops), warmup=warmup, repeats=repeats, device=device)
    nbrs = graph.neighbourhoods(heads, hops)

    def rank(rerank: bool):
        return evaluate_queries(qv, ent, queries, kg.num_relations, filt, adjacency=nbrs if rerank else None,
                                rerank_hops=hops, rerank_weight=weight if rerank else 0.0, chunk_size=chunk_size)

    def scores_only():  # the part no ranking can skip: every query's float32 scores, chunk by chunk
        buf = torch.empty(min(chunk_size, len(qv)), len(ent), device=device)
        for start in range(0, len(qv), chunk_size):
            torch.mm(qv[start:start + chunk_size], ent.T, out=buf[: len(qv[start:start + chunk_size])])

    with PeakMemory(device) as mem:
        metrics, _ = rank(True)
    reranked = timed(lambda: rank(True), warmup=warmup, repeats=repeats, device=device)
    plain = timed(lambda: rank(False), warmup=warmup, repeats=repeats, device=device)
    matmul = timed(scores_only, warmup=warmup, repeats=repeats, device=device)
    # the training side of the same graph: the collate function's false-negative mask of one SimKGC-sized batch
    known = KnownTriples.train_of(kg)
    examples = kg.with_inverse(kg.train)
    batch = examples[torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))[:mask_batch]]
    mask_t = timed(lambda: in_batch_mask(batch, known), warmup=warmup, repeats=repeats, device="cpu")
    dense_t = timed(lambda: known.contains(batch[:, 0:1], batch[:, 1:2], batch[None, :, 2]), warmup=warmup,
                    repeats=repeats, device="cpu")
    sizes = nbrs.sizes.double()
    return {
        "data": kg.summary(), "split": "test", "num_entities": kg.num_entities, "num_queries": len(queries),
        "num_heads": len(nbrs), "hops": hops, "weight": weight, "dim": dim, "chunk_size": chunk_size,
        "mean_neighbourhood": float(sizes.mean()) if len(sizes) else 0.0,
        "cut_off_heads": int((sizes == 0).sum()), "max_nodes": nbrs.max_nodes,
        "graph_build_s": graph_t["median_s"], "neighbourhood_s": nbr_t["median_s"],
        "rank_rerank_s": reranked["median_s"], "rank_plain_s": plain["median_s"], "matmul_s": matmul["median_s"],
        "rank_rerank_spread_s": [reranked["min_s"], reranked["max_s"]],
        "neighbourhood_spread_s": [nbr_t["min_s"], nbr_t["max_s"]],
        "queries_per_s": len(queries) / reranked["median_s"],
        "peak_mib": mem.peak_mib, "peak_delta_mib": mem.delta_mib, "memory_method": mem.method,
        "mrr": float(metrics["mrr"]),
        "mask_batch": len(batch), "in_batch_mask_s": mask_t["median_s"], "in_batch_mask_dense_s": dense_t["median_s"],
    }


def synthetic_ranking_process(num_entities: int, num_queries: int, *, chunk_size: int = 256,
                              device: str = "cpu") -> dict:
    """`synthetic_ranking` in a fresh child process, so its peak resident memory is that of a process
    doing only this evaluation (torch included), not whatever the benchmark ran before it. The child
    reports its own VmHWM: the kernel's ru_maxrss of a child would include this process's size at fork."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "experiments.bench.evaluation", str(num_entities), str(num_queries), str(chunk_size),
           device]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":  # python -m experiments.bench.evaluation ENTITIES QUERIES CHUNK DEVICE
    import sys

    from kgc_kd.runtime.memory import peak_rss_mib

    e, q, c, dev = sys.argv[1:5]
    row = synthetic_ranking(int(e), int(q), chunk_size=int(c), device=dev)
    row["process_peak_mib"] = peak_rss_mib()
    print(json.dumps(row))
