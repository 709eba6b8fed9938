"""The scale section: the host side of a Wikidata5M-sized run, measured on fractions of it and extrapolated.

Wikidata5M (4,594,485 entities, 20.6M training triples) cannot be trained here, but everything a run does
on the host apart from the encoder's arithmetic can be run at a fraction of its size and extrapolated.
The graph is `wikidata_like.wikidata_like_kg` (Wikidata5M's triples per entity, Zipf degrees,
hub entities; texts of the configured tokenizer's own vocabulary words, so tokenising is real) at
`fractions` of Wikidata5M's entity count (default 1/50 and 1/10), seeded.

Every step runs in a fresh process (`scale_steps.py`: seconds, peak and kept growth of resident memory
over the process's start, the step's own figures), so its memory is its own:

- `kg`: building the KG (Python strings and triples) alone: its share of data preparation;
- `tokens`: data preparation as a run does it, link-graph text off: the KG, then its token table
  (`TokenCache.load_or_build` into a fresh cache directory); run twice, the second process should read
  the cache the first wrote (`read_cache`);
- `link_graph`: the same with SimKGC's neighbour text (reported, no target; `link_graph_fractions`);
- `filter`: `KG.filter_index` over train + valid + test;
- `simkgc_json`: `load_simkgc_dir` on the graph written in SimKGC's layout (the writing is set-up);
- `collate`: the training collate's false-negative mask (`in_batch_mask`) on 1,024-example batches of
  train + inverse rows, median and max ms over `batches` after `warmup`, per thread count in `threads`,
  at each fraction and at `collate_entities` (default Wikidata5M's: 41.2M keys); `train_collate`: the
  whole `TrainCollator` at each fraction, its token table read from the tokens step's cache;
- `eval_plan`: `kgc_kd.eval.memory_plan.evaluation_memory_plan` at full scale (384-d and 768-d, bf16:
  arithmetic), and `eval_cpu`: a filtered ranking from random vectors at the smallest fraction, whose
  measured peak growth is set beside the plan at the same size (fp32);
- `predict`: `kgc_kd.predict`'s start-up on a compact export at the largest fraction (first start, then
  the start every later call sees).

Extrapolation: each figure of each step (per run / thread count) is fitted as cost = a + b * n by least
squares through the fractions (two fractions: the line through both; one: b * n), n the step's size
(entities; triples for the filter; train + inverse keys for the collate), and evaluated at Wikidata5M's n;
bench.json keeps the fit's a, b and n with the measured rows. A step measured at full size (the collate
at 41.2M keys) reports that measurement as its full-scale value. The targets (`targets`: what a
Wikidata5M run needs of the host, docs/performance.md) sit beside their figures with pass / fail: measured
where the stated scale was run, else from the fit (said so). A failed step reports {"error": ...} and does
not stop the section.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

from experiments.bench import child_env
from experiments.bench.wikidata_like import TRIPLES_PER_ENTITY, WIKIDATA5M

DEFAULT_FRACTIONS = ("1/50", "1/10")
FULL_N = {"entities": WIKIDATA5M["entities"], "triples": WIKIDATA5M["train"] + WIKIDATA5M["valid"] + WIKIDATA5M["test"],
          "keys": 2 * WIKIDATA5M["train"]}
GB = 1e9 / 2**20  # MiB in a GB (the targets are in GB)
# evaluation at full scale: every test triple in both directions (SimKGC's evaluation of Wikidata5M)
FULL_EVAL_QUERIES = 2 * WIKIDATA5M["test"]

# step -> (what it measures, what n counts, the row keys that make separate fits, figures fitted)
STEPS = {
    "kg": ("the KG alone: ids, names, descriptions (Python strings) and triples", "entities", (),
           ("seconds", "peak_growth_mib", "kept_growth_mib")),
    "tokens": ("data preparation, link-graph text off: the KG + TokenCache.load_or_build (disk cache)", "entities",
               ("run",), ("seconds", "kg_s", "tokens_s", "peak_growth_mib", "kept_growth_mib")),
    "link_graph": ("data preparation with data.link_graph (SimKGC's neighbour text)", "entities", ("run",),
                   ("seconds", "kg_s", "tokens_s", "peak_growth_mib", "kept_growth_mib")),
    "filter": ("KG.filter_index over train + valid + test, both directions", "triples", (),
               ("seconds", "peak_growth_mib", "kept_growth_mib")),
    "simkgc_json": ("load_simkgc_dir on the graph in SimKGC's json layout", "entities", (),
                    ("seconds", "peak_growth_mib", "kept_growth_mib")),
    "collate": ("in_batch_mask per 1,024-example batch of train + inverse rows (KnownTriples over those keys)", "keys",
                ("threads",), ("median_ms", "max_ms", "known_build_s", "peak_growth_mib", "kept_growth_mib")),
    "train_collate": ("the whole TrainCollator per batch (mask, inputs, de-duplication), token table from the cache",
                      "keys", ("threads",), ("median_ms", "max_ms", "known_build_s")),
    "predict": ("kgc_kd.predict start-up on a compact export (tiny encoder), imports apart: the first start, then "
                "every later one",
                "entities", ("run",), ("start_s", "seconds", "peak_growth_mib", "kept_growth_mib")),
}


def parse_fraction(text: str) -> Fraction:
    """'1/50' or '0.02' as an exact fraction in (0, 1]."""
    try:
        f = Fraction(text).limit_denominator(1_000_000)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"expected a fraction like 1/50 or 0.02, got {text!r}") from None
    if not 0 < f <= 1:
        raise ValueError(f"a fraction of Wikidata5M must lie in (0, 1], got {text!r}")
    return f


def fraction_label(f: Fraction) -> str:
    return "1" if f == 1 else f"1/{f.denominator}" if f.numerator == 1 else f"{float(f):g}"


def entities_at(f: Fraction) -> int:
    return round(f * WIKIDATA5M["entities"])


def size_n(row: dict, n_of: str) -> int | None:
    """The step's size n of one measured row: entities, triples (train + valid + test) or keys (2 x train)."""
    e = row.get("num_entities")
    if n_of == "entities":
        return e
    if n_of == "triples":
        return row.get("num_triples")
    return row.get("num_keys") if row.get("num_keys") is not None else (e and 2 * round(TRIPLES_PER_ENTITY * e))


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(a, b) of y = a + b * n by least squares; one point (or one distinct n): the line through the origin."""
    ns = {n for n, _ in points}
    if len(ns) < 2:
        n, y = max(points)
        return 0.0, y / n
    mean_n = sum(n for n, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    b = sum((n - mean_n) * (y - mean_y) for n, y in points) / sum((n - mean_n) ** 2 for n, _ in points)
    return mean_y - b * mean_n, b


def extrapolate(rows: list[dict], figure: str, n_of: str, n_full: int) -> dict | None:
    """The figure at n_full: measured there if a row has that size, else a + b * n through the rows."""
    points = [(size_n(r, n_of), r[figure]) for r in rows if r.get(figure) is not None and size_n(r, n_of)]
    if not points:
        return None
    at_full = [y for n, y in points if n == n_full]
    if at_full:
        return {"value": at_full[0], "formula": "measured", "n": n_full, "n_of": n_of}
    a, b = fit_line(points)
    return {"value": a + b * n_full, "formula": "a + b*n" if len({n for n, _ in points}) > 1 else "b*n",
            "a": a, "b": b, "n": n_full, "n_of": n_of, "points": len(points)}


def group_label(row: dict, keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k}={row.get(k)}" for k in keys) or "all"


def summarize_step(name: str, rows: list[dict]) -> dict:
    what, n_of, keys, figures = STEPS[name]
    ok = [r for r in rows if "error" not in r]
    full_scale: dict[str, dict] = {}
    for r in ok:
        full_scale.setdefault(group_label(r, keys), {})
    for label in full_scale:
        group = [r for r in ok if group_label(r, keys) == label]
        fits = {f: extrapolate(group, f, n_of, FULL_N[n_of]) for f in figures}
        full_scale[label] = {f: v for f, v in fits.items() if v is not None}
    return {"what": what, "n_of": n_of, "group_by": list(keys), "measured": rows, "full_scale": full_scale}


def compose_train_collate(steps: dict) -> None:
    """The whole collate's median per batch at full scale, composed instead of fitted: only its mask depends on
    the graph's size (the token gathers read fixed-width rows), and the mask is measured at the full key count,
    so full = collator(n0) - mask(n0) + mask(full) at the largest measured fraction n0, per thread count. A
    line through two small fractions would extrapolate noise (a slope of ~0 ms per key either way)."""
    mask_rows = [r for r in steps.get("collate", {}).get("measured", []) if "median_ms" in r]
    full = FULL_N["keys"]
    tc = steps.get("train_collate")
    if not tc:
        return
    for label, figures in tc["full_scale"].items():
        rows = [r for r in tc["measured"] if "median_ms" in r and group_label(r, ("threads",)) == label]
        if not rows:
            continue
        r0 = max(rows, key=lambda r: r["num_keys"])
        mask_at = {r["num_keys"]: r for r in mask_rows if group_label(r, ("threads",)) == label}
        if r0["num_keys"] not in mask_at or full not in mask_at:
            continue
        fig = "median_ms"  # a max over 20 batches is one batch's noise: neither fitted nor composed
        figures.pop("max_ms", None)
        value = r0[fig] - mask_at[r0["num_keys"]][fig] + mask_at[full][fig]
        figures[fig] = {"value": value, "formula": "composed", "n": full, "n_of": "keys", "n0": r0["num_keys"],
                        "collator_n0": r0[fig], "mask_n0": mask_at[r0["num_keys"]][fig],
                        "mask_full": mask_at[full][fig]}


# ---- running the steps --------------------------------------------------------------------------------------
def run_child(step: str, args: dict, *, label: str = "") -> dict:
    """One step in a fresh `python -m experiments.bench.scale_steps` process: its JSON line, or {"error": ...}."""
    cmd = [sys.executable, "-m", "experiments.bench.scale_steps", step, json.dumps(args)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    wall = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        row = {"step": step, "error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}"}
    else:
        row = json.loads(lines[-1])
    row["process_wall_s"] = wall
    what = (f"{row['seconds']:.2f} s, peak +{row['peak_growth_mib']:.0f} MiB" if "seconds" in row
            else row.get("error", "").splitlines()[-1:])
    print(f"scale: {step} {label}: {what} ({wall:.0f} s with start-up)", file=sys.stderr, flush=True)
    return row


def eval_plan(dims: tuple[int, ...] = (384, 768), *, dtype_bytes: int = 2) -> dict:
    """The GPU evaluation's memory plan at Wikidata5M's size (arithmetic, no measurement)."""
    from kgc_kd.config import EvalCfg
    from kgc_kd.eval.memory_plan import budget_bytes, evaluation_memory_plan

    # as a run evaluates: the default eval.memory_budget_gb and chunk_size; with SimKGC's re-ranking the
    # neighbourhoods of every validation and test head (both directions) are held (datamodule cache)
    ev = EvalCfg()
    budget = budget_bytes(ev.memory_budget_gb)
    heads = 2 * (WIKIDATA5M["valid"] + WIKIDATA5M["test"])
    plans = {}
    for d in dims:
        for rerank in (False, True):
            plans[f"{d}{'+rerank' if rerank else ''}"] = evaluation_memory_plan(
                WIKIDATA5M["entities"], d, FULL_EVAL_QUERIES, dtype_bytes=dtype_bytes, chunk_size=ev.chunk_size,
                memory_budget=budget, rerank=rerank, rerank_heads=heads if rerank else None)
    return {"num_entities": WIKIDATA5M["entities"], "num_queries": FULL_EVAL_QUERIES, "dtype_bytes": dtype_bytes,
            "memory_budget_gb": ev.memory_budget_gb, "rerank_heads": heads, "plans": plans}


def plan_total(plan: dict) -> float | None:
    """The plan's total bytes (whatever the key is called)."""
    for key in ("total_bytes", "total", "bytes"):
        if isinstance(plan.get(key), (int, float)):
            return float(plan[key])
    return None


