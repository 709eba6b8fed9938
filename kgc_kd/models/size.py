"""How big and how fast a bi-encoder is: the two axes of the compression trade-off."""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
from torch import nn

from kgc_kd.runtime.devices import synchronize
from kgc_kd.models.biencoder import BiEncoder


def _count(module: nn.Module, skip_embeddings: bool = False) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if not (skip_embeddings and "embeddings." in n))


def parameter_counts(net: BiEncoder) -> dict[str, int]:
    """Total (a shared encoder counted once, temperature included), per encoder, and without embeddings
    (the part that shrinks with depth; embeddings are a fixed floor)."""
    q, e = _count(net.query_encoder), _count(net.entity_encoder)
    q_ne, e_ne = _count(net.query_encoder, True), _count(net.entity_encoder, True)
    if net.shared:
        e, e_ne = 0, 0
    return {"params_total": q + e + 1, "params_query": q, "params_entity": _count(net.entity_encoder),
            "params_no_embeddings": q_ne + e_ne}


#: Lightning precision -> the autocast dtype its forward passes run in (absent: no autocast, fp32 or "-true")
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def autocast_dtype(precision: str | None) -> torch.dtype | None:
    """The dtype a run in `precision` autocasts to (bf16-mixed -> bfloat16, 16-mixed -> float16), None for
    32-true (and unset) and the "-true" precisions, whose weights already hold their dtype."""
    return AUTOCAST_DTYPES.get(str(precision)) if precision is not None else None


@torch.no_grad()
def throughput(encode, loader, device: torch.device, key: str, max_items: int = 2048, warmup: int = 1,
               repeats: int = 3, precision: str | None = None) -> float:
    """Items per second of `encode` over batches of `loader` (eval mode, no grad): the best of `repeats`
    timed passes after `warmup` batches, so one slow pass (allocation, a busy core) does not decide it.
    `precision` is the run's Lightning precision: the passes run under its autocast (bf16-mixed: bfloat16,
    16-mixed: float16, 32-true or None: none), so the latency is the one the trained stage runs at."""
    device = torch.device(device)
    dtype = autocast_dtype(precision)

    def context():
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()

    def move(inputs):
        return {k: v.to(device) for k, v in inputs.items()}

    batches = []
    n = 0
    for batch in loader:
        batches.append(move(batch[key]))
        n += batch[key]["input_ids"].shape[0]
        if n >= max_items:
            break
    with context():
        for inputs in batches[:warmup]:
            encode(inputs)
    timed = batches[warmup:] or batches
    count = sum(b["input_ids"].shape[0] for b in timed)
    best = 0.0
    for _ in range(max(1, repeats)):
        synchronize(device)
        start = time.perf_counter()
        with context():
            for inputs in timed:
                encode(inputs)
        synchronize(device)
        best = max(best, count / max(time.perf_counter() - start, 1e-9))
    return best
