"""Run a comparison's plan: preflight every chain, the teacher once, then each (objective, seed) chain.

Chains run in this process through `kgc_kd.chain.driver.run_chain`, one after another. Nothing carries over
from one chain to the next: each builds its own data module, tokenizer and models, and every stage
seeds all generators with its chain's `run.seed` (`L.seed_everything`), so a chain gives the same
metrics here as alone under `python -m kgc_kd.fit` (tested). A chain whose run directory already has
every stage done (as its `ChainStore` records them) and its report is read, not run again; an
interrupted one resumes inside `run_chain` like any fit run.
"""

from __future__ import annotations

import copy
import fnmatch
import dataclasses
import gc
import hashlib
import json
import math
import shlex
import time
from pathlib import Path
from typing import Any, Callable

import torch

from kgc_kd.serve.digest import DERIVED_FILES
from kgc_kd.chain.driver import build_datamodule, open_chain, run_chain
from kgc_kd.compare.plan import Chain, Plan
from kgc_kd.models.plm import load_tokenizer
from kgc_kd.chain.preflight import check_run


def preflight(plan: Plan) -> None:
    """Data, model and every chain's stages and loss terms, checked before the teacher trains."""
    tokenizer = load_tokenizer(plan.base.model.plm)
    dm = build_datamodule(plan.base)  # the KG only: the checks need no token table (nothing is written)
    if plan.teacher is not None:
        check_run(plan.teacher.plan, dm, tokenizer)
    exported = (Path(plan.teacher_export) / "biencoder.json").is_file()
    for chain in plan.chains:
        run = chain.plan
        if plan.teacher is not None and not exported:  # the teacher to be trained is model.plm's architecture
            cfg = copy.deepcopy(run.cfg)
            cfg.teacher.load = None
            run = dataclasses.replace(run, cfg=cfg)
        check_run(run, dm, tokenizer)


def finished_result(chain: Chain) -> dict[str, Any] | None:
    """The report of a chain whose every stage is done, or None (then it must run or resume)."""
    report = chain.run_dir / "report.json"
    store = open_chain(chain.plan)
    if not report.is_file() or not all(store.is_done(n) for n in chain.plan.stage_names):
        return None
    return json.loads(report.read_text())


def run_one(chain: Chain) -> tuple[dict[str, Any], str, float]:
    """(result, status, seconds): status is `done before` (read), or `ran` (trained or resumed)."""
    start = time.perf_counter()
    done = finished_result(chain)
    if done is not None:
        return done, "done before", round(time.perf_counter() - start, 1)
    print(f"[compare] {chain.objective} seed {chain.seed}: {shlex.join(['python', '-m', 'kgc_kd.fit', *chain.argv])}",
          flush=True)
    try:
        result = run_chain(chain.plan)
    finally:  # free the chain's models before the next one (accelerator memory too)
        gc.collect()
        torch.cuda.empty_cache()  # a no-op where CUDA was never initialised
    return result, "ran", round(time.perf_counter() - start, 1)


def export_digest(export: str | Path) -> str:
    """sha256 over the export's files (names and bytes): the same digest means the same teacher."""
    h = hashlib.sha256()
    root = Path(export)
    derived = lambda q: any(fnmatch.fnmatchcase(part, pat) for part in q.relative_to(root).parts  # noqa: E731
                            for pat in DERIVED_FILES)
    for p in sorted(q for q in root.rglob("*") if q.is_file() and not derived(q)):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def student_metrics(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {r["name"]: r["test"] for r in result["stages"] if r.get("kind") == "student"}


def student_val_mrr(result: dict[str, Any]) -> dict[str, float | None]:
    """Each student's best validation MRR: what a choice between objectives may use (test only reports)."""
    return {r["name"]: r.get("best_val_mrr") for r in result["stages"] if r.get("kind") == "student"}


def run_plan(plan: Plan, on_chain: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Everything compare.json records, apart from the aggregation. `on_chain` gets the record so far after
    every chain (the comparison's files are rewritten then, so an interrupted run still shows its seeds)."""
    preflight(plan)
    teacher: dict[str, Any] = {"export": plan.teacher_export}
    if plan.teacher is not None:
        result, status, secs = run_one(plan.teacher)
        row = result["stages"][0]
        teacher.update({"run_dir": str(plan.teacher.run_dir), "status": status, "seconds": secs, "seed": plan.teacher.seed,
                        "command": shlex.join(["python", "-m", "kgc_kd.fit", *plan.teacher.argv]),
                        "trained_steps": row.get("steps"), "test": row["test"]})
    else:
        teacher.update({"run_dir": None, "status": "given (--teacher)"})
    chains, runs = [], {obj: [] for obj in plan.objectives}
    for chain in plan.chains:
        result, status, secs = run_one(chain)
        rows = {r["name"]: r for r in result["stages"]}
        t_row = rows["teacher"]
        chains.append({"objective": chain.objective, "seed": chain.seed, "run_dir": str(chain.run_dir),
                       "status": status, "seconds": secs, "teacher_loaded_from": t_row.get("loaded_from"),
                       "teacher_test": t_row["test"], "command": shlex.join(["python", "-m", "kgc_kd.fit", *chain.argv]),
                       "argv": chain.argv})
        runs[chain.objective].append({"seed": chain.seed, "run_dir": str(chain.run_dir),
                                      "test": student_metrics(result), "val": student_val_mrr(result)})
        if on_chain is not None and len(chains) < len(plan.chains):
            on_chain({"teacher": {**teacher, "test": teacher.get("test", chains[0]["teacher_test"])},
                      "chains": chains, "runs": runs})
    teacher.setdefault("test", chains[0]["teacher_test"])
    teacher["sha256"] = export_digest(plan.teacher_export)
    # every chain loaded the same export and measured the same teacher: seeds never touch it
    ref = chains[0]["teacher_test"]
    teacher["same_in_every_chain"] = all(
        c["teacher_loaded_from"] == plan.teacher_export
        and all(math.isclose(c["teacher_test"][k], v, abs_tol=1e-6) for k, v in ref.items()) for c in chains)
    return {"teacher": teacher, "chains": chains, "runs": runs}
