"""One LightningDataModule of KG triples, shared by the teacher and every student stage.

The KG is loaded once; tokenised inputs are cached per tokenizer fingerprint, so stages that share a
vocabulary (all of a distillation chain) never tokenise twice. With `token_cache_dir` (the chain passes
`<run.root>/token-cache`) the token tables are also kept on disk and memory-mapped
(`TokenCache.load_or_build`): DDP ranks share one copy and a later run reads it instead of tokenising.
Data-loader workers get the tables without a copy: forked ones share the mapping, spawned ones map the
file again (a pickled `TokenCache` carries its entry's path). `connect(tokenizer)` binds the tokenizer
after the model is built (the model decides which tokenizer applies).

Loader workers and pinned memory follow the device unless set (`data.num_workers`, `data.pin_memory`;
`resolve_loader`, called once by the chain, which records the result in report.json).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from kgc_kd.data.batching import EntityCollator, QueryCollator, RowDataset, TrainCollator
from kgc_kd.data.kg import KG
from kgc_kd.data.negatives import KnownTriples
from kgc_kd.data.sources import load_kg
from kgc_kd.data.tokens import TokenCache, tokenizer_fingerprint
from kgc_kd.eval.rerank import NeighbourGraph, Neighbourhoods
from kgc_kd.runtime.precision import uses_cuda

#: loader workers of a CUDA run whose data.num_workers is unset: enough to collate ahead of the GPU, capped so
#: DDP ranks on one node (each with its own workers) do not oversubscribe the cores
AUTO_CUDA_WORKERS = 4


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a SLURM allocation), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class LoaderSettings:
    num_workers: int
    pin_memory: bool
    why: str

    def as_dict(self) -> dict:
        return {"num_workers": self.num_workers, "pin_memory": self.pin_memory, "reason": self.why}


def resolve_loader(num_workers: int | None, pin_memory: bool | None, accelerator: str) -> LoaderSettings:
    """The DataLoaders' workers and pinning: an explicit value wins; unset (None), the device decides, as
    `precision.resolve_precision` decides the precision. Without CUDA: 0 workers (the collate is cheap next to
    a CPU step and a worker would compete with it for the cores) and no pinning (nothing to copy). On a CUDA
    run: min(4, cores) workers, so batches are collated while the GPU runs, and pinned memory, so Lightning's
    copy to the device is asynchronous."""
    cuda = uses_cuda(accelerator)
    parts = []
    if num_workers is None:
        num_workers = min(AUTO_CUDA_WORKERS, cpu_cores()) if cuda else 0
        parts.append(f"num_workers unset: {'CUDA run, min(4, CPU cores)' if cuda else 'no CUDA device'}")
    else:
        parts.append("num_workers set by data.num_workers")
    if pin_memory is None:
        pin_memory = cuda
        parts.append(f"pin_memory unset: {'CUDA run' if cuda else 'no CUDA device'}")
    else:
        parts.append("pin_memory set by data.pin_memory")
    return LoaderSettings(int(num_workers), bool(pin_memory), "; ".join(parts))


class KGDataModule(L.LightningDataModule):
    def __init__(
        self,
        source: str = "umls",
        *,
        kg: KG | None = None,
        max_length: int = 50,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        use_long_text: bool = True,
        dedup_entities: bool = True,
        shuffle: bool = True,
        name_separator: str | None = None,
        synthetic: dict | None = None,
        tokenizer=None,
        drop_unknown: bool = False,
        drop_overlap: bool = False,
        link_graph: bool = False,
        val_max_queries: int | None = None,
        token_cache_dir: str | Path | None = None,
    ):
        super().__init__()
        self.source = source
        self._kg = kg
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers  # resolved values (resolve_loader): no "auto" below this point
        self.pin_memory = pin_memory
        self.loader_settings = LoaderSettings(num_workers, pin_memory, "given to KGDataModule")  # the chain's: resolve_loader's
        self.dedup_entities = dedup_entities
        self.shuffle = shuffle  # off only for tests that compare runs batch by batch
        self.link_graph = link_graph  # SimKGC's neighbour names after short descriptions (data.link_graph)
        self._load_kwargs = {"use_long_text": use_long_text, "name_separator": name_separator, "synthetic": synthetic,
                             "drop_unknown": drop_unknown, "drop_overlap": drop_overlap}
        self.token_cache_dir = None if token_cache_dir is None else Path(token_cache_dir)  # None: in memory only
        self._token_caches: dict[str, TokenCache] = {}
        self.tokens: TokenCache | None = None
        self._known: KnownTriples | None = None
        if val_max_queries is not None and int(val_max_queries) < 1:
            raise ValueError(f"eval.val_max_queries={val_max_queries}: expected a positive number of queries (or null)")
        self.val_max_queries = val_max_queries  # validation ranks this seeded subset of queries (test: all)
        self._neighbourhoods: dict[tuple[int, str], Neighbourhoods] = {}
        if tokenizer is not None:
            self.connect(tokenizer)

    @property
    def kg(self) -> KG:
        if self._kg is None:
            self._kg = load_kg(self.source, **self._load_kwargs)
        return self._kg

    @property
    def known_train(self) -> KnownTriples:
        if self._known is None:
            self._known = KnownTriples.train_of(self.kg)
        return self._known

    def connect(self, tokenizer) -> None:
        key = f"{tokenizer_fingerprint(tokenizer)}-{self.max_length}"
        if key not in self._token_caches:
            self._token_caches[key] = TokenCache.load_or_build(self.kg, tokenizer, self.max_length,
                                                               cache_dir=self.token_cache_dir,
                                                               link_graph=self.link_graph)
        self.tokens = self._token_caches[key]

    def _require_tokens(self) -> TokenCache:
        if self.tokens is None:
            raise RuntimeError("KGDataModule.connect(tokenizer) must be called before asking for data loaders")
        return self.tokens

    @property
    def train_examples(self) -> torch.Tensor:
        return self.kg.with_inverse(self.kg.train)

    def train_dataloader(self) -> DataLoader:
        rows = self.train_examples
        if len(rows) < self.batch_size:
            raise ValueError(
                f"data.batch_size={self.batch_size} exceeds the {len(rows)} training examples of {self.kg.name} "
                "(training drops the last incomplete batch, so no step would run)"
            )
        return self._loader(rows, TrainCollator(self._require_tokens(), self.known_train, self.dedup_entities), self.batch_size,
                            shuffle=self.shuffle, drop_last=True)

    def query_dataloader(self, split: str, max_queries: int | None = None) -> DataLoader:
        triples = self.kg.with_inverse(self.kg.split(split))
        rows = torch.cat([triples, torch.arange(len(triples)).unsqueeze(1)], dim=1)  # (h, r, t, query index)
        if max_queries is not None and max_queries < len(rows):
            # a fixed seed: every epoch and every stage of a chain ranks the same queries, so MRRs compare
            keep = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:max_queries]
            rows = rows[keep.sort().values]
        return self._loader(rows, QueryCollator(self._require_tokens()), self.eval_batch_size)

    def rerank_neighbourhoods(self, hops: int, device: torch.device | str,
                              memory_budget: int | None = None) -> Neighbourhoods:
        """Train-graph neighbourhoods of every validation and test query head (both directions), searched
        once per (hops, device) and shared by every stage and evaluation of the run; `memory_budget` (bytes,
        eval.memory_budget_gb) sizes the search's batches of heads (the result does not depend on it)."""
        key = (int(hops), str(torch.device(device)))
        if key not in self._neighbourhoods:
            kg = self.kg
            heads = torch.cat([kg.valid, kg.test])[:, [0, 2]]
            graph = NeighbourGraph.from_triples(kg.train, kg.num_entities, device=device)
            self._neighbourhoods[key] = graph.neighbourhoods(heads, hops, memory_budget=memory_budget)
        return self._neighbourhoods[key]

    def entity_dataloader(self) -> DataLoader:
        rows = torch.arange(self.kg.num_entities)
        return self._loader(rows, EntityCollator(self._require_tokens()), self.eval_batch_size)

    # Evaluation = two loaders in order: all entities first, then the queries ranked against them.
    def val_dataloader(self) -> list[DataLoader]:
        return [self.entity_dataloader(), self.query_dataloader("valid", self.val_max_queries)]

    def test_dataloader(self) -> list[DataLoader]:
        return [self.entity_dataloader(), self.query_dataloader("test")]

    def _loader(self, rows, collate, batch_size, *, shuffle=False, drop_last=False) -> DataLoader:
        return DataLoader(RowDataset(rows), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                          collate_fn=collate, num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)
