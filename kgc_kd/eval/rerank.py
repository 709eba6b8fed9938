"""SimKGC graph re-ranking: boost candidates near the query entity in the train graph.

Text encoders alone ignore graph structure; SimKGC adds a constant bonus to
every entity within ``hops`` hops of the query head (the head itself
included) in the undirected training graph, which mostly helps WN18RR.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, MutableMapping, Sequence

import torch
from torch import Tensor

__all__ = ["build_adjacency", "neighbourhood", "apply_rerank_"]

Adjacency = Sequence[Sequence[int]] | Mapping[int, Iterable[int]]


def build_adjacency(triples: Tensor | Sequence[Sequence[int]], num_entities: int) -> list[list[int]]:
    """Undirected neighbour lists from (h, r, t) triples; pass train triples only (no leakage)."""
    nbrs: list[set[int]] = [set() for _ in range(num_entities)]
    rows = triples.tolist() if isinstance(triples, Tensor) else triples
    for h, _, t in rows:
        nbrs[int(h)].add(int(t))
        nbrs[int(t)].add(int(h))
    return [sorted(s) for s in nbrs]


def _neighbours_of(adjacency: Adjacency, node: int) -> Iterable[int]:
    if isinstance(adjacency, Mapping):
        return adjacency.get(node, ())
    return adjacency[node]


def neighbourhood(adjacency: Adjacency, start: int, hops: int, max_nodes: int = 100_000) -> list[int]:
    """Sorted ids within ``hops`` hops of ``start`` (itself included).

    As in SimKGC, a neighbourhood larger than ``max_nodes`` yields ``[]``:
    hub entities would otherwise boost a large part of the graph.
    """
    if hops < 0:
        return []
    start = int(start)
    seen = {start}
    frontier = deque([start])
    for _ in range(hops):
        for _ in range(len(frontier)):
            node = frontier.popleft()
            for nb in _neighbours_of(adjacency, node):
                nb = int(nb)
                if nb not in seen:
                    seen.add(nb)
                    frontier.append(nb)
                    if len(seen) > max_nodes:
                        return []
    return sorted(seen)


def apply_rerank_(
    scores: Tensor,
    heads: Tensor,
    adjacency: Adjacency | None,
    hops: int,
    weight: float,
    *,
    max_nodes: int = 100_000,
    cache: MutableMapping[int, Tensor] | None = None,
) -> Tensor:
    """Add ``weight`` in place to ``scores[i, n]`` for each n near ``heads[i]``.

    ``cache`` may be shared across chunks of one evaluation, since BFS is the
    costly part and many queries share a head. ``hops <= 0`` or ``weight == 0``
    is a no-op (note: SimKGC with n_hop=0 would still boost the head itself).
    """
    if weight == 0 or hops <= 0 or adjacency is None:
        return scores
    heads = torch.as_tensor(heads).reshape(-1)
    if heads.shape[0] != scores.shape[0]:
        raise ValueError(f"heads has {heads.shape[0]} entries for {scores.shape[0]} score rows")
    if cache is None:
        cache = {}
    row_idx: list[Tensor] = []
    col_idx: list[Tensor] = []
    for i, h in enumerate(heads.tolist()):
        nb = cache.get(h)
        if nb is None:
            nb = torch.tensor(neighbourhood(adjacency, h, hops, max_nodes), dtype=torch.long)
            cache[h] = nb
        if nb.numel():
            col_idx.append(nb)
            row_idx.append(torch.full_like(nb, i))
    if not col_idx:
        return scores
    rows = torch.cat(row_idx).to(scores.device)
    cols = torch.cat(col_idx).to(scores.device)
    # (row, col) pairs are unique, so each entry gets the bonus exactly once.
    bonus = torch.full((rows.shape[0],), float(weight), dtype=scores.dtype, device=scores.device)
    scores.index_put_((rows, cols), bonus, accumulate=True)
    return scores
