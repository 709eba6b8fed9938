"""How many bytes a full filtered evaluation holds, part by part, and the query chunk that fits a budget.

The ranking (`rank_all_entities`) and the memory plan read the same per-row and per-part byte counts from
this module, so the chunk the evaluation scores at once and the figure the plan reports cannot drift apart.

What an evaluation holds on its device (E entities, D dims, Q queries of this rank, dtype of b bytes):

- the entity matrix, E x D x b, allocated once and filled batch by batch while the entity loader runs
  (b = 2 for bf16/fp16 runs, 4 otherwise: `entity_dtype`); under DDP every rank holds the whole matrix
  (each rank encodes its share and the batches are all-gathered into it) plus one gathered batch;
- this rank's query vectors, Q x D x b (DDP: about Q / world_size; never every rank's);
- per chunk of `rows` queries, float32 scratch that is reused by every chunk: the scores and the
  comparison workspace (2 x rows x E x 4), the query chunk upcast to float32 (rows x D x 4), an entity
  block upcast to float32 when the matrix is low precision (`UPCAST_BLOCK_ROWS` x D x 4: scores are float32
  dot products of the stored values, as before, never rounded to bf16), and with re-ranking the unpacked
  bonus (rows x E' x 4, E' = E rounded up to 64) and its byte look-up (rows x E' x 9 / 8);
- known answers: `KNOWN_PAIR_BYTES` per (query, known answer) pair (index pairs and the rank counter's
  copies; sized by the filter, not by E);
- with re-ranking, the neighbourhood bitsets of the searched heads (H x E' / 8, held for the run) and, while
  they are built, the search's word matrices (`SEARCH_WORD_MATRICES` x (E + 1) x 8 bytes per 64 heads
  searched together; the search runs before the ranking, so the peak is the larger of the two scratches);
- top-k: Q x k x 12 bytes (ids and scores).

A byte budget (`eval.memory_budget_gb`, 10^9 bytes) bounds the scratch that grows with the chunk and with the
heads searched at once: the chunk is min(`eval.chunk_size`, what fits), the search batch likewise. The matrix,
the neighbourhoods and the known answers are set by the data, not by the budget; the plan reports them.
"""

from __future__ import annotations

import math

import torch

__all__ = ["GB", "GIB", "KNOWN_PAIR_BYTES", "SEARCH_WORD_MATRICES", "UPCAST_BLOCK_ROWS", "entity_dtype",
           "budget_bytes", "chunk_row_bytes", "chunk_fixed_bytes", "query_chunk_rows", "search_batch_heads",
           "search_bytes_per_64_heads", "evaluation_memory_plan"]

GB = 10**9  # the budget's unit (eval.memory_budget_gb)
GIB = 2**30  # the plan's figures are also given in GiB, as GPU memory is quoted

# (query, answer) pair: the int64 (rows, cols) the filter returns, the counter's own int64 rows/cols after
# dropping the gold, its int64 flat positions, float32 gathered scores and the bool keep mask
KNOWN_PAIR_BYTES = 8 + 8 + 8 + 8 + 8 + 4 + 1
# neighbourhood search per 64 heads: two (E + 1)-row word matrices and the gather of at most E + 1 rows during
# the hops; the bit transpose to per-head rows then holds the result and up to four copies of it
SEARCH_WORD_MATRICES = 6
UPCAST_BLOCK_ROWS = 32_768  # entity rows upcast to float32 at a time when the matrix is bf16/fp16
TOPK_BYTES = 8 + 4  # int64 id + float32 score


def entity_dtype(precision: str | int | None) -> torch.dtype:
    """The dtype evaluation stores entity and query vectors in, from a Lightning precision string: bf16 for
    bf16 runs, fp16 for 16-bit runs, float32 otherwise (ranking always compares float32 scores)."""
    p = str(precision or "32")
    if p.startswith("bf16"):
        return torch.bfloat16
    if p.split("-")[0] == "16":
        return torch.float16
    return torch.float32


def budget_bytes(memory_budget_gb: float | None) -> int | None:
    """`eval.memory_budget_gb` in bytes (None: no budget, the chunk is eval.chunk_size)."""
    return None if memory_budget_gb is None else int(float(memory_budget_gb) * GB)


