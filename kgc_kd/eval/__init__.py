"""Filtered link-prediction evaluation for text bi-encoders: ranks, metrics, filter index, re-ranking (no Lightning).
May import runtime only; data, models, lit and chain build on it."""

from .evaluator import RankingOutput, build_filter_index, evaluate_queries, rank_all_entities
from .filter import FilterIndex, QueryAnswers
from .metrics import direction_metrics, rank_metrics
from .ranks import RANK_TYPES, Ranks, rank_gold
from .rerank import NeighbourGraph, Neighbourhoods, apply_rerank_

__all__ = [
    "FilterIndex",
    "QueryAnswers",
    "RANK_TYPES",
    "Ranks",
    "RankingOutput",
    "NeighbourGraph",
    "Neighbourhoods",
    "apply_rerank_",
    "build_filter_index",
    "direction_metrics",
    "evaluate_queries",
    "rank_all_entities",
    "rank_gold",
    "rank_metrics",
]
