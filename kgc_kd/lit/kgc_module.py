"""The teacher stage as a LightningModule: SimKGC training, full filtered ranking as validation and test.

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

from kgc_kd.data.negatives import false_negative_mask
from kgc_kd.eval import evaluate_queries
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.contrastive import contrastive_logits, in_batch_accuracy, infonce_loss
from kgc_kd.models.plm import load_encoder
from kgc_kd.models.prebatch import PreBatchBuffer


def build_biencoder(model: dict, encoder: torch.nn.Module | None = None) -> BiEncoder:
    enc = encoder if encoder is not None else load_encoder(model["plm"])
    return BiEncoder(enc, shared=model.get("shared_encoder", False), pooling=model.get("pooling", "mean"),
                     temperature=model.get("temperature", 0.05), learn_temperature=model.get("learn_temperature", True))


class KGCModule(L.LightningModule):
    def __init__(self, model: dict, optim: dict, eval: dict, batch_size: int, encoder: torch.nn.Module | None = None):
        """`model`/`optim`/`eval` are plain dicts (config sections); `encoder` lets tests pass a tiny BERT."""
        super().__init__()
        self.save_hyperparameters(ignore=["encoder"])
        self.net = build_biencoder(model, encoder)
        # from_pretrained returns modules in eval mode and Lightning (>= 2.2) keeps each submodule's
        # mode as found at fit start, so without this the PLM would train with dropout off.
        self.net.train()
        self.prebatch = None
        if model.get("pre_batch", 0) > 0:
            dim = self.net.query_encoder.config.hidden_size
            self.prebatch = PreBatchBuffer(model["pre_batch"], batch_size, dim)
        self._eval_store: dict[str, list[Tensor]] = {}
        self.last_eval: dict[str, Any] = {}

    # ---- training ---------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        cfg = self.hparams.model
        vecs = self.net(batch)
        pb, pb_mask = None, None
        if self.prebatch is not None:
            known = self.trainer.datamodule.known_train
            triples = batch["triples"]
            pb = self.prebatch.vectors.clone()  # push() below overwrites the buffer in place
            pb_mask = false_negative_mask(triples[:, :2], triples[:, 2], self.prebatch.triples[:, 2].clamp(min=0),
                                          known) | ~self.prebatch.filled[None, :]
        logits = contrastive_logits(
            vecs["hr"], vecs["tail"], self.net.inv_t, margin=cfg["margin"], fn_mask=batch["fn_mask"],
            head=vecs["head"] if cfg["self_negative"] else None, self_mask=batch["self_mask"],
            prebatch=pb, prebatch_mask=pb_mask, prebatch_weight=cfg["pre_batch_weight"],
        )
        loss = infonce_loss(logits)
        if self.prebatch is not None:
            self.prebatch.push(vecs["tail"], batch["triples"])
        bs = logits.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/acc@1", in_batch_accuracy(logits), batch_size=bs)
        self.log("train/inv_t", self.net.inv_t.detach(), batch_size=bs)
        return loss

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

    on_test_epoch_start = on_validation_epoch_start

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
        params = [p for p in self.net.parameters() if p.requires_grad]
        if o["no_decay_norm_bias"]:
            decay = [p for n, p in self.net.named_parameters() if p.requires_grad and p.ndim >= 2]
            no_decay = [p for n, p in self.net.named_parameters() if p.requires_grad and p.ndim < 2]
            groups = [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
        else:
            groups = [{"params": params, "weight_decay": o["weight_decay"]}]
        opt = torch.optim.AdamW(groups, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"])
        total = int(self.trainer.estimated_stepping_batches)
        warmup = min(int(o["warmup_steps"]), total // 10)
        sched = get_linear_schedule_with_warmup(opt, warmup, max(total, 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
