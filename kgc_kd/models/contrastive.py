"""SimKGC's training objective: InfoNCE over in-batch, pre-batch and self negatives with an additive margin.

Follows the spec (A5) exactly: the margin is subtracted from the positive cosine before scaling by
1/tau, known true answers are set to -1e4 after scaling, and the loss is the mean of row-wise CE plus
the CE of the transposed in-batch block (tail -> query direction). Computed in fp32 with autocast off:
under bf16 the gap between cos/tau values of near-duplicate entities would be rounded away.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MASK_VALUE = -1e4


def contrastive_logits(hr: Tensor, tail: Tensor, inv_t: Tensor, *, margin: float = 0.0,
                       fn_mask: Tensor | None = None, head: Tensor | None = None, self_mask: Tensor | None = None,
                       prebatch: Tensor | None = None, prebatch_mask: Tensor | None = None,
                       prebatch_weight: float = 0.5) -> Tensor:
    """(B, B [+ M] [+ 1]) logits: in-batch block, then pre-batch columns, then the self-negative column.

    `fn_mask`/`prebatch_mask`/`self_mask` are True where the column is a known answer (not a negative).
    Pass margin=0 at evaluation time (SimKGC applies it in training only)."""
    with torch.autocast(device_type=hr.device.type, enabled=False):
        hr, tail, inv_t = hr.float(), tail.float(), inv_t.float()
        cos = hr @ tail.t()
        if margin:
            cos = cos - margin * torch.eye(cos.shape[0], cos.shape[1], device=cos.device, dtype=cos.dtype)
        logits = cos * inv_t
        if fn_mask is not None:
            logits = logits.masked_fill(fn_mask, MASK_VALUE)
        blocks = [logits]
        if prebatch is not None and prebatch.numel():
            pb = (hr @ prebatch.float().t()) * inv_t * prebatch_weight
            if prebatch_mask is not None:
                pb = pb.masked_fill(prebatch_mask, MASK_VALUE)
            blocks.append(pb)
        if head is not None:
            sn = (hr * head.float()).sum(-1, keepdim=True) * inv_t
            if self_mask is not None:
                sn = sn.masked_fill(self_mask.unsqueeze(-1), MASK_VALUE)
            blocks.append(sn)
        return torch.cat(blocks, dim=1) if len(blocks) > 1 else logits


def infonce_loss(logits: Tensor) -> Tensor:
    """CE over all columns for the query -> tail direction plus CE over the in-batch block transposed."""
    b = logits.shape[0]
    labels = torch.arange(b, device=logits.device)
    logits = logits.float()
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits[:, :b].t(), labels)


def in_batch_accuracy(logits: Tensor) -> Tensor:
    b = logits.shape[0]
    return (logits.argmax(dim=1) == torch.arange(b, device=logits.device)).float().mean()
