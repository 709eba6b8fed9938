"""The statistics of a comparison, as pure functions of per-seed test metrics (no files, no models).

Input: for each objective, one record per seed, `{"seed", "run_dir", "test": {grade: {metric: value}}}`.
Output, per grade and objective: mean and sample standard deviation (ddof=1; `None` for a single seed,
where no spread can be estimated) of test MRR, Hits@1 and Hits@10, the per-seed values, and, when the
baseline objective (`none`, CE only) is compared, the paired difference to it over the seeds both ran.
"""

from __future__ import annotations

import statistics
from typing import Any, Optional

METRICS = ("mrr", "hits@1", "hits@10")
BASELINE = "none"


def mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (n - 1 in the denominator); the std of one value is None."""
    if not values:
        raise ValueError("no values to aggregate")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def paired_difference(obj: dict[int, float], base: dict[int, float]) -> Optional[dict[str, Any]]:
    """obj - base over the seeds both have (same seed: same data order and initialisation)."""
    seeds = [s for s in obj if s in base]
    if not seeds:
        return None
    diffs = [obj[s] - base[s] for s in seeds]
    mean, std = mean_std(diffs)
    return {"mean": mean, "std": std, "positive": sum(d > 0 for d in diffs), "n": len(diffs), "seeds": seeds,
            "per_seed": diffs}


def summarize(records: list[dict[str, Any]], grade: str) -> dict[str, Any]:
    """One objective at one grade: mean/std of each metric over its seeds, with the per-seed values."""
    out: dict[str, Any] = {"n": len(records)}
    for m in METRICS:
        values = [float(r["test"][grade][m]) for r in records]
        out[f"{m}_mean"], out[f"{m}_std"] = mean_std(values)
    out["seeds"] = [r["seed"] for r in records]
    out["per_seed"] = {m: [float(r["test"][grade][m]) for r in records] for m in METRICS}
    vals = [r.get("val", {}).get(grade) for r in records]
    if vals and all(v is not None for v in vals):  # the grade's best validation MRR (what chose its checkpoint)
        out["val_mrr_mean"], out["val_mrr_std"] = mean_std([float(v) for v in vals])
        out["per_seed"]["val_mrr"] = [float(v) for v in vals]
    out["run_dirs"] = [r["run_dir"] for r in records]
    return out


def _versus(summary: dict[str, Any], base: dict[str, Any], metric: str) -> Optional[dict[str, Any]]:
    """The paired difference in `metric` (mrr: test, val_mrr: validation) to the baseline, with its verdict."""
    diff = paired_difference(dict(zip(summary["seeds"], summary["per_seed"][metric])),
                             dict(zip(base["seeds"], base["per_seed"][metric])))
    if diff is not None:
        # "beats none by more than the seed spread": the mean paired gain exceeds the larger of the two seed
        # standard deviations (None with a single seed: no spread to compare with)
        stds = (summary[f"{metric}_std"], base[f"{metric}_std"])
        diff["seed_spread"] = None if None in stds else max(stds)
        diff["beyond_spread"] = None if diff["seed_spread"] is None else diff["mean"] > diff["seed_spread"]
    return diff


def aggregate(runs: dict[str, list[dict[str, Any]]], grades: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """{grade: {objective: summary}}; objectives other than `none` get `vs_none` when `none` is compared."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for grade in grades:
        out[grade] = {obj: summarize(records, grade) for obj, records in runs.items() if records}
        base = out[grade].get(BASELINE)
        if base is None:
            continue
        for obj, summary in out[grade].items():
            if obj == BASELINE:
                continue
            summary["vs_none"] = _versus(summary, base, "mrr")
            if "val_mrr" in summary["per_seed"] and "val_mrr" in base["per_seed"]:
                summary["val_vs_none"] = _versus(summary, base, "val_mrr")
    return out


def beats_baseline(grades: dict[str, dict[str, dict[str, Any]]], objective: str) -> dict[str, Optional[bool]]:
    """For each grade: does `objective` beat `none` by more than the seed spread (None: cannot tell)?"""
    return {g: (by_obj.get(objective, {}).get("vs_none") or {}).get("beyond_spread") for g, by_obj in grades.items()}
