"""A stage's objective as a weighted list of named terms (torchdistill-style), so presets are plain YAML.

Logit-level terms (`ce`, `score`, `mgfd`, `pkd`) are computed by the stage module; feature-level terms
(MaKD's aspects and the TinyBERT/MiniLM baselines) are computed here from captured layer internals,
per encoder side (query, entity) and per mapped layer pair, averaged over pairs and summed over sides.
Projections (low-rank by default) bridge widths; they train with the student and are not exported.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from kgc_kd.distill.aspects import (
    attention_kl,
    attention_score_mse,
    masked_mse,
    relation_kl,
    value_relation_kl,
)
from kgc_kd.distill.projection import make_projection
from kgc_kd.models.student import uniform_layer_map

LOGIT_TERMS = ("ce", "score", "mgfd", "pkd")
# feature term -> (captured kinds, width the projection maps: "hidden" | "intermediate" | None = no projection)
FEATURE_TERMS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "attn_kl": (("q", "k"), None),
    "attn_score_mse": (("q", "k"), None),
    "value_kl": (("v",), None),
    "qkv_relation": (("q", "k", "v"), None),
    "hidden_mse": (("hidden",), "hidden"),
    "qkv_mse": (("q", "k", "v"), "hidden"),
    "attn_out_mse": (("attn_out",), "hidden"),
    "ffn_mid_mse": (("ffn_mid",), "intermediate"),
    "ffn_out_mse": (("ffn_out",), "hidden"),
    "emb_mse": (("embeddings",), "hidden"),
}
TERM_DEFAULTS: dict[str, Any] = {"weight": 1.0, "layers": "uniform", "projection": "auto", "rank": 64,
                                 "relation_heads": 12}
SIDES = ("query", "entity")


def layer_pairs(layers: Any, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs: "uniform" (each student layer to the evenly spaced teacher
    layer, last to last), "last" (only the last layers), or a list of teacher indices per student layer."""
    if layers == "uniform":
        return list(enumerate(uniform_layer_map(n_teacher, n_student)))
    if layers == "last":
        return [(n_student - 1, n_teacher - 1)]
    layers = [int(i) for i in layers]
    if len(layers) != n_student or any(not 0 <= i < n_teacher for i in layers):
        raise ValueError(f"term layers {layers}: need {n_student} teacher indices in [0, {n_teacher})")
    return list(enumerate(layers))


def _dims(encoder: nn.Module) -> dict[str, int]:
    c = encoder.config
    return {"hidden": c.hidden_size, "intermediate": c.intermediate_size, "heads": c.num_attention_heads,
            "layers": c.num_hidden_layers}


class FeatureObjective(nn.Module):
    def __init__(self, terms: list[dict], student_encoder: nn.Module, teacher_encoder: nn.Module):
        super().__init__()
        self.terms = [{**TERM_DEFAULTS, **t} for t in terms if t["name"] in FEATURE_TERMS]
        self.s, self.t = _dims(student_encoder), _dims(teacher_encoder)
        self.projections = nn.ModuleDict()
        for term in self.terms:
            kinds, width = FEATURE_TERMS[term["name"]]
            if term["name"] == "qkv_relation":
                r = term["relation_heads"]
                if self.s["hidden"] % r or self.t["hidden"] % r:
                    raise ValueError(f"qkv_relation: relation_heads={r} must divide the student ({self.s['hidden']}) "
                                     f"and teacher ({self.t['hidden']}) widths")
            term["pairs"] = ([(-1, -1)] if term["name"] == "emb_mse"
                             else layer_pairs(term["layers"], self.s["layers"], self.t["layers"]))
            if width is None:
                continue
            kind = term["projection"]
            if kind == "auto":  # identity where widths already match (a rank-r map could not even copy)
                kind = "identity" if self.s[width] == self.t[width] else "lowrank"
            for side in SIDES:
                for k in kinds:
                    self.projections[f"{term['name']}-{side}-{k}"] = make_projection(
                        self.s[width], self.t[width], kind, term["rank"])

    def __len__(self) -> int:
        return len(self.terms)

    def wanted(self, role: str) -> dict[str, list[int]]:
        """Which captured features each model must provide: {kind: [layer, ...]}."""
        idx = 0 if role == "student" else 1
        out: dict[str, set[int]] = {}
        for term in self.terms:
            for k in FEATURE_TERMS[term["name"]][0]:
                out.setdefault(k, set()).update(p[idx] for p in term["pairs"])
        return {k: sorted(v) for k, v in out.items()}

    def forward(self, student: dict[str, dict], teacher: dict[str, dict], masks: dict[str, Tensor]) -> dict[str, Tensor]:
        """`student[side][(kind, layer)]` are captured features; returns one value per term name."""
        out: dict[str, Tensor] = {}
        for term in self.terms:
            name = term["name"]
            total = 0.0
            for side, s_feats in student.items():
                t_feats, mask = teacher[side], masks[side]
                values = [self._pair(term, side, s_feats, t_feats, mask, m, n) for m, n in term["pairs"]]
                total = total + sum(values) / len(values)
            out[name] = total
        return out

    def _pair(self, term: dict, side: str, sf: dict, tf: dict, mask: Tensor, m: int, n: int) -> Tensor:
        name, hs, ht = term["name"], self.s["heads"], self.t["heads"]
        if name == "attn_kl":
            return attention_kl(sf[("q", m)], sf[("k", m)], tf[("q", n)], tf[("k", n)], mask, hs, ht)
        if name == "attn_score_mse":
            return attention_score_mse(sf[("q", m)], sf[("k", m)], tf[("q", n)], tf[("k", n)], mask, hs, ht)
        if name == "value_kl":
            return value_relation_kl(sf[("v", m)], tf[("v", n)], mask, hs, ht)
        if name == "qkv_relation":
            r = term["relation_heads"]
            return sum(relation_kl(sf[(k, m)], tf[(k, n)], mask, r) for k in ("q", "k", "v")) / 3
        kinds = FEATURE_TERMS[name][0]
        return sum(masked_mse(self.projections[f"{name}-{side}-{k}"](sf[(k, m)]), tf[(k, n)], mask)
                   for k in kinds) / len(kinds)
