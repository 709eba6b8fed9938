"""Filtered ranking of the gold entity against every entity, chunked over queries.

Only a (chunk, E) score block lives in memory at a time, so full-graph
evaluation fits on GPU even for large entity sets; the chunk is `chunk_size` queries, or fewer where a byte
budget holds fewer (`memory_plan.query_chunk_rows`, the same count the memory plan reports). The entity
matrix may be stored in bf16/fp16: it is never copied whole to float32; a block of entity rows at a time is
upcast, so every score is the float32 dot product of the stored values, as an upcast matrix gave, and ranking
compares float32 scores. Order per chunk follows
SimKGC: raw cosine scores -> graph re-rank -> filter known answers -> rank.
Known answers come from a `FilterIndex` as (query, entity) index pairs, found with
tensor ops; the ranking subtracts them from whole-row counts instead of masking a
(chunk, E) block. A plain (h, r) -> answers dict or a per-query list still works
(the readable reference, and what older callers pass).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .filter import FilterIndex, QueryAnswers
from .memory_plan import UPCAST_BLOCK_ROWS, query_chunk_rows
from .metrics import direction_metrics
from .ranks import RankCounter, Ranks
from .rerank import Adjacency, NeighbourGraph, Neighbourhoods

__all__ = ["RankingOutput", "rank_all_entities", "evaluate_queries", "build_filter_index"]


@dataclass
class RankingOutput:
    """Ranks per query, plus optional filtered top-k (ids, scores) on CPU.

    A top-k slot left without a valid candidate (all others filtered/NaN) has
    id -1 and score -inf.
    """

    ranks: Ranks
    topk_ids: Tensor | None
    topk_scores: Tensor | None


def build_filter_index(triple_sets: Iterable[Tensor | Sequence[Sequence[int]]], num_relations: int) -> FilterIndex:
    """Known answers for both directions: (h, r) -> tails and (t, r + R) -> heads.

    Pass train, valid and test triples (forward relations only, r < R).
    """
    parts = [torch.as_tensor(t, dtype=torch.long).reshape(-1, 3) for t in triple_sets]
    return FilterIndex.from_forward(torch.cat(parts) if parts else torch.zeros(0, 3, dtype=torch.long), num_relations)


def _known_pairs(known: Sequence[Tensor | Sequence[int]] | QueryAnswers,
                 device: torch.device) -> tuple[Tensor, Tensor]:
    """(rows, cols) of every known answer of every query, each position once, sorted by query."""
    if isinstance(known, QueryAnswers):
        rows, cols = known.pairs()  # distinct by construction, query by query
    else:
        lists = [torch.as_tensor(k, dtype=torch.long).reshape(-1) for k in known]
        lengths = torch.tensor([c.numel() for c in lists], dtype=torch.long)
        rows = torch.repeat_interleave(torch.arange(len(known)), lengths)
        cols = torch.cat(lists) if lists else torch.empty(0, dtype=torch.long)
        if len(cols):
            width = int(cols.max()) + 1
            codes = torch.unique(rows * width + cols)  # a plain list may repeat an answer; sorted by query
            rows, cols = codes // width, codes % width
    return rows.to(device), cols.to(device)


def _neighbourhoods(adjacency: Neighbourhoods | NeighbourGraph | Adjacency, heads: Tensor, hops: int,
                    num_entities: int, device: torch.device, memory_budget: int | None) -> Neighbourhoods:
    """The neighbourhoods of every head: precomputed ones (extended if a head is missing), else searched now."""
    if isinstance(adjacency, Neighbourhoods):
        if adjacency.hops != hops:
            raise ValueError(f"the neighbourhoods were built for {adjacency.hops} hops, the re-ranking asks {hops}")
        nbrs = adjacency.to(device).covering(heads)
    else:
        graph = adjacency if isinstance(adjacency, NeighbourGraph) else NeighbourGraph.from_adjacency(
            adjacency, num_entities)
        nbrs = graph.to(device).neighbourhoods(heads, hops, memory_budget=memory_budget)
    if nbrs.num_entities != num_entities:
        raise ValueError(f"the re-ranking graph has {nbrs.num_entities} entities, the ranking {num_entities}")
    return nbrs


def rank_all_entities(
    query_vecs: Tensor,
    entity_vecs: Tensor,
    gold: Tensor,
    known_answers: Sequence[Tensor | Sequence[int]] | QueryAnswers,
    *,
    heads: Tensor | None = None,
    adjacency: Neighbourhoods | NeighbourGraph | Adjacency | None = None,
    rerank_hops: int = 0,
    rerank_weight: float = 0.0,
    chunk_size: int = 256,
    memory_budget: int | None = None,
    topk: int = 0,
) -> RankingOutput:
    """Rank ``gold[i]`` among all entities for query ``i`` (filtered setting).

    ``known_answers[i]`` lists every true answer of query i; all but the gold
    are removed from the competition. Pass ``FilterIndex.lookup(h, r)`` for the
    vectorised path, or a per-query list. Scoring runs in float32 on
    ``entity_vecs``' device; results are returned on CPU. ``memory_budget`` (bytes, None: no bound) caps
    the per-chunk scratch: at most ``chunk_size`` queries are scored at once, fewer where it holds fewer.

    Re-ranking (``rerank_hops > 0`` and ``rerank_weight != 0``) needs the query ``heads`` and their
    neighbourhoods: best precomputed `Neighbourhoods` (built once per run for every head to come), or a
    `NeighbourGraph` / neighbour lists to search the heads of this call.
    """
    gold = _checked_gold(query_vecs, entity_vecs, gold, known_answers, chunk_size, topk)
    num_q, num_e = query_vecs.shape[0], entity_vecs.shape[0]
    device = entity_vecs.device
    rerank = (_RerankLookup.build(heads, adjacency, rerank_hops, rerank_weight, num_q, num_e, device, memory_budget)
              if rerank_hops > 0 and rerank_weight != 0 else None)
    k = min(topk, num_e)
    counter = _rank_counter(gold, known_answers, num_e, device)  # before the workspace: its scratch is gone then
    work = _Workspace.allocate(entity_vecs, num_q, chunk_size, memory_budget, rerank)
    tops: list[tuple[Tensor, Tensor]] = []
    with torch.no_grad():
        ent = entity_vecs.detach()
        for start in range(0, num_q, work.step):
            stop = min(start + work.step, num_q)
            scores = work.score(query_vecs[start:stop], ent, start, stop)
            counter.add(start, scores, work.compare[: stop - start])
            if k > 0:
                tops.append(_filtered_topk(scores, counter.excluded(start, stop), k))
    return _assemble(counter.ranks().cpu(), tops, k, topk, num_q)


def _checked_gold(query_vecs: Tensor, entity_vecs: Tensor, gold: Tensor,
                  known_answers: Sequence[Tensor | Sequence[int]] | QueryAnswers, chunk_size: int, topk: int) -> Tensor:
    """The input checks of `rank_all_entities`; returns `gold` as a flat long tensor."""
    if query_vecs.ndim != 2 or entity_vecs.ndim != 2 or query_vecs.shape[1] != entity_vecs.shape[1]:
        raise ValueError(
            f"need query_vecs (Q, D) and entity_vecs (E, D), got {tuple(query_vecs.shape)} "
            f"and {tuple(entity_vecs.shape)}"
        )
    num_q = query_vecs.shape[0]
    gold = torch.as_tensor(gold).long().reshape(-1)
    if gold.shape[0] != num_q or len(known_answers) != num_q:
        raise ValueError(f"gold ({gold.shape[0]}) and known_answers ({len(known_answers)}) must have {num_q} entries")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if topk < 0:
        raise ValueError(f"topk must be >= 0, got {topk}")
    return gold


@dataclass
class _RerankLookup:
    """What the graph re-ranking needs per query, looked up once: the heads' neighbourhoods, each query's slot in
    them and the weighted bit table."""

    nbrs: Neighbourhoods
    slots: Tensor
    table: Tensor

    @classmethod
    def build(cls, heads: Tensor | None, adjacency: Neighbourhoods | NeighbourGraph | Adjacency | None, hops: int,
              weight: float, num_q: int, num_e: int, device: torch.device,
              memory_budget: int | None) -> _RerankLookup:
        if heads is None or adjacency is None:
            raise ValueError("re-ranking needs both heads and adjacency")
        heads = torch.as_tensor(heads).long().reshape(-1)
        if heads.shape[0] != num_q:
            raise ValueError(f"heads has {heads.shape[0]} entries for {num_q} queries")
        heads = heads.to(device)
        nbrs = _neighbourhoods(adjacency, heads, hops, num_e, device, memory_budget)
        slots = nbrs.checked_slots(heads)
        table = nbrs.table(float(weight), torch.float32)  # the weight as SimKGC's float32 bonus holds it
        return cls(nbrs, slots, table)


@dataclass
class _Workspace:
    """One workspace for all chunks (scores, comparison results): a fresh (chunk, E) block per chunk would be
    released to the allocator each time and, with glibc's growing mmap threshold, kept as fragmented heap, so
    resident memory grew with the number of chunks instead of staying at one chunk's working set. Known answers
    are never a (chunk, E) mask: the counter subtracts them, top-k overwrites them. Everything per query (known
    answers, neighbourhood rows, the weighted bit table) is looked up once, so a chunk runs a fixed handful of
    operations: a busy machine pays per operation, not per element."""

    step: int  # queries per chunk
    scores: Tensor  # (rows, E) float32
    compare: Tensor  # (rows, E), the counter's comparison results
    upcast: Tensor | None  # (block rows, D) float32: a low-precision entity matrix, a block of rows at a time
    rerank: _RerankLookup | None
    bonus: Tensor | None  # rows * unpacked width, the re-ranking bonus of a chunk

    @classmethod
    def allocate(cls, entity_vecs: Tensor, num_q: int, chunk_size: int, memory_budget: int | None,
                 rerank: _RerankLookup | None) -> _Workspace:
        num_e, dim, device = entity_vecs.shape[0], entity_vecs.shape[1], entity_vecs.device
        rows_max = query_chunk_rows(num_e, dim, num_q, chunk_size=chunk_size, memory_budget=memory_budget,
                                    rerank=rerank is not None, dtype_bytes=entity_vecs.element_size())
        scores = torch.empty(rows_max, num_e, device=device)
        compare = torch.empty(rows_max, num_e, device=device)
        upcast = (torch.empty(min(UPCAST_BLOCK_ROWS, num_e), dim, device=device)
                  if entity_vecs.dtype != torch.float32 else None)  # never a float32 copy of the whole matrix
        bonus = (torch.empty(rows_max * rerank.nbrs.unpacked_width, device=device)
                 if rerank is not None else None)
        return cls(max(rows_max, 1), scores, compare, upcast, rerank, bonus)

    def score(self, queries: Tensor, ent: Tensor, start: int, stop: int) -> Tensor:
        """The float32 scores of queries `start:stop` (given as `queries`) against every entity, plus the
        re-ranking bonus: a view of the workspace."""
        q = queries.to(device=ent.device, dtype=torch.float32)
        scores = self.scores[: stop - start]
        if self.upcast is not None:
            block_rows = self.upcast.shape[0]
            for e0 in range(0, ent.shape[0], block_rows):
                e1 = min(e0 + block_rows, ent.shape[0])
                block = self.upcast[: e1 - e0].copy_(ent[e0:e1])
                torch.mm(q, block.T, out=scores[:, e0:e1])
        else:
            scores = torch.mm(q, ent.T, out=scores)
        if self.rerank is not None:  # + weight once per (query, neighbour); + 0 elsewhere changes nothing
            r = self.rerank
            scores.add_(r.nbrs.unpack(r.slots[start:stop], r.table, out=self.bonus))
        return scores


def _rank_counter(gold: Tensor, known_answers: Sequence[Tensor | Sequence[int]] | QueryAnswers, num_e: int,
                  device: torch.device) -> RankCounter:
    """The counter of every query's rank, with the known answers it subtracts (it keeps its own copies)."""
    known_rows, known_cols = _known_pairs(known_answers, device)
    return RankCounter(gold, num_e, known_rows, known_cols, device=device)