def _padded(num_entities: int) -> int:
    """Entities per unpacked re-rank row: E rounded up to whole int64 words of bits."""
    return -(-num_entities // 64) * 64


def chunk_row_bytes(num_entities: int, dim: int, *, rerank: bool) -> int:
    """Scratch bytes per query row of a chunk: float32 scores and comparisons over every entity, the row's
    float32 query vector and, with re-ranking, its unpacked bonus row and the byte look-up behind it."""
    row = 2 * 4 * num_entities + 4 * dim
    if rerank:
        width = _padded(num_entities)
        row += 4 * width + width // 8 + width  # float32 bonus, packed bytes, their int64 indices
    return row


def chunk_fixed_bytes(num_entities: int, dim: int, *, dtype_bytes: int) -> int:
    """Ranking scratch that does not grow with the chunk: the float32 entity block of a low-precision matrix."""
    return min(UPCAST_BLOCK_ROWS, num_entities) * dim * 4 if dtype_bytes < 4 else 0


def query_chunk_rows(num_entities: int, dim: int, num_queries: int, *, chunk_size: int,
                     memory_budget: int | None, rerank: bool, dtype_bytes: int = 4) -> int:
    """Queries scored at once: `chunk_size`, fewer where the budget (bytes, less the fixed scratch) holds fewer
    rows, never below 1, never more than there are queries (0 for none)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    rows = chunk_size
    if memory_budget is not None:
        if memory_budget <= 0:
            raise ValueError(f"the memory budget must be > 0 bytes, got {memory_budget}")
        free = memory_budget - chunk_fixed_bytes(num_entities, dim, dtype_bytes=dtype_bytes)
        rows = min(rows, max(1, free // chunk_row_bytes(num_entities, dim, rerank=rerank)))
    return min(rows, num_queries)


def search_bytes_per_64_heads(num_entities: int) -> int:
    return SEARCH_WORD_MATRICES * (num_entities + 1) * 8


def search_batch_heads(num_entities: int, *, batch_heads: int, memory_budget: int | None) -> int:
    """Heads searched together by the re-rank neighbourhood search: `batch_heads` rounded up to 64, fewer
    (a multiple of 64, at least 64) where the budget holds fewer."""
    if batch_heads < 1:
        raise ValueError(f"batch_heads must be >= 1, got {batch_heads}")
    words = -(-batch_heads // 64)
    if memory_budget is not None:
        words = min(words, max(1, memory_budget // search_bytes_per_64_heads(num_entities)))
    return 64 * words


def evaluation_memory_plan(num_entities: int, dim: int, num_queries: int, *, dtype_bytes: int = 4,
                           chunk_size: int = 256, memory_budget: int | None = None, rerank: bool = False,
                           rerank_heads: int | None = None, search_heads: int = 8192, known_pairs: int = 0,
                           topk: int = 0, world_size: int = 1, entity_batch_size: int = 0) -> dict:
    """Bytes of each part of one evaluation on one rank's device (see the module docstring), the peak total
    and bytes per entity. `num_queries`: all queries of the split (a rank ranks ceil(Q / world_size));
    `memory_budget` in bytes (None: `chunk_size` as given); `rerank_heads`: distinct heads whose
    neighbourhoods are held (default: one per query); `known_pairs`: (query, known answer) pairs of this
    rank's queries; `entity_batch_size`: the eval batch all-gathered under DDP (0: not counted)."""
    if dtype_bytes not in (2, 4):
        raise ValueError(f"dtype_bytes must be 2 (bf16/fp16) or 4 (float32), got {dtype_bytes}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    e, d = int(num_entities), int(dim)
    q_rank = -(-int(num_queries) // world_size)
    rows = query_chunk_rows(e, d, q_rank, chunk_size=chunk_size, memory_budget=memory_budget, rerank=rerank,
                            dtype_bytes=dtype_bytes)
    width = _padded(e)
    held = {
        "entity_matrix": e * d * dtype_bytes,
        "query_vectors": q_rank * d * dtype_bytes,
        "entity_gather_batch": (world_size * entity_batch_size * d * dtype_bytes) if world_size > 1 else 0,
        "known_answers": int(known_pairs) * KNOWN_PAIR_BYTES,
        "topk": q_rank * min(int(topk), e) * TOPK_BYTES,
        "rerank_neighbourhoods": ((q_rank if rerank_heads is None else int(rerank_heads)) * width // 8
                                  if rerank else 0),
    }
    chunk = {
        "score_chunk": rows * e * 4,
        "compare_chunk": rows * e * 4,
        "query_chunk_fp32": rows * d * 4,
        "entity_upcast_block": chunk_fixed_bytes(e, d, dtype_bytes=dtype_bytes),
        "rerank_chunk": rows * (4 * width + width // 8 + width) if rerank else 0,
    }
    heads = search_batch_heads(e, batch_heads=search_heads, memory_budget=memory_budget) if rerank else 0
    search = {"rerank_search": (heads // 64) * search_bytes_per_64_heads(e) if rerank else 0}
    ranking_scratch = sum(chunk.values())
    total = sum(held.values()) + max(ranking_scratch, search["rerank_search"])
    return {
        "num_entities": e, "dim": d, "num_queries": int(num_queries), "queries_per_rank": q_rank,
        "dtype_bytes": dtype_bytes, "world_size": world_size, "rerank": rerank,
        "chunk_size": chunk_size, "memory_budget_bytes": memory_budget, "chunk_rows": rows,
        "search_batch_heads": heads,
        "parts_bytes": {**held, **chunk, **search},
        "held_bytes": sum(held.values()), "ranking_scratch_bytes": ranking_scratch,
        "total_bytes": total, "total_gib": total / GIB, "bytes_per_entity": total / e if e else math.nan,
        "within_budget": memory_budget is None or max(ranking_scratch, search["rerank_search"]) <= memory_budget,
    }
