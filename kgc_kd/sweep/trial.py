"""One trial: the sweep's items plus the sampled parameters, run as a chain in this (worker) process.

The trial's run directory is `<run.root>/<study>-<config hash>` and its stages go through the stage store
under run.root, so the teacher (and every stage a trial shares with an earlier one) trains once per
sweep. After each stage the trial records the stage's validation and test figures as user attributes;
from the first student on it reports the grade's validation MRR to the pruner (step = the stage's index,
teacher 0), which may stop it there (PRUNED). The value(s) returned are the sweep's metrics, read from the
stage rows: never a test figure.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import optuna

from kgc_kd.chain.plan import RunPlan, plan_config
from kgc_kd.config import config_hash, load
from kgc_kd.sweep.space import Metric, SweepSpace, item_value
from kgc_kd.sweep.study import Heartbeat

ROW_FIGURES = {"val_mrr": "best_val_mrr", "params_total": "params_total",
               "params_no_embeddings": "params_no_embeddings", "queries_per_s": "queries_per_s",
               "entities_per_s": "entities_per_s"}


def trial_items(space: SweepSpace, items: list[str], params: dict[str, Any], study: str) -> list[str]:
    """The fit items of a trial: the file's fixed items, the command's items, the parameters, the W&B group."""
    return [*space.fixed, *items, *(f"{k}={item_value(v)}" for k, v in params.items()), f"run.wandb_group={study}"]


def trial_plan(space: SweepSpace, items: list[str], params: dict[str, Any], study: str) -> RunPlan:
    """The trial's run plan (its stages resolved and checked by the registered terms): its run named
    `<study>-<config hash>` unless the items name it."""
    cfg, objectives = load(trial_items(space, items, params, study))
    if not cfg.run.name:
        cfg.run.name = f"{study}-{config_hash(cfg)}"
    return plan_config(cfg, objectives)


def figure(rows: list[dict], metric: Metric) -> float:
    row = rows[-1] if metric.stage == "last" else next(r for r in rows if r["name"] == metric.stage)
    value = row.get(ROW_FIGURES[metric.key])
    if value is None:
        raise ValueError(f"metric {metric.name}: stage {row['name']} has no {ROW_FIGURES[metric.key]}")
    return float(value)


def suggest(trial: optuna.Trial, name: str, d) -> Any:
    """Sample parameter `name` from its distribution through the trial's public suggest API."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(name, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)


def objective(space: SweepSpace, items: list[str], study: optuna.Study, heartbeat_s: float, prune: bool):
    from kgc_kd.chain.driver import run_chain

    def run(trial: optuna.Trial):
        params = {k: suggest(trial, k, d) for k, d in space.distributions.items()}
        plan = trial_plan(space, items, params, study.study_name)
        trial.set_user_attr("items", trial_items(space, items, params, study.study_name))
        trial.set_user_attr("run_dir", f"{plan.cfg.run.root}/{plan.run_name}")
        start = time.perf_counter()
        stages: list[dict] = []

        def on_stage(i: int, row: dict) -> None:
            stages.append({"name": row["name"], "val_mrr": row.get("best_val_mrr"), "test_mrr": row["test"]["mrr"],
                           "params_total": row.get("params_total"), "reused": bool(row.get("reused_from_store"))})
            trial.set_user_attr("stages", stages)
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
            if prune and i > 0 and row.get("best_val_mrr") is not None:
                trial.report(float(row["best_val_mrr"]), i)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"{row['name']} val MRR {row['best_val_mrr']:.4f} behind the other trials")

        with Heartbeat(study, trial, heartbeat_s):
            try:
                result = run_chain(plan, on_stage=on_stage)
            finally:
                gc.collect()
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
        values = [figure(result["stages"], m) for m in space.metrics]
        return values if space.multi_objective else values[0]

    return run
