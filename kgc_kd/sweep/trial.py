"""One trial: the sweep's items plus the sampled parameters, run as a chain in this (worker) process.

The trial's run directory is `<run.root>/<study>-<config hash>` and its stages go through the stage store
under run.root, so the teacher (and every stage a trial shares with an earlier one) trains once per
sweep. After each stage the trial records the stage's validation and test figures as user attributes;
from the first student on it reports the grade's validation MRR to the pruner (step = the stage's index,
teacher 0), which may stop it there (PRUNED: `optuna.TrialPruned` out of the driver's `on_stage`, which marks the
trial's open W&B runs pruned on its way out). The value(s) returned are the sweep's metrics, read from the
stage rows: never a test figure.

W&B (`run.logger=wandb`): every run of a trial's chain is tagged `study:<study>` and `trial:<number>`
(`run.wandb_tags`, beside the items' own tags) in the group `<study>`; after each stage the trial's user
attributes name its runs: `wandb_project`, `wandb_group`, `wandb_runs` ({stage: run id}) and `wandb_report_run`
(the chain's report run), so a trial in optuna-dashboard or the `optuna` CLI leads to its W&B runs.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import optuna

from kgc_kd.chain.plan import RunPlan, plan_config
from kgc_kd.config import config_hash, load, load_config
from kgc_kd.sweep.space import Metric, SweepSpace, item_value
from kgc_kd.sweep.study import Heartbeat

ROW_FIGURES = {"val_mrr": "best_val_mrr", "params_total": "params_total",
               "params_no_embeddings": "params_no_embeddings", "queries_per_s": "queries_per_s",
               "entities_per_s": "entities_per_s"}


def trial_items(space: SweepSpace, items: list[str], params: dict[str, Any], study: str,
                number: int | None = None) -> list[str]:
    """The fit items of a trial: the file's fixed items, the command's items, the parameters, the W&B group and
    (trial `number`) the W&B tags: the items' own, then `study:<study>` and `trial:<number>`. Neither group nor
    tags are part of the run name's hash: a trial's stages are the same whatever its number."""
    out = [*space.fixed, *items, *(f"{k}={item_value(v)}" for k, v in params.items()), f"run.wandb_group={study}"]
    if number is None:
        return out
    own = [t for t in load_config(out).run.wandb_tags if not t.startswith(("study:", "trial:"))]
    return [*out, f"run.wandb_tags={item_value([*own, f'study:{study}', f'trial:{number}'])}"]


def trial_plan(space: SweepSpace, items: list[str], params: dict[str, Any], study: str,
               number: int | None = None) -> RunPlan:
    """The trial's run plan (its stages resolved and checked by the registered terms): its run named
    `<study>-<config hash>` unless the items name it."""
    cfg, objectives = load(trial_items(space, items, params, study, number))
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


class WandbRuns:
    """The W&B runs of a trial's chain, kept in the trial's user attributes as the chain goes: `wandb_project`,
    `wandb_group`, `wandb_runs` ({stage: run id}), `wandb_report_run`. The ids come from the chain's tracking
    (`tracking.stage_runs()`, a row's `wandb_run`) and its report run (`wandb_report.current_run_id()`)."""

    def __init__(self, trial: optuna.Trial, plan: RunPlan):
        from kgc_kd.chain.tracking import init_kwargs

        kw = init_kwargs(plan, "", "", {})
        self.trial, self.runs, self.run_name = trial, {}, plan.run_name
        self.info = {"wandb_project": kw["project"], "wandb_group": kw["group"]}
        self.earlier = self._report_run()  # an earlier trial's report run, if this process still names it

    @staticmethod
    def _report_run() -> str | None:
        from kgc_kd.chain import wandb_report

        return wandb_report.current_run_id() if hasattr(wandb_report, "current_run_id") else None  # WA's (issue 29)

    def record(self, row: dict | None = None) -> None:
        from kgc_kd.chain import tracking

        # a stage's row names the run that trained it (a stage reused from the store: an earlier chain's run);
        # the chain's tracking names this chain's runs: only those named `<run name>/<stage>` (an earlier trial's
        # are still there until this chain opens a run of its own)
        found = {row["name"]: row["wandb_run"]} if row is not None and row.get("wandb_run") else {}
        if hasattr(tracking, "stage_runs"):  # WB's (issue 29)
            found.update({stage: run for stage, run in tracking.stage_runs().items()
                          if run.get("name") in (None, f"{self.run_name}/{stage}")})
        for stage, run in found.items():
            run = run if isinstance(run, dict) else {"id": run}
            if run.get("id"):
                self.runs[stage] = run["id"]
                self.info.update({f"wandb_{k}": run[k] for k in ("project", "group") if run.get(k)})
        report = self._report_run()
        if report and report != self.earlier:
            self.info["wandb_report_run"] = report
        for key, value in {**self.info, "wandb_runs": self.runs}.items():
            self.trial.set_user_attr(key, value)


def objective(space: SweepSpace, items: list[str], study: optuna.Study, heartbeat_s: float, prune: bool):
    from kgc_kd.chain.driver import run_chain

    def run(trial: optuna.Trial):
        params = {k: suggest(trial, k, d) for k, d in space.distributions.items()}
        plan = trial_plan(space, items, params, study.study_name, trial.number)
        trial.set_user_attr("items", trial_items(space, items, params, study.study_name, trial.number))
        trial.set_user_attr("run_dir", f"{plan.cfg.run.root}/{plan.run_name}")
        start = time.perf_counter()
        stages: list[dict] = []
        wandb = WandbRuns(trial, plan) if plan.cfg.run.logger == "wandb" else None

        def on_stage(i: int, row: dict) -> None:
            stages.append({"name": row["name"], "val_mrr": row.get("best_val_mrr"), "test_mrr": row["test"]["mrr"],
                           "params_total": row.get("params_total"), "reused": bool(row.get("reused_from_store"))})
            trial.set_user_attr("stages", stages)
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
            if wandb is not None:
                wandb.record(row)
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
        if wandb is not None:
            wandb.record()  # the report run, written after the last stage
        values = [figure(result["stages"], m) for m in space.metrics]
        return values if space.multi_objective else values[0]

    return run
