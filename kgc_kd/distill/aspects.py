"""Feature-level loss terms on captured layer internals (MaKD's aspects and the TinyBERT/MiniLM baselines).

Pure functions on (B, L, d) tensors with a (B, L) padding mask, following kd_losses_spec §0: padding
never counts (rows and, for attention, columns), the mask bias is finite (-1e4, so KL never meets
0 * -inf), softmax/KL/MSE run in fp32 with autocast off, and KL is teacher || student.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MASK_BIAS = -1e4


def _fp32(*xs: Tensor) -> list[Tensor]:
    return [x.float() for x in xs]


def masked_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """MSE over real tokens: sum_{b,t} m ||s - t||^2 / (d * sum m)."""
    with torch.autocast(device_type=student.device.type, enabled=False):
        s, t = _fp32(student, teacher)
        m = mask.float().unsqueeze(-1)
        return ((s - t).pow(2) * m).sum() / (m.sum() * s.shape[-1]).clamp(min=1.0)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, L, d) -> (B, heads, L, d / heads)."""
    b, n, d = x.shape
    if d % heads:
        raise ValueError(f"width {d} is not divisible by {heads} heads")
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def relation_logits(a: Tensor, b: Tensor, heads: int) -> Tensor:
    """Per-head scaled dot products a_h b_h^T / sqrt(d_h): (B, heads, L, L)."""
    ah, bh = split_heads(a, heads), split_heads(b, heads)
    return ah @ bh.transpose(-1, -2) / math.sqrt(ah.shape[-1])


def row_kl(teacher_logits: Tensor, student_logits: Tensor, mask: Tensor) -> Tensor:
    """KL(softmax(teacher row) || softmax(student row)) averaged over heads and real query rows; padded
    key columns get the finite bias, padded rows weight 0."""
    bias = (1.0 - mask.float())[:, None, None, :] * MASK_BIAS
    log_t = torch.log_softmax(teacher_logits + bias, dim=-1)
    log_s = torch.log_softmax(student_logits + bias, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (B, h, L)
    rows = mask.float()[:, None, :]
    heads = teacher_logits.shape[1]
    return (kl * rows).sum() / (rows.sum() * heads).clamp(min=1.0)


def attention_kl(q_s: Tensor, k_s: Tensor, q_t: Tensor, k_t: Tensor, mask: Tensor, heads_s: int,
                 heads_t: int) -> Tensor:
    """Self-attention distributions, recomputed from Q and K (MiniLM v1's attention transfer)."""
    if heads_s != heads_t:
        raise ValueError(f"attention KL compares heads one to one: student has {heads_s}, teacher {heads_t} "
                         "(use the qkv_relation term, whose relation heads are free)")
    with torch.autocast(device_type=q_s.device.type, enabled=False):
        q_s, k_s, q_t, k_t = _fp32(q_s, k_s, q_t, k_t)
        return row_kl(relation_logits(q_t, k_t, heads_t), relation_logits(q_s, k_s, heads_s), mask)


def value_relation_kl(v_s: Tensor, v_t: Tensor, mask: Tensor, heads_s: int, heads_t: int) -> Tensor:
    """MiniLM v1's value relation: softmax(V V^T / sqrt(d_k)) per head."""
    if heads_s != heads_t:
        raise ValueError(f"value-relation KL needs equal head counts: student {heads_s}, teacher {heads_t}")
    with torch.autocast(device_type=v_s.device.type, enabled=False):
        v_s, v_t = _fp32(v_s, v_t)
        return row_kl(relation_logits(v_t, v_t, heads_t), relation_logits(v_s, v_s, heads_s), mask)


def relation_kl(x_s: Tensor, x_t: Tensor, mask: Tensor, relation_heads: int) -> Tensor:
    """MiniLM v2's self-relation (Q-Q, K-K or V-V): both sides re-split into the same number of relation
    heads, so student and teacher head counts and widths may differ."""
    with torch.autocast(device_type=x_s.device.type, enabled=False):
        x_s, x_t = _fp32(x_s, x_t)
        return row_kl(relation_logits(x_t, x_t, relation_heads), relation_logits(x_s, x_s, relation_heads), mask)


def attention_score_mse(q_s: Tensor, k_s: Tensor, q_t: Tensor, k_t: Tensor, mask: Tensor, heads_s: int,
                        heads_t: int) -> Tensor:
    """TinyBERT's attention loss on pre-softmax scores, over real (row, column) pairs only."""
    if heads_s != heads_t:
        raise ValueError(f"attention-score MSE needs equal head counts: student {heads_s}, teacher {heads_t}")
    with torch.autocast(device_type=q_s.device.type, enabled=False):
        q_s, k_s, q_t, k_t = _fp32(q_s, k_s, q_t, k_t)
        diff = relation_logits(q_s, k_s, heads_s) - relation_logits(q_t, k_t, heads_t)
        m = mask.float()
        pair = (m[:, :, None] * m[:, None, :])[:, None]  # (B, 1, L, L)
        return (diff.pow(2) * pair).sum() / (pair.sum() * heads_s).clamp(min=1.0)
