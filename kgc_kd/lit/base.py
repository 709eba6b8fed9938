"""What every stage module shares: a bi-encoder `net`, full filtered ranking as validation/test, AdamW.

Validation is the real metric (filtered MRR over all entities), not SimKGC's in-batch accuracy, so
ModelCheckpoint on `val/mrr` keeps the model a user would report. Evaluation runs two loaders in order:
all entities first (their vectors are stored), then the queries, ranked at epoch end.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from transformers import get_linear_schedule_with_warmup

from kgc_kd.eval import evaluate_queries
from kgc_kd.models.biencoder import BiEncoder


class BiEncoderModule(L.LightningModule):
    net: BiEncoder

    def __init__(self) -> None:
        super().__init__()
        self._eval_store: dict[str, list[Tensor]] = {}
        self.last_eval: dict[str, Any] = {}

    def trainable_modules(self) -> list[torch.nn.Module]:
        """Modules the optimizer updates (subclasses add e.g. a feature generator)."""
        return [self.net]

    # ---- evaluation -------------------------------------------------------------------------------------
    def _eval_step(self, batch: dict, dataloader_idx: int) -> None:
        if dataloader_idx == 0:
            self._eval_store.setdefault("entity_ids", []).append(batch["entity_ids"])
            self._eval_store.setdefault("entity_vecs", []).append(self.net.encode_entity(batch["entity"]))
        else:
            self._eval_store.setdefault("triples", []).append(batch["triples"])
            self._eval_store.setdefault("query_vecs", []).append(self.net.encode_query(batch["hr"]))

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_validation_epoch_start(self) -> None:
        self._eval_store = {}

    def on_test_epoch_start(self) -> None:
        self._eval_store = {}

    def _finish_eval(self, prefix: str) -> dict[str, float]:
        store, self._eval_store = self._eval_store, {}
        if self.trainer.sanity_checking or "query_vecs" not in store:
            return {}
        kg = self.trainer.datamodule.kg
        ids = torch.cat(store["entity_ids"])
        vecs = torch.cat(store["entity_vecs"]).float()
        entity_vecs = vecs.new_zeros(kg.num_entities, vecs.shape[1])
        entity_vecs[ids.to(vecs.device)] = vecs
        triples = torch.cat(store["triples"])
        ev = self.hparams.eval
        metrics, output = evaluate_queries(
            torch.cat(store["query_vecs"]).float(), entity_vecs, triples, kg.num_relations, kg.filter_index,
            adjacency=kg.train_graph if ev["rerank_weight"] and ev["rerank_hops"] else None,
            rerank_hops=ev["rerank_hops"], rerank_weight=ev["rerank_weight"], chunk_size=ev["chunk_size"],
            topk=ev["topk"] if prefix == "test" else 0,
        )
        self.last_eval[prefix] = {"metrics": metrics, "triples": triples.cpu(), "output": output}
        for k, v in metrics.items():
            if not (k.endswith("count") or k == "num_queries"):
                self.log(f"{prefix}/{k}", float(v), prog_bar=k == "mrr", batch_size=1)
        return metrics

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    # ---- optimisation -----------------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.hparams.optim
        named = [(n, p) for m in self.trainable_modules() for n, p in m.named_parameters() if p.requires_grad]
        if o["no_decay_norm_bias"]:
            groups = [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": o["weight_decay"]},
                      {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]
        else:
            groups = [{"params": [p for _, p in named], "weight_decay": o["weight_decay"]}]
        opt = torch.optim.AdamW(groups, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"])
        total = int(self.trainer.estimated_stepping_batches)
        warmup = min(int(o["warmup_steps"]), total // 10)
        sched = get_linear_schedule_with_warmup(opt, warmup, max(total, 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
