"""The teacher stage: SimKGC's contrastive training of a bi-encoder (evaluation lives in `base.py`)."""

from __future__ import annotations

import torch
from torch import Tensor

from kgc_kd.lit.base import BiEncoderModule
from kgc_kd.models.biencoder import BiEncoder, build_biencoder
from kgc_kd.models.contrastive import contrastive_logits, in_batch_accuracy, infonce_loss


class KGCModule(BiEncoderModule):
    def __init__(self, model: dict, optim: dict, eval: dict, batch_size: int, encoder: torch.nn.Module | None = None,
                 net: BiEncoder | None = None):
        """`model`/`optim`/`eval` are plain dicts (config sections); `encoder` lets tests pass a tiny BERT,
        `net` wraps an already built (e.g. loaded) bi-encoder."""
        super().__init__()
        self.save_hyperparameters(ignore=["encoder", "net"])
        self.net = net if net is not None else build_biencoder(model, encoder)
        # from_pretrained returns modules in eval mode and Lightning (>= 2.2) keeps each submodule's
        # mode as found at fit start, so without this the PLM would train with dropout off.
        self.net.train()
        self.prebatch = self.prebatch_buffer(model)  # entity vectors of the last k global batches

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        cfg = self.hparams.model
        vecs, triples, fn_mask, self_mask = self.global_batch(self.net(batch), batch)
        pb, pb_mask = None, None
        if self.prebatch is not None and not self.prebatch.empty:
            pb = self.prebatch.vectors.clone()  # push() below overwrites the buffer in place
            pb_mask = self.prebatch_mask(self.prebatch, triples)
        logits = contrastive_logits(
            vecs["hr"], vecs["tail"], self.net.inv_t, margin=cfg["margin"], fn_mask=fn_mask,
            head=vecs["head"] if cfg["self_negative"] else None, self_mask=self_mask,
            prebatch=pb, prebatch_mask=pb_mask, prebatch_weight=cfg["pre_batch_weight"],
        )
        loss = infonce_loss(logits)
        loss = self.check_finite(loss, {"ce": loss}, batch_idx)  # on CUDA: poisoned after a bad step under a scaler
        if self.prebatch is not None:  # the global batch, so every rank's buffer stays identical
            self.prebatch.push(vecs["tail"], triples)
        bs = logits.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/acc@1", in_batch_accuracy(logits), batch_size=bs)
        self.log("train/inv_t", self.net.inv_t.detach(), batch_size=bs)
        return loss
