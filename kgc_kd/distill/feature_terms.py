"""Feature-level loss terms on captured layer internals: MaKD's aspects and the TinyBERT / MiniLM baselines.

Every term maps student layers to teacher layers (`layers`: uniform | last | a list of teacher indices, one
per student layer), computes its loss per mapped pair and encoder side (query, entity), and combines the
pairs by `over_layers`: `sum` (TinyBERT's code and MaKD-R's hierarchical objective add the per-layer
losses) or `mean`; the sides are added. Terms that compare states of different widths bridge them with a
`projection` per side and captured kind, trained with the student and never exported:
- `lowrank` (MaKD's factorisation): x U V + c with rank r when the widths differ; when they match,
  x + x U V + c (V starts at zero, so training starts from the identity and learns a rank-r alignment),
  so the projection trains in a chain that keeps the teacher's width too;
- `linear`: a full Linear with bias; `shared`: one Linear with bias per side shared by every term and
  layer that asks for it (TinyBERT's `fit_dense`, applied to embeddings and hidden states alike);
- `identity` (widths must match).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from kgc_kd.distill.aspects import attention_kl, attention_score_mse, masked_mse, relation_kl, value_relation_kl
from kgc_kd.distill.projection import PROJECTIONS, make_projection
from kgc_kd.distill.registry import Dims, LossTerm, Step, register
from kgc_kd.models.student import uniform_layer_map

SIDES = ("query", "entity")
OVER_LAYERS = ("sum", "mean")


def layer_pairs(layers: Any, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs: "uniform" (each student layer to the evenly spaced teacher
    layer, last to last), "last" (only the last layers), or a list of teacher indices per student layer."""
    if layers == "uniform":
        return list(enumerate(uniform_layer_map(n_teacher, n_student)))
    if layers == "last":
        return [(n_student - 1, n_teacher - 1)]
    if isinstance(layers, str):
        raise ValueError(f"term layers {layers!r}: expected uniform, last or a list of teacher layer indices")
    layers = [int(i) for i in layers]
    if len(layers) != n_student or any(not 0 <= i < n_teacher for i in layers):
        raise ValueError(f"term layers {layers}: need {n_student} teacher indices in [0, {n_teacher})")
    return list(enumerate(layers))


class FeatureTerm(LossTerm):
    """Per mapped layer pair and side: `pair_loss`; `kinds` are the captured features it reads."""

    params: ClassVar[dict[str, Any]] = {"layers": "uniform", "over_layers": "sum"}
    kinds: ClassVar[tuple[str, ...]] = ()
    embeddings: ClassVar[bool] = False  # the embedding output only (layer -1)

    @classmethod
    def check(cls, params: dict[str, Any], dims: Dims | None = None) -> None:
        if params["over_layers"] not in OVER_LAYERS:
            raise ValueError(f"loss term {cls.name!r}: over_layers={params['over_layers']!r}; expected sum or mean")
        layers = params.get("layers", "uniform")
        if isinstance(layers, str) and layers not in ("uniform", "last"):
            raise ValueError(f"loss term {cls.name!r}: layers={layers!r}; expected uniform, last or a list of "
                             "teacher layer indices")
        if dims is not None and not cls.embeddings:
            try:
                layer_pairs(params["layers"], dims.student_layers, dims.teacher_layers)
            except ValueError as err:
                raise ValueError(f"loss term {cls.name!r}: {err}") from None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.features = cls.kinds  # what LossTerm declares: the captured kinds

    def __init__(self, params: dict[str, Any], dims: Dims, shared: nn.ModuleDict | None = None):
        super().__init__(params, dims, shared)
        self.pairs = ([(-1, -1)] if self.embeddings
                      else layer_pairs(params["layers"], dims.student_layers, dims.teacher_layers))

    def wanted(self, role: str) -> dict[str, list[int]]:
        idx = 0 if role == "student" else 1
        return {k: sorted({p[idx] for p in self.pairs}) for k in self.kinds}

    def pair_loss(self, side: str, sf: dict, tf: dict, mask: Tensor, m: int, n: int) -> Tensor:
        raise NotImplementedError

    def forward(self, step: Step) -> Tensor:
        total = 0.0
        for key, view in step.views.items():
            if key == "head":  # the head-only inputs repeat entities the entity side already sees
                continue
            sf, tf = step.student[key]["features"], step.teacher[key]["features"]
            mask = view["inputs"]["attention_mask"]
            values = [self.pair_loss(view["side"], sf, tf, mask, m, n) for m, n in self.pairs]
            combined = sum(values)
            total = total + (combined / len(values) if self.p["over_layers"] == "mean" else combined)
        return total


