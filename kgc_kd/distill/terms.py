"""The logit- and sequence-level loss terms: `ce`, `score`, `mgfd` (PMD), `mgd` (MGD), `pkd` (Patient KD).

Each is a registered class (distill/registry.py) with its parameters beside it; the feature-level terms
(MaKD's aspects, TinyBERT, MiniLM) are in distill/feature_terms.py.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from kgc_kd.distill.mgfd import MGDGenerator, mgd_loss, mgfd_pmd, random_token_mask
from kgc_kd.distill.pkd import pkd_loss
from kgc_kd.distill.registry import Dims, LossTerm, Step, register
from kgc_kd.distill.score import SCORE_LOSSES, score_loss
from kgc_kd.models.contrastive import infonce_loss
from kgc_kd.models.student import uniform_layer_map


@register
class ContrastiveCE(LossTerm):
    """SimKGC's InfoNCE with additive margin over the student's own negatives (no teacher)."""

    name = "ce"
    needs_teacher = False

    def forward(self, step: Step) -> Tensor:
        return infonce_loss(step.logits_s)


@register
class ScoreDistillation(LossTerm):
    """L_SCORE: the student's logit matrix against the teacher's (PMD: MSE; Hinton: KL with temperature T,
    scaled by T^2) over every column both score: in-batch, pre-batch and self negatives."""

    name = "score"
    params = {"loss": "mse", "temperature": 1.0}
    needs_teacher_logits = True

    @classmethod
    def check(cls, params: dict[str, Any], dims: Dims | None = None) -> None:
        if params["loss"] not in SCORE_LOSSES:
            raise ValueError(f"loss term 'score': loss={params['loss']!r}; expected one of {', '.join(SCORE_LOSSES)}")
        if float(params["temperature"]) <= 0:
            raise ValueError(f"loss term 'score': temperature={params['temperature']}; expected > 0")

    def forward(self, step: Step) -> Tensor:
        return score_loss(self.p["loss"], step.logits_s, step.logits_t, float(self.p["temperature"]))


@register
class MaskedGenerationFeatures(LossTerm):
    """PMD's L_MGFD (Eq. 2): the same masked inputs (the stage's `mask_rate`) feed teacher and student; per
    sequence, the L2-normalised mean of the last-layer states at the masked positions, MSE between the two,
    on the hr and the tail inputs. Exactly 0 at mask rate 0."""

    name = "mgfd"
    masks_inputs = True

    @classmethod
    def check(cls, params: dict[str, Any], dims: Dims | None = None) -> None:
        if dims is not None and dims.student_hidden != dims.teacher_hidden:
            raise ValueError(f"loss term 'mgfd' compares hidden states directly: student width {dims.student_hidden} "
                             f"!= teacher width {dims.teacher_hidden} (use mgd, which aligns widths)")

    def forward(self, step: Step) -> Tensor:
        s, t = step.s_rows, step.t_rows
        return (mgfd_pmd(step.student["hr"]["hidden"], step.teacher["hr"]["hidden"], step.views["hr"]["counts"])
                + mgfd_pmd(s["tail_hidden"], t["tail_hidden"], s["tail_counts"]))


@register
class MaskedGenerativeDistillation(LossTerm):
    """MGD (Yang et al., ECCV 2022) on token sequences: the student's last-layer states are aligned to the
    teacher's width, a random `hide_rate` of the real tokens is zeroed, and a generator of two convolutions
    over neighbouring tokens (MGD's Conv3x3-ReLU-Conv3x3, here kernel 3 along the sequence) rebuilds the
    teacher's states at every real token from the visible neighbours; MSE per real token and dimension.
    One generator per encoder side; trained with the student, never exported."""

    name = "mgd"
    params = {"hide_rate": 0.65, "generator": "conv"}

    @classmethod
    def check(cls, params: dict[str, Any], dims: Dims | None = None) -> None:
        rate = float(params["hide_rate"])
        if not 0.0 < rate < 1.0:
            raise ValueError(f"loss term 'mgd': hide_rate={rate}; expected a rate in (0, 1) (MGD: 0.15-0.75)")
        if params["generator"] != "conv":
            raise ValueError(f"loss term 'mgd': generator={params['generator']!r}; expected conv (a per-token MLP "
                             "cannot rebuild a hidden position: it only sees the zeros there)")

    def __init__(self, params: dict[str, Any], dims: Dims, shared: nn.ModuleDict | None = None):
        super().__init__(params, dims)
        self.generators = nn.ModuleDict({side: MGDGenerator(dims.student_hidden, dims.teacher_hidden)
                                         for side in ("query", "entity")})

    def forward(self, step: Step) -> Tensor:
        total = 0.0
        for key, view in step.views.items():
            if key == "head":
                continue
            mask = view["inputs"]["attention_mask"]
            hide = random_token_mask(mask, float(self.p["hide_rate"]))
            total = total + mgd_loss(step.student[key]["hidden"], step.teacher[key]["hidden"], mask,
                                     self.generators[view["side"]], hide)
        return total


@register
class PatientKD(LossTerm):
    """Patient KD (Sun et al., 2019), L_PT: the L2-normalised sentence vector after each student layer but
    the last follows the teacher's after its uniformly mapped layer (PKD-Skip); element-mean squared
    distance, as PKD's code. The sentence vector is the one this bi-encoder uses (its pooling), PKD's is
    [CLS]."""

    name = "pkd"
    all_layers = True

    def __init__(self, params: dict[str, Any], dims: Dims, shared: nn.ModuleDict | None = None):
        super().__init__(params, dims)
        self.layer_map = uniform_layer_map(dims.teacher_layers, dims.student_layers)

    def forward(self, step: Step) -> Tensor:
        keys = list(step.views)
        return sum(pkd_loss(step.student[k]["states"], step.teacher[k]["states"],
                            step.views[k]["inputs"]["attention_mask"], self.layer_map, step.pooling)
                   for k in keys) / len(keys)
