"""Datasets of triples, queries and entities, and the collate functions that turn them into model inputs.

Collation runs once per batch on the loader's hot path, so it is tensor ops on whole batches
(`TokenCache.hr_batch` / `entity_batch`), never a Python loop over the examples.

The training collate runs on one intra-op thread (`one_thread`, restored afterwards), as PyTorch runs a
DataLoader worker: its ops are many and small (a 1,024-batch's (B, B) masks are 1 MB), so a second thread
adds its start-up and synchronisation to each op and gains little, and where the cores are busy (the
training process itself with data.num_workers=0, other processes) it waits for a core on every op. Measured
on the 2-core CPU here, 1,024-batches: WN18RR ~17 ms with one thread against ~48 ms (max 0.9 s) with two
while the machine was busy; on an idle machine two threads saved ~1.5 ms of ~6 ms at 1/10 of Wikidata5M.

With data.link_graph, training texts leave the example's partner out of their neighbour names (the head
text and head-only input omit the tail, the tail text omits the head); queries and ranking candidates at
evaluation show every neighbour (SimKGC's evaluate.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.utils.data import Dataset

from kgc_kd.data.negatives import KnownTriples, in_batch_mask
from kgc_kd.data.tokens import TokenCache


class RowDataset(Dataset):
    """Rows of a tensor (triples or entity ids); the collate function does all the work in one batch."""

    def __init__(self, rows: Tensor):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Tensor:
        return self.rows[i]


def _encode_hr(tokens: TokenCache, triples: Tensor, exclude: Tensor | None = None) -> dict[str, Tensor]:
    return tokens.hr_batch(triples[:, 0], triples[:, 1], exclude)


def _encode_entities(tokens: TokenCache, entities: Tensor, exclude: Tensor | None = None) -> dict[str, Tensor]:
    return tokens.entity_batch(entities, exclude)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread; the earlier count is restored, also on an exception."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class TrainCollator:
    """(h, r, t) rows -> hr / tail / head-only inputs plus SimKGC's masks, built on CPU in the workers.

    With `dedup_entities`, every distinct head/tail entity of the batch is encoded once ("entities",
    indexed by "tail_index"/"head_index") instead of once per occurrence: on small KGs a batch repeats
    most entities, and this halves the entity-encoder work. Vectors are identical in eval mode; in
    training, copies of one entity share a dropout mask. With data.link_graph "distinct" means the same
    entity with the same text: one whose neighbour list holds the example's partner is a separate input."""

    def __init__(self, tokens: TokenCache, known: KnownTriples, dedup_entities: bool = True):
        self.tokens, self.known, self.dedup = tokens, known, dedup_entities

    def __call__(self, rows: list[Tensor]) -> dict:
        with one_thread():  # see the module docstring
            return self._collate(torch.stack(rows))

    def _collate(self, triples: Tensor) -> dict:
        fn_mask, self_mask = in_batch_mask(triples, self.known)
        h, t = triples[:, 0], triples[:, 2]
        x_h, x_t = self.tokens.exclusion(h, t), self.tokens.exclusion(t, h)  # -1 without link_graph
        batch = {"triples": triples, "hr": _encode_hr(self.tokens, triples, x_h), "fn_mask": fn_mask,
                 "self_mask": self_mask}
        if self.dedup:
            n = self.tokens.num_entities + 1  # key = entity * n + (exclusion + 1): the text's identity
            keys, index = torch.unique(torch.cat([t * n + x_t + 1, h * n + x_h + 1]), return_inverse=True)
            b = len(triples)
            batch.update(entities=_encode_entities(self.tokens, keys // n, keys % n - 1), tail_index=index[:b],
                         head_index=index[b:])
        else:
            batch.update(tail=_encode_entities(self.tokens, t, x_t), head=_encode_entities(self.tokens, h, x_h))
        return batch


class _TokensCollator:
    def __init__(self, tokens: TokenCache):
        self.tokens = tokens


class QueryCollator(_TokensCollator):
    """Evaluation queries: only the hr side is encoded; ranking happens against all entities."""

    def __call__(self, rows: list[Tensor]) -> dict:
        rows = torch.stack(rows)
        triples = rows[:, :3]
        batch = {"triples": triples, "hr": _encode_hr(self.tokens, triples)}
        if rows.shape[1] > 3:  # a 4th column numbers the queries, so copies padded in by DDP can be dropped
            batch["query_index"] = rows[:, 3]
        return batch


class EntityCollator(_TokensCollator):
    """All entities, for the entity matrix that queries are ranked against."""

    def __call__(self, rows: list[Tensor]) -> dict:
        ids = torch.stack(rows)
        return {"entity_ids": ids, "entity": _encode_entities(self.tokens, ids)}
