"""This machine's dense matmul peak at a given precision: the denominator of FLOP utilisation.

A large square matmul is the best case a transformer's linear layers can approach; measuring it in the
same run (same threads, same clocks, same library build) makes the utilisation ratio honest where a
datasheet number would not be.
"""

from __future__ import annotations

import torch

from experiments.bench.measure import timed

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_peak(precision: str, *, n: int = 2048, warmup: int = 2, repeats: int = 5,
                device: torch.device | str = "cpu") -> dict:
    """FLOP/s of an n x n @ n x n matmul (2 n^3 FLOPs), median over repeats."""
    dtype = DTYPES[precision]
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    t = timed(lambda: a @ b, warmup=warmup, repeats=repeats, device=device)
    flops = 2 * n**3
    return {"precision": precision, "n": n, "flops": flops, **t, "flops_per_s": flops / t["median_s"]}
