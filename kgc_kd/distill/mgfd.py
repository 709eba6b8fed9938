"""L_MGFD: masked generation features, in PMD's form and in an MGD-style generation form.

(a) PMD (Eq. 2): per sequence, the mean of the last-layer states at the masked input positions
    (duplicates weighted by how often drawn), L2-normalised; MSE between student and teacher. A
    sequence without masked positions contributes 0 (PMD uses all-ones vectors on both sides), so the
    term is exactly 0 at mask rate 0.
(b) MGD (Yang et al. 2022) adapted to tokens: the student's states are aligned to the teacher's width,
    a random rate of the real tokens is zeroed, and a generator of convolutions over neighbouring tokens
    rebuilds the teacher's states at every real token (the hidden ones only from their context).
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


class MGDGenerator(nn.Module):
    """MGD's generation block for token sequences: align the student's width to the teacher's (a linear map,
    MGD's 1x1 convolution; identity when the widths match), zero the hidden and padding positions, then
    Conv-ReLU-Conv with kernel 3 along the tokens (MGD: 3x3 convolutions over the feature map), so each
    position is rebuilt from its visible neighbours."""

    def __init__(self, d_student: int, d_teacher: int, kernel: int = 3):
        super().__init__()
        self.align = nn.Identity() if d_student == d_teacher else nn.Linear(d_student, d_teacher)
        pad = kernel // 2
        self.generate = nn.Sequential(nn.Conv1d(d_teacher, d_teacher, kernel, padding=pad), nn.ReLU(),
                                      nn.Conv1d(d_teacher, d_teacher, kernel, padding=pad))

    def forward(self, hidden: Tensor, hide: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L, d_teacher) generated states; `hide` (B, L) True at the positions the student does not show."""
        real = attention_mask.bool()
        x = self.align(hidden).masked_fill(~(real & ~hide).unsqueeze(-1), 0.0)
        conv1, relu, conv2 = self.generate
        # padding is zeroed again between the convolutions, so a row's output never depends on how much
        # padding its batch adds after it (hidden positions keep their first-convolution activation)
        h = relu(conv1(x.transpose(1, 2))) * real.unsqueeze(1).to(x.dtype)
        return conv2(h).transpose(1, 2)


def random_token_mask(attention_mask: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """(B, L) bool: each real token hidden with probability `rate`."""
    u = torch.rand(attention_mask.shape, generator=generator, device="cpu").to(attention_mask.device)
    return (u < rate) & attention_mask.bool()


def mgd_loss(student_hidden: Tensor, teacher_hidden: Tensor, attention_mask: Tensor, generator: MGDGenerator,
             hide: Tensor) -> Tensor:
    """MSE between the generator's rebuilt states and the teacher's at every real token (hidden or not),
    averaged over real tokens and dimensions (fp32)."""
    generated = generator(student_hidden, hide, attention_mask)
    with torch.autocast(device_type=student_hidden.device.type, enabled=False):
        real = attention_mask.bool().unsqueeze(-1)
        err = (generated.float() - teacher_hidden.float()).pow(2) * real
        return err.sum() / (real.sum() * teacher_hidden.shape[-1]).clamp(min=1)
