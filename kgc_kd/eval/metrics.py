"""Rank-based link-prediction metrics (MRR, MR, Hits@k)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .ranks import Ranks

__all__ = ["rank_metrics", "direction_metrics"]


def rank_metrics(ranks: Tensor, ks: Sequence[int] = (1, 3, 10)) -> dict[str, float]:
    """MRR, MR and Hits@k (fractions in [0, 1]) from one-based ranks.

    Hits@k uses ``rank <= k`` as PyKEEN does, so a realistic rank of 1.5
    counts for Hits@2 but not Hits@1.
    """
    r = torch.as_tensor(ranks).detach().reshape(-1).to(device="cpu", dtype=torch.float64)
    if r.numel() == 0:
        raise ValueError("rank_metrics needs at least one rank; got an empty tensor (no queries evaluated?)")
    if torch.isnan(r).any() or (r < 1).any():
        raise ValueError("ranks must be one-based (>= 1) and not NaN")
    out = {"mrr": float((1.0 / r).mean()), "mr": float(r.mean())}
    for k in ks:
        out[f"hits@{k}"] = float((r <= k).double().mean())
    return out


def direction_metrics(
    ranks: Ranks,
    is_head: Tensor,
    ks: Sequence[int] = (1, 3, 10),
    rank_type: str = "realistic",
) -> dict[str, float]:
    """Per-direction metrics plus their unweighted mean.

    SimKGC reports the mean of forward (tail) and backward (head) metrics
    rather than the micro-average over all queries; with one direction
    missing the mean is just the other one. Metrics of an empty direction are
    omitted (not NaN) so they do not poison loggers; its count is still 0.
    """
    r = ranks.get(rank_type).detach().cpu()
    is_head = torch.as_tensor(is_head).detach().cpu().bool().reshape(-1)
    if is_head.shape[0] != r.shape[0]:
        raise ValueError(f"is_head has {is_head.shape[0]} entries for {r.shape[0]} ranks")
    if r.numel() == 0:
        raise ValueError("direction_metrics needs at least one rank; got none")

    out: dict[str, float] = {}
    per_dir: list[dict[str, float]] = []
    for name, mask in (("tail", ~is_head), ("head", is_head)):
        n = int(mask.sum())
        out[f"{name}/count"] = float(n)
        if n == 0:
            continue
        m = rank_metrics(r[mask], ks)
        per_dir.append(m)
        out.update({f"{name}/{k}": v for k, v in m.items()})
    for key in per_dir[0]:
        out[key] = sum(m[key] for m in per_dir) / len(per_dir)
    out["num_queries"] = float(r.shape[0])
    return out
