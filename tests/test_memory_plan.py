"""The evaluation memory plan: byte counts by hand, the chunk the budget allows, and the Wikidata5M target."""

import pytest
import torch

from kgc_kd.eval.memory_plan import (
    GB,
    GIB,
    KNOWN_PAIR_BYTES,
    UPCAST_BLOCK_ROWS,
    budget_bytes,
    chunk_row_bytes,
    entity_dtype,
    evaluation_memory_plan,
    query_chunk_rows,
    search_batch_heads,
)

WIKIDATA5M_ENTITIES = 4_594_485
WIKIDATA5M_VALID_QUERIES = 2 * 5_163


@pytest.mark.parametrize("precision,dtype", [
    ("bf16-mixed", torch.bfloat16), ("bf16-true", torch.bfloat16), ("16-mixed", torch.float16),
    ("16-true", torch.float16), ("32-true", torch.float32), ("64-true", torch.float32), (None, torch.float32),
    (32, torch.float32), ("transformer-engine", torch.float32),
])
def test_entity_dtype_follows_the_run_precision(precision, dtype):
    assert entity_dtype(precision) == dtype


def test_budget_in_bytes():
    assert budget_bytes(None) is None
    assert budget_bytes(8.0) == 8 * 10**9 == 8 * GB
    assert budget_bytes(0.5) == 500_000_000


def test_chunk_row_bytes_hand_computed():
    # 100 entities, 8 dims: float32 scores + comparisons (2 x 4 x 100) + the float32 query row (4 x 8)
    assert chunk_row_bytes(100, 8, rerank=False) == 800 + 32
    # re-rank: 100 entities unpack to 128 (two int64 words of bits): float32 bonus 512, 16 packed bytes, 128
    # bytes of their int64 look-up indices
    assert chunk_row_bytes(100, 8, rerank=True) == 832 + 512 + 16 + 128


def test_query_chunk_rows_is_the_smaller_of_chunk_size_and_the_budget():
    row = chunk_row_bytes(100, 8, rerank=False)  # 832
    assert query_chunk_rows(100, 8, 50, chunk_size=7, memory_budget=None, rerank=False) == 7
    assert query_chunk_rows(100, 8, 5, chunk_size=7, memory_budget=None, rerank=False) == 5  # fewer queries
    assert query_chunk_rows(100, 8, 50, chunk_size=7, memory_budget=3 * row, rerank=False) == 3
    assert query_chunk_rows(100, 8, 50, chunk_size=7, memory_budget=3 * row - 1, rerank=False) == 2
    assert query_chunk_rows(100, 8, 50, chunk_size=7, memory_budget=1, rerank=False) == 1  # never below one
    assert query_chunk_rows(100, 8, 0, chunk_size=7, memory_budget=None, rerank=False) == 0
    # bf16 matrix: the float32 entity block (100 x 8 x 4 = 3,200 bytes) comes off the budget first
    assert query_chunk_rows(100, 8, 50, chunk_size=7, memory_budget=3200 + 3 * row, rerank=False,
                            dtype_bytes=2) == 3
    with pytest.raises(ValueError):
        query_chunk_rows(100, 8, 50, chunk_size=0, memory_budget=None, rerank=False)
    with pytest.raises(ValueError):
        query_chunk_rows(100, 8, 50, chunk_size=7, memory_budget=0, rerank=False)


def test_search_batch_heads_hand_computed():
    # 99 entities: 6 word matrices of 100 rows x 8 bytes = 4,800 bytes per 64 heads
    assert search_batch_heads(99, batch_heads=8192, memory_budget=None) == 8192
    assert search_batch_heads(99, batch_heads=100, memory_budget=None) == 128  # whole words of 64 heads
    assert search_batch_heads(99, batch_heads=8192, memory_budget=3 * 4800) == 192
    assert search_batch_heads(99, batch_heads=8192, memory_budget=10) == 64  # never below one word
    with pytest.raises(ValueError):
        search_batch_heads(99, batch_heads=0, memory_budget=None)


