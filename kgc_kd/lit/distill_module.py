"""A student stage of the chain: a smaller bi-encoder taught by the frozen previous stage.

The objective is a weighted list of named terms: PMD's `ce`, `score`, `mgfd` (and `pkd`), plus the
feature-level terms of `distill/objective.py` (MaKD's attention and FFN mimicry, TinyBERT, MiniLM).
Without an explicit list it is PMD's L = (1 - alpha - beta - pkd) L_CE + alpha L_SCORE + beta L_MGFD
(+ pkd L_PKD). Every term is logged. The teacher is frozen the way distillation in Lightning needs it:
no gradients, eval mode forced on every step (LightningModule.train() would otherwise re-enable its
dropout), excluded from the optimizer, dropped from checkpoints, run inside training_step so it shares
the student's autocast, and not run at all when no term needs it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kgc_kd.distill.masking import mask_tokens
from kgc_kd.distill.mgfd import FeatureGenerator, mgfd_generation, mgfd_pmd, random_token_mask
from kgc_kd.distill.objective import FEATURE_TERMS, LOGIT_TERMS, FeatureObjective
from kgc_kd.distill.pkd import pkd_loss
from kgc_kd.distill.score import score_loss
from kgc_kd.lit.base import BiEncoderModule
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.contrastive import contrastive_logits, in_batch_accuracy, infonce_loss
from kgc_kd.models.features import FeatureCapture
from kgc_kd.models.student import num_layers, uniform_layer_map

STAGE_DEFAULTS: dict[str, Any] = {
    "alpha": 0.1, "beta": 0.1, "pkd": 0.0, "mask_rate": 0.0, "score_loss": "mse", "kd_temperature": 1.0,
    "mgfd": "pmd", "generator": "mlp", "terms": None,
}


def stage_terms(st: dict) -> list[dict]:
    """The stage's weighted terms: the explicit list, or PMD's alpha/beta(/pkd) form."""
    if st.get("terms"):
        terms = [dict(t) for t in st["terms"]]
    else:
        a, b, p = st["alpha"], st["beta"], st["pkd"]
        if a + b + p > 1.0 + 1e-9:
            raise ValueError(f"stage {st.get('name')}: alpha + beta + pkd must be <= 1 (CE keeps the rest)")
        terms = [{"name": "ce", "weight": max(0.0, 1.0 - a - b - p)}]
        terms += [{"name": n, "weight": w} for n, w in (("score", a), ("mgfd", b), ("pkd", p)) if w > 0]
    known = LOGIT_TERMS + tuple(FEATURE_TERMS)
    names = [t.get("name") for t in terms]
    for n in names:
        if n not in known:
            raise ValueError(f"stage {st.get('name')}: unknown loss term {n!r}; known: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"stage {st.get('name')}: a loss term appears twice in {names}")
    return terms


class DistillModule(BiEncoderModule):
    def __init__(self, model: dict, optim: dict, eval: dict, stage: dict, batch_size: int, student: BiEncoder,
                 teacher: BiEncoder):
        super().__init__()
        self.save_hyperparameters(ignore=["student", "teacher"])
        st = {**STAGE_DEFAULTS, **{k: v for k, v in stage.items() if v is not None}}
        if st["mgfd"] not in ("pmd", "generation"):
            raise ValueError(f"stage {st.get('name')}: mgfd={st['mgfd']!r}; expected pmd or generation")
        self.st = st
        self.stage_name = str(st.get("name", "student"))
        self.terms = stage_terms(st)
        self.weights = {t["name"]: float(t.get("weight", 1.0)) for t in self.terms}
        self.net = student.train()
        self.teacher = teacher.requires_grad_(False).eval()
        self.strict_loading = False  # checkpoints carry no teacher weights
        self.generators = None
        if "mgfd" in self.weights and st["mgfd"] == "generation":
            d_s = self.net.query_encoder.config.hidden_size
            d_t = self.teacher.query_encoder.config.hidden_size
            self.generators = nn.ModuleDict({side: FeatureGenerator(d_s, d_t, st["generator"])
                                             for side in ("query", "entity")})
        self.features = None
        if any(n in FEATURE_TERMS for n in self.weights):
            self.features = FeatureObjective(self.terms, self.net.query_encoder, self.teacher.query_encoder)
        self.mask_id: int | None = None  # taken from the datamodule's tokenizer at fit time
        self.pkd_map = uniform_layer_map(num_layers(self.teacher.query_encoder), num_layers(self.net.query_encoder))
        # The stage's negatives are `model`'s (the chain passes the stage's resolved pre_batch/self_negative
        # there): pre-batch columns hold the student's own past entity vectors, and with score distillation a
        # twin buffer holds the teacher's vectors of the same entities, so both score the same columns.
        self.prebatch = self.prebatch_buffer(model)
        self.teacher_prebatch = self.prebatch_buffer(model) if "score" in self.weights else None

    def trainable_modules(self) -> list[nn.Module]:
        """Student plus generator and projections: trained together, never exported."""
        return [self.net] + [m for m in (self.generators, self.features) if m is not None]

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
        st, cfg, w = self.st, self.hparams.model, self.weights
        self.teacher.eval()
        pmd_masking = "mgfd" in w and st["mgfd"] == "pmd"
        views = self._views(batch, st["mask_rate"] if pmd_masking else 0.0)
        all_layers = "pkd" in w
        s_out = self._run(self.net, views, all_layers, self.features.wanted("student") if self.features else None)
        s = self._rows(batch, s_out, views)
        t_out, t = None, None
        if set(w) - {"ce"}:  # CE alone (distill=none) needs no teacher
            with torch.no_grad():
                t_out = self._run(self.teacher, views, all_layers,
                                  self.features.wanted("teacher") if self.features else None)
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
        terms = {"ce": infonce_loss(logits_s), "acc@1": in_batch_accuracy(logits_s).detach()}
        tv = None
        if "score" in w:
            with torch.no_grad():  # PMD: the teacher's logits carry no margin (teacher in eval mode)
                tv = {k: self.gather_rows(t[k]) for k in ("hr", "tail", "head")}
                logits_t = contrastive_logits(
                    tv["hr"], tv["tail"], self.teacher.inv_t, margin=0.0, fn_mask=fn_mask,
                    head=tv["head"] if sn else None, self_mask=self_mask,
                    prebatch=self.teacher_prebatch.vectors.clone() if pb_mask is not None else None, **pb)
            terms["score"] = score_loss(st["score_loss"], logits_s, logits_t, st["kd_temperature"])
        if self.prebatch is not None:  # the global batch's entities, as the teacher stage pushes them
            self.prebatch.push(sv["tail"], triples)
            if self.teacher_prebatch is not None:
                self.teacher_prebatch.push(tv["tail"], triples)
        if "mgfd" in w:
            terms["mgfd"] = self._mgfd(views, s_out, t_out, s, t)
        if "pkd" in w:
            terms["pkd"] = sum(pkd_loss(s_out[k]["states"], t_out[k]["states"], views[k]["inputs"]["attention_mask"],
                                        self.pkd_map, self.net.pooling) for k in views) / len(views)
        if self.features is not None:
            keys = [k for k in views if k != "head"]
            terms.update(self.features(
                {views[k]["side"]: s_out[k]["features"] for k in keys},
                {views[k]["side"]: t_out[k]["features"] for k in keys},
                {views[k]["side"]: views[k]["inputs"]["attention_mask"] for k in keys},
            ))
        return terms

    def _mgfd(self, views, s_out, t_out, s, t) -> Tensor:
        if self.st["mgfd"] == "pmd":  # per batch row, on the hr and tail inputs (PMD Eq. 2)
            return (mgfd_pmd(s_out["hr"]["hidden"], t_out["hr"]["hidden"], views["hr"]["counts"])
                    + mgfd_pmd(s["tail_hidden"], t["tail_hidden"], s["tail_counts"]))
        total = 0.0
        for key, v in views.items():
            if key == "head":
                continue
            mask = v["inputs"]["attention_mask"]
            hide = random_token_mask(mask, self.st["mask_rate"])
            total = total + mgfd_generation(s_out[key]["hidden"], t_out[key]["hidden"], mask,
                                            self.generators[v["side"]], hide)
        return total

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        terms = self.distill_terms(batch)
        loss = sum(weight * terms[name] for name, weight in self.weights.items())
        self.check_finite(loss, {n: terms[n] for n in self.weights}, batch_idx)
        bs = batch["triples"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for name, value in terms.items():
            self.log(f"train/{name}", value.detach(), batch_size=bs)
        self.log("train/inv_t", self.net.inv_t.detach(), batch_size=bs)
        return loss