def scale_section(work_dir: str | Path, *, plm: str, fractions: list[Fraction], link_graph_fractions: list[Fraction],
                  collate_entities: int, threads: list[int], batches: int, warmup: int, batch_size: int = 1024,
                  max_length: int = 50, seed: int = 0, eval_dim: int = 384, eval_queries: int = 2048,
                  chunk_size: int = 256) -> dict:
    """Run every step (see the module docstring) with scratch files under `work_dir` (removed at the end)."""
    work = Path(work_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    fractions = sorted(set(fractions))
    started = time.perf_counter()
    base = {"plm": plm, "seed": seed, "max_length": max_length}
    rows: dict[str, list[dict]] = {name: [] for name in STEPS}

    def at(f: Fraction, **extra) -> dict:
        return {**base, "num_entities": entities_at(f), "fraction": fraction_label(f), **extra}

    def cache_dir(f: Fraction, link: bool) -> str:
        return str(work / f"token-cache-{'link-' if link else ''}{fraction_label(f).replace('/', '_')}")

    def run(name: str, step: str, args: dict, **row_extra) -> dict:
        words = [f"({name})" if name != step else "", args.get("fraction"), *row_extra.values()]
        row = run_child(step, args, label=" ".join(str(v) for v in words if v))
        row.update(fraction=args.get("fraction"), **row_extra)
        rows[name].append(row)
        return row

    for f in fractions:
        run("kg", "kg", at(f))
    for f in fractions:
        for r in ("first", "second"):
            run("tokens", "tokens", at(f, cache_dir=cache_dir(f, False)), run=r)
    for f in sorted(set(link_graph_fractions)):
        for r in ("first", "second"):
            run("link_graph", "tokens", at(f, cache_dir=cache_dir(f, True), link_graph=True), run=r)
    for f in fractions:
        run("filter", "filter", at(f))
    for f in fractions:
        d = work / f"simkgc-{fraction_label(f).replace('/', '_')}"
        wrote = run_child("simkgc_write", at(f, dir=str(d)), label=f"{fraction_label(f)} (writing the files)")
        if "seconds" in wrote:
            run("simkgc_json", "simkgc_json", at(f, dir=str(d)))["write_s"] = wrote["seconds"]
        else:
            rows["simkgc_json"].append({**wrote, "fraction": fraction_label(f)})
        shutil.rmtree(d, ignore_errors=True)
    collate_sizes = [(fraction_label(f), entities_at(f)) for f in fractions]
    if collate_entities:
        full = collate_entities == WIKIDATA5M["entities"]
        collate_sizes.append(("full keys" if full else f"{collate_entities:,} entities", collate_entities))
    for label, n in collate_sizes:
        for k in threads:
            row = run_child("collate", {**base, "num_entities": n, "threads": k, "batch_size": batch_size,
                                        "batches": batches, "warmup": warmup}, label=f"{label} threads={k}")
            row.update(fraction=label, threads=k)
            rows["collate"].append(row)
    big = fractions[-1]
    for f in fractions:  # every fraction: a fit through one point would pass through the origin
        for k in threads:
            run("train_collate", "train_collate", at(f, cache_dir=cache_dir(f, False), threads=k, batch_size=batch_size,
                                                     batches=batches, warmup=warmup), threads=k)
    export = work / "predict-export"
    wrote = run_child("predict_export", at(big, cache_dir=cache_dir(big, False), dir=str(export)),
                      label=f"{fraction_label(big)} (writing the export)")
    for r in ("first", "second"):
        if "seconds" in wrote:
            run("predict", "predict_start", at(big, dir=str(export)), run=r)
        else:
            rows["predict"].append({**wrote, "fraction": fraction_label(big), "run": r})

    steps = {name: summarize_step(name, rs) for name, rs in rows.items()}
    compose_train_collate(steps)
    small = fractions[0]
    cpu = run_child("eval_cpu", at(small, dim=eval_dim, num_queries=eval_queries, chunk_size=chunk_size),
                    label=f"{fraction_label(small)} {eval_dim}-d")
    cpu["fraction"] = fraction_label(small)
    plan = eval_plan()
    if "seconds" in cpu:
        from kgc_kd.eval.memory_plan import evaluation_memory_plan

        cpu["plan_fp32"] = evaluation_memory_plan(cpu["num_entities"], cpu["dim"], cpu["num_queries"], dtype_bytes=4,
                                                  chunk_size=chunk_size)
        total = plan_total(cpu["plan_fp32"])
        cpu["plan_fp32_mib"] = None if total is None else total / 2**20
    plan["cpu_check"] = cpu
    shutil.rmtree(work, ignore_errors=True)
    result = {"wikidata5m": dict(WIKIDATA5M), "full_n": FULL_N, "plm": plm, "seed": seed, "max_length": max_length,
              "fractions": [{"label": fraction_label(f), "fraction": float(f), "num_entities": entities_at(f)}
                            for f in fractions],
              "link_graph_fractions": [fraction_label(f) for f in sorted(set(link_graph_fractions))],
              "collate_entities": collate_entities, "threads": threads, "batches": batches, "warmup": warmup,
              "batch_size": batch_size, "steps": steps, "eval_plan": plan}
    result["targets"] = targets(result)
    result["seconds"] = time.perf_counter() - started
    return result


# ---- the targets -----------------------------------------------------------------------------------------
def _at_scale(step: dict, figure: str, fraction: Fraction, group: str) -> tuple[float | None, str]:
    """A step's figure at `fraction` of Wikidata5M for one group: measured there, else from the fit."""
    n_of, keys = step["n_of"], tuple(step["group_by"])
    rows = [r for r in step["measured"] if r.get(figure) is not None and group_label(r, keys) == group]
    label = fraction_label(fraction)
    hit = [r[figure] for r in rows if r.get("fraction") == label]
    if hit:
        return hit[0], "measured"
    n = {"entities": entities_at(fraction), "triples": round(fraction * FULL_N["triples"]),
         "keys": round(fraction * FULL_N["keys"])}[n_of]
    fit = extrapolate(rows, figure, n_of, n)
    return (fit["value"], f"fit ({fit['formula']})") if fit else (None, "not measured")


def _target(name: str, value, limit, unit: str, source: str, *, at: str, below: bool = True) -> dict:
    passed = None if value is None else (value <= limit if below else bool(value) == bool(limit))
    return {"target": name, "at": at, "value": value, "limit": limit, "unit": unit, "from": source, "pass": passed}


def targets(result: dict) -> list[dict]:
    steps, out = result["steps"], []
    tenth = Fraction(1, 10)
    for label, figs in steps["collate"]["full_scale"].items():
        fit = figs.get("median_ms")
        if fit:
            src = "measured" if fit["formula"] == "measured" else f"fit ({fit['formula']})"
            out.append(_target(f"collate mask median, {label}", fit["value"], 60.0, "ms", src,
                               at=f"{FULL_N['keys']:,} keys"))
    tokens = steps["tokens"]
    for run in ("first", "second"):
        for figure, limit, what in (("peak_growth_mib", 1.5, "peak"), ("kept_growth_mib", 0.5, "kept")):
            value, src = _at_scale(tokens, figure, tenth, f"run={run}")
            out.append(_target(f"data preparation {what}, {run} run", value, limit * GB, "MiB", src, at="1/10"))
    value, src = _at_scale(steps["filter"], "seconds", tenth, "all")
    out.append(_target("filter index", value, 1.0, "s", src, at="1/10"))
    second = [r for r in tokens["measured"] if r.get("run") == "second" and "read_cache" in r]
    out.append(_target("second run reads the cached table", all(r["read_cache"] for r in second) if second else None,
                       True, "", "measured" if second else "not measured", at="every fraction", below=False))
    plan = result["eval_plan"]
    total = plan_total(plan["plans"].get("768+rerank", {}))
    out.append(_target("evaluation memory plan, 768-d bf16, re-rank on", None if total is None else total / 2**30, 40.0, "GiB",
                       "plan", at="full scale"))
    return out