class ProjectedMSE(FeatureTerm):
    """Token-masked MSE between projected student features and the teacher's, per captured kind (averaged
    over the kinds of the term, e.g. Q, K and V)."""

    params: ClassVar[dict[str, Any]] = {**FeatureTerm.params, "projection": "lowrank", "rank": 64}
    width: ClassVar[str] = "hidden"  # which width the projection bridges: hidden | intermediate

    @classmethod
    def check(cls, params: dict[str, Any], dims: Dims | None = None) -> None:
        super().check(params, dims)
        if params["projection"] not in PROJECTIONS:
            hint = " (auto was removed: lowrank now also trains when widths match)" if params["projection"] == "auto" else ""
            raise ValueError(f"loss term {cls.name!r}: projection={params['projection']!r}; expected one of "
                             f"{', '.join(PROJECTIONS)}{hint}")
        if int(params["rank"]) < 1:
            raise ValueError(f"loss term {cls.name!r}: rank={params['rank']}; expected >= 1")
        if dims is not None and params["projection"] == "identity":
            d_s, d_t = cls._widths(dims)
            if d_s != d_t:
                raise ValueError(f"loss term {cls.name!r}: projection=identity needs equal widths, got {d_s} -> {d_t}")

    @classmethod
    def _widths(cls, dims: Dims) -> tuple[int, int]:
        if cls.width == "intermediate":
            return dims.student_intermediate, dims.teacher_intermediate
        return dims.student_hidden, dims.teacher_hidden

    def __init__(self, params: dict[str, Any], dims: Dims, shared: nn.ModuleDict | None = None):
        super().__init__(params, dims, shared)
        d_s, d_t = self._widths(dims)
        kind = params["projection"]
        self.projections = nn.ModuleDict()
        for side in SIDES:
            for k in self.kinds:
                if kind == "shared":  # one fit_dense per side, whoever asks (TinyBERT)
                    if shared is None:
                        raise ValueError(f"loss term {self.name!r}: projection=shared needs the objective's shared modules")
                    key = f"fit_dense-{side}-{d_s}-{d_t}"
                    if key not in shared:
                        shared[key] = make_projection(d_s, d_t, "linear")
                    self.projections[f"{side}-{k}"] = shared[key]
                else:
                    self.projections[f"{side}-{k}"] = make_projection(d_s, d_t, kind, int(params["rank"]))

    def pair_loss(self, side: str, sf: dict, tf: dict, mask: Tensor, m: int, n: int) -> Tensor:
        return sum(masked_mse(self.projections[f"{side}-{k}"](sf[(k, m)]), tf[(k, n)], mask)
                   for k in self.kinds) / len(self.kinds)


@register
class HiddenMSE(ProjectedMSE):
    """Layer outputs (MaKD-R L_hid, TinyBERT L_hid)."""
    name, kinds = "hidden_mse", ("hidden",)


@register
class QKVMSE(ProjectedMSE):
    """Q, K and V projections, heads concatenated (MaKD-R's MHA matrix aspect, "proj" form)."""
    name, kinds = "qkv_mse", ("q", "k", "v")


@register
class AttentionOutputMSE(ProjectedMSE):
    """The self-attention sub-layer's output before its residual add (MaKD-R L_O)."""
    name, kinds = "attn_out_mse", ("attn_out",)


