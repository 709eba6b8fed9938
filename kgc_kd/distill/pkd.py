"""Patient KD (Sun et al. 2019), a baseline: the student's intermediate sentence vectors follow the teacher's.

For each student layer i but the last, the normalised pooled state after layer i is pulled towards the
teacher's after layer map[i] (squared differences, element mean over batch, dimensions and layers, as
PKD's code computes its MSE); the last layer is already covered by the logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kgc_kd.models.pooling import pool


def pkd_loss(student_states: tuple[Tensor, ...], teacher_states: tuple[Tensor, ...], attention_mask: Tensor,
             layer_map: list[int], pooling: str = "mean") -> Tensor:
    """`*_states` are Hugging Face hidden_states (embeddings first, then one per layer)."""
    pairs = [(i + 1, layer_map[i] + 1) for i in range(len(layer_map) - 1)]
    if not pairs:
        return student_states[-1].new_zeros((), dtype=torch.float32)
    total = 0.0
    for s, t in pairs:
        vs = pool(student_states[s], attention_mask, pooling)
        vt = pool(teacher_states[t], attention_mask, pooling)
        if vs.shape[-1] != vt.shape[-1]:
            raise ValueError("PKD compares hidden states directly: student and teacher widths must match")
        total = total + (vs - vt).pow(2).mean()  # pool() returns unit vectors; element mean as PKD's code
    return total / len(pairs)
