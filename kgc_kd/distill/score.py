"""L_SCORE: make the student's logit matrix match the teacher's.

PMD uses a plain MSE over the full (B x C) matrices, each scaled by its own 1/tau, masked entries (-1e4)
included (they are equal on both sides, so they add 0 but count in the mean). The KL option is Hinton's
logit KD on the same matrices with a distillation temperature T (scaled by T^2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def score_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        return F.mse_loss(student_logits.float(), teacher_logits.float())


def score_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Row-wise KL(teacher || student) of softmax(logits / T), batch mean, times T^2."""
    if temperature <= 0:
        raise ValueError(f"KD temperature must be > 0, got {temperature}")
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        s = F.log_softmax(student_logits.float() / temperature, dim=-1)
        t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
        return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


SCORE_LOSSES = ("mse", "kl")


def score_loss(kind: str, student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    if kind == "mse":
        return score_mse(student_logits, teacher_logits)
    if kind == "kl":
        return score_kl(student_logits, teacher_logits, temperature)
    raise ValueError(f"score loss {kind!r}; expected one of {SCORE_LOSSES}")
