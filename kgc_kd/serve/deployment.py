"""The deployment question, answered from a serving benchmark's rows: per grade, the smallest and the fastest
variant within 1% (relative) of that grade's fp32 test MRR, against the teacher fp32. Pure functions: the
benchmark (`serve.bench`) computes it, the run's report (`chain.report`) renders it."""

from __future__ import annotations

WITHIN = 0.01  # "within 1% (relative) of the grade's fp32 test MRR"


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def deployment(rows: list[dict], within: float = WITHIN) -> dict:
    """Per grade (stage), the smallest and the fastest (p50 at batch 1) variant whose test MRR is within
    `within` (relative) of that grade's fp32 test MRR, each with bytes and p50 against the teacher fp32; and
    over all rows, the smallest variant keeping 95% of the teacher fp32's test MRR. `rows`: serve.json's."""
    base = next((r for r in rows if r["stage"] == "teacher" and r["variant"] == "fp32"), None)
    out: dict = {"within": within, "baseline": None, "grades": {}}
    if base is not None:
        out["baseline"] = {"stage": "teacher", "variant": "fp32", "bytes": base["bytes_on_disk"],
                           "p50_ms": base["latency_ms"]["p50"], "mrr": base["test"]["mrr"]}

    def against(r: dict) -> dict:
        d = {"variant": r["variant"], "bytes": r["bytes_on_disk"], "p50_ms": r["latency_ms"]["p50"],
             "mrr": r["test"]["mrr"]}
        if base is not None:
            d["bytes_x_fewer"] = round(base["bytes_on_disk"] / max(r["bytes_on_disk"], 1), 2)
            d["p50_x_lower"] = round(base["latency_ms"]["p50"] / max(r["latency_ms"]["p50"], 1e-9), 2)
            d["mrr_of_teacher"] = round(r["test"]["mrr"] / base["test"]["mrr"], 4) if base["test"]["mrr"] else None
        return d

    for stage in dict.fromkeys(r["stage"] for r in rows):
        mine = [r for r in rows if r["stage"] == stage]
        fp32 = next((r for r in mine if r["variant"] == "fp32"), None)
        if fp32 is None:
            continue
        ok = [r for r in mine if r["test"]["mrr"] >= (1 - within) * fp32["test"]["mrr"]]
        out["grades"][stage] = {
            "fp32_mrr": fp32["test"]["mrr"],
            "smallest": against(min(ok, key=lambda r: (r["bytes_on_disk"], r["latency_ms"]["p50"]))),
            "fastest": against(min(ok, key=lambda r: (r["latency_ms"]["p50"], r["bytes_on_disk"]))),
        }
    if base is not None:
        keep = [r for r in rows if r["test"]["mrr"] >= 0.95 * base["test"]["mrr"]]
        out["smallest_within_95pct_of_teacher"] = (
            {"stage": (s := min(keep, key=lambda r: r["bytes_on_disk"]))["stage"], **against(s)} if keep else None)
    return out


def format_deployment(dep: dict) -> str:
    """The deployment answer as markdown (serve.md and the run's report.md)."""
    base = dep.get("baseline")
    lines = [f"## Deployment: per grade, the smallest and the fastest variant within {100 * dep['within']:.0f}% "
             "of its fp32 test MRR"]
    if base:
        lines.append(f"against the teacher fp32: {megabytes(base['bytes'])}, p50 {base['p50_ms']:.2f} ms, "
                     f"test MRR {base['mrr']:.4f}")
    lines += ["", "| grade | fp32 MRR | smallest | bytes (x fewer) | its MRR | fastest | p50 ms (x lower) | its MRR |",
              "|---|---|---|---|---|---|---|---|"]
    for stage, g in dep["grades"].items():
        s, f = g["smallest"], g["fastest"]
        lines.append(f"| {stage} | {g['fp32_mrr']:.4f} | {s['variant']} | {megabytes(s['bytes'])} "
                     f"({s.get('bytes_x_fewer', '-')}x) | {s['mrr']:.4f} | {f['variant']} | {f['p50_ms']:.2f} "
                     f"({f.get('p50_x_lower', '-')}x) | {f['mrr']:.4f} |")
    best = dep.get("smallest_within_95pct_of_teacher")
    if best:
        lines += ["", f"Smallest variant keeping 95% of the teacher fp32's test MRR: {best['stage']} {best['variant']}, "
                      f"{megabytes(best['bytes'])} ({best.get('bytes_x_fewer')}x fewer bytes), test MRR {best['mrr']:.4f} "
                      f"({100 * (best.get('mrr_of_teacher') or 0):.1f}% of the teacher's)."]
    elif base:
        lines += ["", "No variant keeps 95% of the teacher fp32's test MRR."]
    return "\n".join(lines)