def _filtered_topk(scores: Tensor, excluded: tuple[Tensor, Tensor], k: int) -> tuple[Tensor, Tensor]:
    """(ids, scores) of a chunk's `k` best entities, known answers but the gold (`excluded`) and NaN scores left
    out (they overwrite `scores`); a slot without a candidate has id -1 and score -inf."""
    rows, cols = excluded
    scores[rows, cols] = float("-inf")
    filtered = scores.nan_to_num_(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    top_s, top_i = filtered.topk(k, dim=1)
    return top_i.masked_fill(torch.isneginf(top_s), -1), top_s


def _assemble(ranks: Ranks, tops: list[tuple[Tensor, Tensor]], k: int, topk: int, num_q: int) -> RankingOutput:
    """The ranks and, when asked for, the chunks' top-k joined on CPU (empty tensors without queries or
    entities)."""
    if k > 0 and not tops:  # no queries
        return RankingOutput(ranks, torch.empty(0, k, dtype=torch.long), torch.empty(0, k))
    if k > 0:
        return RankingOutput(ranks, torch.cat([i for i, _ in tops]).cpu(), torch.cat([s for _, s in tops]).cpu())
    if topk > 0:  # no entities at all
        return RankingOutput(ranks, torch.empty(num_q, 0, dtype=torch.long), torch.empty(num_q, 0))
    return RankingOutput(ranks, None, None)


def evaluate_queries(
    query_vecs: Tensor,
    entity_vecs: Tensor,
    triples: Tensor,
    num_relations: int,
    filter_index: FilterIndex | Mapping[tuple[int, int], Tensor | Sequence[int]],
    *,
    adjacency: Neighbourhoods | NeighbourGraph | Adjacency | None = None,
    rerank_hops: int = 0,
    rerank_weight: float = 0.0,
    chunk_size: int = 256,
    memory_budget: int | None = None,
    topk: int = 0,
) -> tuple[dict[str, float], RankingOutput]:
    """Metrics for query triples (h, r, t) with r in [0, 2R); r >= R are head predictions.

    ``filter_index`` maps (h, r) to its known answers: a `FilterIndex` (vectorised) or a plain dict.
    """
    triples = torch.as_tensor(triples).long()
    if triples.ndim != 2 or triples.shape[1] != 3:
        raise ValueError(f"triples must be (Q, 3), got {tuple(triples.shape)}")
    if triples.shape[0] != query_vecs.shape[0]:
        raise ValueError(f"{triples.shape[0]} triples for {query_vecs.shape[0]} query vectors")
    h, r, t = triples.cpu().unbind(1)
    if triples.shape[0] and (int(r.min()) < 0 or int(r.max()) >= 2 * num_relations):
        raise ValueError(f"relation ids must lie in [0, {2 * num_relations}) (forward + inverse)")
    known: QueryAnswers | list[Tensor | Sequence[int]]
    if isinstance(filter_index, FilterIndex):
        if filter_index.num_relations_total != 2 * num_relations:
            raise ValueError(f"the filter index covers {filter_index.num_relations_total} relation ids, "
                             f"the queries {2 * num_relations} (forward + inverse)")
        known = filter_index.on(entity_vecs.device).lookup(h, r)  # on the ranking's device, copied there once
    else:
        empty = torch.empty(0, dtype=torch.long)
        known = [filter_index.get(key, empty) for key in zip(h.tolist(), r.tolist())]
    out = rank_all_entities(
        query_vecs,
        entity_vecs,
        t,
        known,
        heads=h,
        adjacency=adjacency,
        rerank_hops=rerank_hops,
        rerank_weight=rerank_weight,
        chunk_size=chunk_size,
        memory_budget=memory_budget,
        topk=topk,
    )
    metrics = direction_metrics(out.ranks, r >= num_relations)
    return metrics, out
