"""A student stage of the chain: a smaller bi-encoder taught by the frozen previous stage.

The objective is the stage's resolved terms (the run plan's spec, kgc_kd/chain/stage_spec.py): a weighted
list of registered loss terms (distill/registry.py), built once for this student/teacher pair (`Objective`) and summed; every term is
logged. The step computes only what the terms ask for: the teacher runs only when a term reads it, its
logits only for score distillation, the stage's input masking only for PMD's MGFD, captured layer
internals only for feature terms. The teacher is frozen the way distillation in Lightning needs it: no
gradients, eval mode forced on every step (LightningModule.train() would otherwise re-enable its dropout),
excluded from the optimizer, dropped from checkpoints, run inside training_step so it shares the student's
autocast.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kgc_kd.distill.masking import mask_tokens
from kgc_kd.distill.objective import Objective
from kgc_kd.distill.registry import Dims, Step
from kgc_kd.lit.base import BiEncoderModule
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.contrastive import contrastive_logits, in_batch_accuracy
from kgc_kd.models.features import FeatureCapture


def resolved_terms(stage: dict[str, Any]) -> list[dict[str, Any]]:
    """The stage's resolved term list ({name, weight, params} each, as the run plan resolves it:
    kgc_kd.chain.stage_spec); loss settings (alpha/beta/..., or unresolved entries) are refused."""
    terms = stage.get("terms")
    if not terms or not all(isinstance(t, dict) and {"name", "weight", "params"} <= set(t) for t in terms):
        raise ValueError(f"stage {stage.get('name', 'student')!r}: DistillModule takes resolved terms "
                         "({name, weight, params} each: kgc_kd.chain.stage_spec.resolve_stage or objective_terms); "
                         f"got terms={terms!r}")
    return [dict(t) for t in terms]


class DistillModule(BiEncoderModule):
    def __init__(self, model: dict, optim: dict, eval: dict, stage: dict, batch_size: int, student: BiEncoder,
                 teacher: BiEncoder):
        super().__init__()
        self.save_hyperparameters(ignore=["student", "teacher"])
        self.stage_name = str(stage.get("name", "student"))
        self.mask_rate = float(stage.get("mask_rate") or 0.0)
        self.terms = resolved_terms(stage)
        self.weights = {t["name"]: float(t["weight"]) for t in self.terms}
        self.net = student.train()
        self.teacher = teacher.requires_grad_(False).eval()
        self.strict_loading = False  # checkpoints carry no teacher weights
        self.objective = Objective(self.terms, Dims.of(self.net.query_encoder.config, self.teacher.query_encoder.config))
        self.mask_id: int | None = None  # taken from the datamodule's tokenizer at fit time
        # The stage's negatives are `model`'s (the chain passes the stage's resolved pre_batch/self_negative
        # there): pre-batch columns hold the student's own past entity vectors, and with score distillation a
        # twin buffer holds the teacher's vectors of the same entities, so both score the same columns.
        self.prebatch = self.prebatch_buffer(model)
        self.teacher_prebatch = self.prebatch_buffer(model) if self.objective.needs_teacher_logits else None

    def trainable_modules(self) -> list[nn.Module]:
        """Student plus the terms' generators and projections: trained together, never exported."""
        return [self.net, self.objective]

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}

    # ---- one model's view of a (masked) batch ---------------------------------------------------------
    def _views(self, batch: dict, rate: float) -> dict[str, dict]:
        """Masked inputs per encoder side; the SAME masked ids feed teacher and student (PMD)."""
        if self.mask_id is None:
            self.mask_id = self.trainer.datamodule.tokens.mask_id
        mask_id = self.mask_id
        sides = {"hr": ("query", batch["hr"])}
        if "entities" in batch:
            sides["entities"] = ("entity", batch["entities"])
        else:
            sides["tail"], sides["head"] = ("entity", batch["tail"]), ("entity", batch["head"])
        views = {}
        for key, (side, inputs) in sides.items():
            ids, counts = mask_tokens(inputs["input_ids"], inputs["attention_mask"], rate, mask_id)
            views[key] = {"side": side, "inputs": {**inputs, "input_ids": ids}, "counts": counts}
        return views

    def _run(self, net: BiEncoder, views: dict, all_layers: bool, wanted: dict | None) -> dict[str, dict]:
        out = {}
        for key, v in views.items():
            encoder = net.query_encoder if v["side"] == "query" else net.entity_encoder
            capture = FeatureCapture(encoder, wanted if wanted and key != "head" else {})
            with capture:
                vec, hidden, states = net.encode_with_states(v["side"], v["inputs"], all_layers)
            out[key] = {"vec": vec, "hidden": hidden, "states": states, "features": capture.features}
        return out

    @staticmethod
    def _rows(batch: dict, out: dict, views: dict) -> dict[str, Tensor]:
        """hr / tail / head vectors per batch row, and the tail side's token states and mask counts."""
        if "entities" in out:
            e, ti, hi = out["entities"], batch["tail_index"], batch["head_index"]
            return {"hr": out["hr"]["vec"], "tail": e["vec"][ti], "head": e["vec"][hi],
                    "tail_hidden": e["hidden"][ti], "tail_counts": views["entities"]["counts"][ti]}
        return {"hr": out["hr"]["vec"], "tail": out["tail"]["vec"], "head": out["head"]["vec"],
                "tail_hidden": out["tail"]["hidden"], "tail_counts": views["tail"]["counts"]}

    # ---- the objective --------------------------------------------------------------------------------
    def distill_terms(self, batch: dict) -> dict[str, Tensor]:
        cfg, obj = self.hparams.model, self.objective
        self.teacher.eval()
        views = self._views(batch, self.mask_rate if obj.masks_inputs else 0.0)
        s_out = self._run(self.net, views, obj.all_layers, obj.wanted("student"))
        s = self._rows(batch, s_out, views)
        t_out, t = None, None
        if obj.needs_teacher:  # CE alone (distill=none) needs no teacher
            with torch.no_grad():
                t_out = self._run(self.teacher, views, obj.all_layers, obj.wanted("teacher"))
            t = self._rows(batch, t_out, views)
        sn = cfg["self_negative"]
        # logits over the global batch under DDP (student vectors gathered with gradients, teacher's without)
        sv, triples, fn_mask, self_mask = self.global_batch({k: s[k] for k in ("hr", "tail", "head")}, batch)
        pb_mask = None
        if self.prebatch is not None and not self.prebatch.empty:
            pb_mask = self.prebatch_mask(self.prebatch, triples)
        pb = {"prebatch_weight": cfg["pre_batch_weight"], "prebatch_mask": pb_mask}
        logits_s = contrastive_logits(sv["hr"], sv["tail"], self.net.inv_t, margin=cfg["margin"],
                                      fn_mask=fn_mask, head=sv["head"] if sn else None, self_mask=self_mask,
                                      prebatch=self.prebatch.vectors.clone() if pb_mask is not None else None, **pb)
        logits_t, tv = None, None
        if obj.needs_teacher_logits:
            with torch.no_grad():  # PMD: the teacher's logits carry no margin (teacher in eval mode)
                tv = {k: self.gather_rows(t[k]) for k in ("hr", "tail", "head")}
                logits_t = contrastive_logits(
                    tv["hr"], tv["tail"], self.teacher.inv_t, margin=0.0, fn_mask=fn_mask,
                    head=tv["head"] if sn else None, self_mask=self_mask,
                    prebatch=self.teacher_prebatch.vectors.clone() if pb_mask is not None else None, **pb)
        if self.prebatch is not None:  # the global batch's entities, as the teacher stage pushes them
            self.prebatch.push(sv["tail"], triples)
            if self.teacher_prebatch is not None:
                self.teacher_prebatch.push(tv["tail"], triples)
        step = Step(views, s_out, t_out, s, t, logits_s, logits_t, pooling=self.net.pooling)
        terms = obj(step)
        terms["acc@1"] = in_batch_accuracy(logits_s).detach()
        return terms

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        terms = self.distill_terms(batch)
        loss = sum(weight * terms[name] for name, weight in self.weights.items())
        loss = self.check_finite(loss, {n: terms[n] for n in self.weights}, batch_idx)
        bs = batch["triples"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for name, value in terms.items():
            self.log(f"train/{name}", value.detach(), batch_size=bs)
        self.log("train/inv_t", self.net.inv_t.detach(), batch_size=bs)
        return loss