def test_plan_hand_computed_float32():
    plan = evaluation_memory_plan(100, 8, 20, dtype_bytes=4, chunk_size=7, topk=3, known_pairs=11)
    parts = plan["parts_bytes"]
    assert parts["entity_matrix"] == 100 * 8 * 4
    assert parts["query_vectors"] == 20 * 8 * 4
    assert parts["score_chunk"] == parts["compare_chunk"] == 7 * 100 * 4
    assert parts["query_chunk_fp32"] == 7 * 8 * 4
    assert parts["entity_upcast_block"] == 0 and parts["rerank_chunk"] == 0 and parts["rerank_search"] == 0
    assert parts["rerank_neighbourhoods"] == 0 and parts["entity_gather_batch"] == 0
    assert parts["known_answers"] == 11 * KNOWN_PAIR_BYTES == 11 * 45
    assert parts["topk"] == 20 * 3 * 12
    held = 3200 + 640 + 495 + 720
    scratch = 2800 + 2800 + 224
    assert plan["held_bytes"] == held and plan["ranking_scratch_bytes"] == scratch
    assert plan["total_bytes"] == held + scratch == 10_879
    assert plan["bytes_per_entity"] == pytest.approx(108.79)
    assert plan["chunk_rows"] == 7 and plan["within_budget"]


def test_plan_hand_computed_bf16_ddp_rerank_with_a_budget():
    # 2 ranks rank 10 of the 20 queries each; the budget holds 3 re-ranked rows after the float32 block
    row = chunk_row_bytes(100, 8, rerank=True)  # 1,488
    budget = 100 * 8 * 4 + 3 * row
    plan = evaluation_memory_plan(100, 8, 20, dtype_bytes=2, chunk_size=7, memory_budget=budget, rerank=True,
                                  rerank_heads=12, world_size=2, entity_batch_size=5)
    parts = plan["parts_bytes"]
    assert plan["queries_per_rank"] == 10 and plan["chunk_rows"] == 3
    assert parts["entity_matrix"] == 100 * 8 * 2
    assert parts["query_vectors"] == 10 * 8 * 2
    assert parts["entity_gather_batch"] == 2 * 5 * 8 * 2
    assert parts["entity_upcast_block"] == 100 * 8 * 4
    assert parts["rerank_chunk"] == 3 * (512 + 16 + 128)
    assert parts["rerank_neighbourhoods"] == 12 * 128 // 8
    # the budget holds (budget // 4,848) = 1 word of 64 heads: 6 x 101 x 8 bytes
    assert plan["search_batch_heads"] == 64 and parts["rerank_search"] == 4848
    scratch = 2 * 3 * 400 + 3 * 32 + 3200 + 3 * 656
    assert plan["ranking_scratch_bytes"] == scratch == budget
    assert plan["total_bytes"] == 1600 + 160 + 160 + 192 + scratch
    assert plan["within_budget"]


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError):
        evaluation_memory_plan(100, 8, 20, dtype_bytes=8)
    with pytest.raises(ValueError):
        evaluation_memory_plan(100, 8, 20, world_size=0)


def test_upcast_block_is_bounded():
    assert evaluation_memory_plan(10**6, 4, 1, dtype_bytes=2)["parts_bytes"]["entity_upcast_block"] == \
        UPCAST_BLOCK_ROWS * 4 * 4


@pytest.mark.parametrize("dim,dtype_bytes", [(384, 2), (768, 2), (384, 4), (768, 4)])
def test_wikidata5m_plan_meets_the_40_gib_target(dim, dtype_bytes):
    """Full Wikidata5M with the default budget (8 GB), re-ranking on, the neighbourhoods of every valid and
    test head held (at most 2 x (5,163 + 5,133) heads)."""
    plan = evaluation_memory_plan(WIKIDATA5M_ENTITIES, dim, WIKIDATA5M_VALID_QUERIES, dtype_bytes=dtype_bytes,
                                  chunk_size=256, memory_budget=budget_bytes(8.0), rerank=True,
                                  rerank_heads=2 * (5_163 + 5_133), topk=10)
    assert plan["within_budget"]
    fixed = UPCAST_BLOCK_ROWS * dim * 4 if dtype_bytes == 2 else 0
    assert plan["chunk_rows"] == (8 * GB - fixed) // chunk_row_bytes(WIKIDATA5M_ENTITIES, dim, rerank=True)
    assert plan["total_bytes"] <= 40 * GIB