@register
class FFNIntermediateMSE(ProjectedMSE):
    """The FFN's intermediate activation (MaKD-R L_FFN1), bridged over the intermediate width."""
    name, kinds, width = "ffn_mid_mse", ("ffn_mid",), "intermediate"
    params: ClassVar[dict[str, Any]] = {**ProjectedMSE.params, "rank": 128}


@register
class FFNOutputMSE(ProjectedMSE):
    """The FFN's output before its residual add (MaKD-R L_FFN2)."""
    name, kinds = "ffn_out_mse", ("ffn_out",)


@register
class EmbeddingMSE(ProjectedMSE):
    """The embedding output (MaKD-R L_emb, TinyBERT L_emb)."""
    name, kinds, embeddings = "emb_mse", ("embeddings",), True
    params: ClassVar[dict[str, Any]] = {"over_layers": "sum", "projection": "lowrank", "rank": 64}

    @classmethod
    def check(cls, params: dict[str, Any], dims: Dims | None = None) -> None:
        super().check({**params, "layers": "uniform"}, dims)


class HeadTerm(FeatureTerm):
    """Attention-level terms that compare heads one to one: the head counts must match."""

    @classmethod
    def check(cls, params: dict[str, Any], dims: Dims | None = None) -> None:
        super().check(params, dims)
        if dims is not None and dims.student_heads != dims.teacher_heads:
            raise ValueError(f"loss term {cls.name!r} compares attention heads one to one: the student has "
                             f"{dims.student_heads}, the teacher {dims.teacher_heads} (qkv_relation's heads are free)")


class QKHeadTerm(HeadTerm):
    """A loss of both models' Q and K at one layer pair, heads one to one: `pairwise(q_s, k_s, q_t, k_t, mask,
    heads_s, heads_t)`."""
    kinds = ("q", "k")
    pairwise: ClassVar[Any]

    def pair_loss(self, side, sf, tf, mask, m, n):
        return type(self).pairwise(sf[("q", m)], sf[("k", m)], tf[("q", n)], tf[("k", n)], mask,
                                   self.dims.student_heads, self.dims.teacher_heads)


@register
class AttentionKL(QKHeadTerm):
    """KL(teacher || student) of the self-attention distributions, rows of real tokens (MiniLM's L_AT,
    MaKD-R L_attnKL)."""
    name, pairwise = "attn_kl", staticmethod(attention_kl)


@register
class AttentionScoreMSE(QKHeadTerm):
    """MSE of the pre-softmax attention scores (TinyBERT's L_attn)."""
    name, pairwise = "attn_score_mse", staticmethod(attention_score_mse)


@register
class ValueRelationKL(HeadTerm):
    """KL of the value-value relations (MiniLM's L_VR)."""
    name, kinds = "value_kl", ("v",)

    def pair_loss(self, side, sf, tf, mask, m, n):
        return value_relation_kl(sf[("v", m)], tf[("v", n)], mask, self.dims.student_heads, self.dims.teacher_heads)


@register
class QKVRelationKL(FeatureTerm):
    """MiniLMv2's self-attention relations: Q-Q, K-K and V-V relation KL over `relation_heads` heads that
    re-split each model's concatenated heads (head counts may differ), summed over the three."""
    name, kinds = "qkv_relation", ("q", "k", "v")
    params: ClassVar[dict[str, Any]] = {**FeatureTerm.params, "relation_heads": 48}

    @classmethod
    def check(cls, params: dict[str, Any], dims: Dims | None = None) -> None:
        super().check(params, dims)
        r = int(params["relation_heads"])
        if r < 1:
            raise ValueError(f"loss term 'qkv_relation': relation_heads={r}; expected >= 1")
        if dims is not None and (dims.student_hidden % r or dims.teacher_hidden % r):
            raise ValueError(f"loss term 'qkv_relation': relation_heads={r} must divide the student "
                             f"({dims.student_hidden}) and teacher ({dims.teacher_hidden}) widths")

    def pair_loss(self, side, sf, tf, mask, m, n):
        r = int(self.p["relation_heads"])
        return sum(relation_kl(sf[(k, m)], tf[(k, n)], mask, r) for k in ("q", "k", "v"))
