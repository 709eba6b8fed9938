"""L_MGFD: masked generation features, in PMD's form and in an MGD-style generation form.

(a) PMD (Eq. 2): per sequence, the mean of the last-layer states at the masked input positions
    (duplicates weighted by how often drawn), L2-normalised; MSE between student and teacher. A
    sequence without masked positions contributes 0 (PMD uses all-ones vectors on both sides), so the
    term is exactly 0 at mask rate 0.
(b) generation (MGD adapted to tokens): a random rate of the student's token states is zeroed, a small
    generator maps what is left to the teacher's width, and the result regresses the teacher's states
    at every real token (the student must "generate" the teacher's features of the hidden tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def masked_features(hidden: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """(B, d) normalised count-weighted means over masked positions, and (B,) whether any position was masked."""
    w = counts.to(torch.float32)
    has = w.sum(1) > 0
    pooled = (hidden.float() * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp(min=1.0)
    return F.normalize(pooled, dim=-1), has


def mgfd_pmd(student_hidden: Tensor, teacher_hidden: Tensor, counts: Tensor) -> Tensor:
    """MSE (mean over B x d) of the masked-position features; rows with no mask count as zero error."""
    with torch.autocast(device_type=student_hidden.device.type, enabled=False):
        fs, has = masked_features(student_hidden, counts)
        ft, _ = masked_features(teacher_hidden, counts)
        if student_hidden.shape[-1] != teacher_hidden.shape[-1]:
            raise ValueError("PMD's MGFD compares hidden states directly: student and teacher widths must match")
        diff = (fs - ft) * has.unsqueeze(-1)
        return diff.pow(2).mean()


class FeatureGenerator(nn.Module):
    """MGD's generation block for token sequences: Linear-GELU-Linear, or Conv1d-GELU-Conv1d over tokens."""

    def __init__(self, d_student: int, d_teacher: int, kind: str = "mlp"):
        super().__init__()
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(d_student, d_teacher), nn.GELU(), nn.Linear(d_teacher, d_teacher))
        elif kind == "conv":
            self.net = nn.Sequential(nn.Conv1d(d_student, d_teacher, 3, padding=1), nn.GELU(),
                                     nn.Conv1d(d_teacher, d_teacher, 3, padding=1))
        else:
            raise ValueError(f"generator {kind!r}; expected mlp or conv")
        self.kind = kind

    def forward(self, hidden: Tensor) -> Tensor:
        if self.kind == "conv":
            return self.net(hidden.transpose(1, 2)).transpose(1, 2)
        return self.net(hidden)


def random_token_mask(attention_mask: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """(B, L) bool: each real token hidden with probability `rate`."""
    u = torch.rand(attention_mask.shape, generator=generator, device="cpu").to(attention_mask.device)
    return (u < rate) & attention_mask.bool()


def mgfd_generation(student_hidden: Tensor, teacher_hidden: Tensor, attention_mask: Tensor, generator: nn.Module,
                    token_mask: Tensor) -> Tensor:
    """MSE between generator(masked student states) and teacher states over real tokens."""
    hidden = student_hidden.masked_fill(token_mask.unsqueeze(-1), 0.0)
    generated = generator(hidden)
    with torch.autocast(device_type=student_hidden.device.type, enabled=False):
        real = attention_mask.bool().unsqueeze(-1)
        err = (generated.float() - teacher_hidden.float()).pow(2) * real
        return err.sum() / (real.sum() * teacher_hidden.shape[-1]).clamp(min=1)
