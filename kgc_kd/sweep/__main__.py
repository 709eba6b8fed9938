"""`python -m kgc_kd.sweep FILE [--trials N] [--study NAME] [--storage URL] [--workers K] [ITEM ...]`.

An Optuna study over the chain (kgc_kd/sweep/: space, study, trial, report). Everything a sweep needs is
checked before any trial trains: the file (metrics, ranges), every parameter's extremes as configs, the
metric's stage, the storage, the data and the model. Rerunning the same command resumes the study: a
complete study adds no trials; trials whose worker died are retried and reuse their finished stages.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kgc_kd.cli import EXIT_BAD_INPUT, EXIT_OK, KEYS_DOC, console_script, exit_statuses, parser
from kgc_kd.sweep.space import SweepError, check_metric_stages, load_space

EXAMPLES = (
    "python -m kgc_kd.sweep experiments/sweeps/kd_nations.yaml --trials 16 --workers 2 data=nations teacher.epochs=1",
    "python -m kgc_kd.sweep experiments/sweeps/pmd_alpha_beta.yaml                     # the grid, SQLite in runs/sweeps/",
    "python -m kgc_kd.sweep FILE --storage journal:/shared/kd.journal --workers 4      # on each node: one study",
    "optuna-dashboard sqlite:///runs/sweeps/<study>/study.db                           # a live view",
)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = parser("python -m kgc_kd.sweep",
                "Run an Optuna study over the chain: each trial is the chain of the ITEMs plus the sampled "
                "parameters; stages already trained under the same key (the teacher) are reused from the stage "
                "store; after each grade the pruner may stop the trial; trials are selected on validation "
                "metrics and their test MRR is reported.",
                items="configuration items for every trial, as for kgc_kd.fit (the forms below)",
                statuses=(EXIT_OK, EXIT_BAD_INPUT), examples=EXAMPLES,
                notes=("The sweep file is W&B's format (method grid|random|bayes, metric, parameters); parameter "
                       "names are config keys (distill.alpha, stages.0.mask_rate); the metric is a validation "
                       "figure <stage>/val_mrr (or a size: <stage>/params_total), a list of metrics makes a "
                       "multi-objective study. A trial that fails is a row of trials.md, not the exit status. "
                       "The same file runs under `wandb sweep FILE` + `wandb agent`.",),
                docs=("docs/sweeps.md", KEYS_DOC),
                positionals=[("file", {"metavar": "FILE", "help": "the sweep file; examples in experiments/sweeps/"})])
    ap.add_argument("--trials", type=int, help="trials in the study when done (default: the grid, or 20)")
    ap.add_argument("--study", help="the study's name (default: the file's `name`)")
    ap.add_argument("--storage", help="Optuna storage: a SQLAlchemy URL (default sqlite:///<run.root>/sweeps/<study>/"
                                      "study.db), or journal:PATH for a journal file on a shared file system")
    ap.add_argument("--workers", type=int, default=1, help="trial processes on this machine (one GPU each when "
                                                           "there are enough, else the CPU threads split)")
    ap.add_argument("--pruner", default="median", help="median (default) | percentile | hyperband | none")
    ap.add_argument("--seed", type=int, default=0, help="the sampler's seed (worker i: seed + i)")
    ap.add_argument("--heartbeat", type=float, default=30.0,
                    help="seconds between a running trial's heartbeats; a trial silent for 3 is retried")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a process --workers started
    return ap.parse_intermixed_args(argv)


def _check(args: argparse.Namespace):
    """Everything before a trial: the file, the items, each parameter's extremes, the metric's stage, the
    storage. Returns (space, the items' run plan, study name, output directory, storage URL)."""
    from kgc_kd.chain.plan import build_plan
    from kgc_kd.config import ConfigError, check_name
    from kgc_kd.runtime.files import OutsideRoot, confined
    from kgc_kd.sweep.study import default_storage
    from kgc_kd.sweep.trial import trial_plan

    space = load_space(args.file)
    if args.trials is not None and args.trials < 1:
        raise SweepError(f"--trials {args.trials}: expected >= 1")
    if args.workers < 1:
        raise SweepError(f"--workers {args.workers}: expected >= 1")
    base = build_plan([*space.fixed, *args.overrides])
    check_metric_stages(space, base.stage_names[1:])
    study = args.study or space.name
    out = Path(base.cfg.run.root) / "sweeps" / study
    try:  # the study's name is a directory under run.root: one name, never a path, inside it once links are followed
        check_name(study, "--study" if args.study else f"{space.path}: name (default: the file's name)")
        confined(base.cfg.run.root, Path("sweeps") / study, f"the study {study!r}")
    except (ConfigError, OutsideRoot) as err:
        raise SweepError(str(err)) from None
    for corner in space.corners():
        try:
            trial_plan(space, args.overrides, corner, study)
        except ConfigError as err:
            raise SweepError(f"{space.path}: parameters {corner}: {err}") from None
    return space, base, study, out, args.storage or default_storage(out)


def _preflight(base) -> None:
    """The data and the model, loaded and checked as a run would (`base`: the items' run plan), before the first
    trial."""
    from kgc_kd.chain.driver import build_datamodule
    from kgc_kd.chain.preflight import check_run
    from kgc_kd.models.plm import load_tokenizer

    tokenizer = load_tokenizer(base.cfg.model.plm)
    check_run(base, build_datamodule(base.cfg, tokenizer), tokenizer)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse(sys.argv[1:] if argv is None else argv)
    with exit_statuses(SweepError):
        space, base_plan, study_name, out, url = _check(args)
        base = base_plan.cfg
        from kgc_kd.sweep.study import budget, make_pruner, open_storage, open_study, spawn_workers, work

        storage = open_storage(url)
        grades = len(base.stages) + 1
        pruner = make_pruner(args.pruner, space, grades)
        total = budget(space, args.trials or (space.grid_size() or 20))
        study = open_study(space, study_name, storage, pruner, args.seed)
        if args.worker:
            if os.environ.get("KGC_KD_THREADS"):
                import torch

                torch.set_num_threads(int(os.environ["KGC_KD_THREADS"]))
            from kgc_kd.sweep.trial import objective

            work(study, objective(space, args.overrides, study, args.heartbeat, not space.multi_objective), total,
                 args.heartbeat)
            return None
        _preflight(base_plan)
        print(f"[sweep] study {study_name} ({url}): {total} trials, {args.workers} worker(s), pruner "
              f"{type(pruner).__name__}", flush=True)
        if args.workers == 1:
            from kgc_kd.sweep.trial import objective

            work(study, objective(space, args.overrides, study, args.heartbeat, not space.multi_objective), total,
                 args.heartbeat)
        else:
            common = [args.file, "--study", study_name, "--storage", url, "--trials", str(total), "--pruner", args.pruner,
                      "--heartbeat", str(args.heartbeat), *args.overrides]
            statuses = spawn_workers([[*common, "--seed", str(args.seed + i)] for i in range(args.workers)], out)
            if any(statuses):
                print(f"[sweep] worker exit statuses {statuses}: see {out}/worker-*.log", file=sys.stderr)
        from kgc_kd.sweep.report import write_outputs

        summary = write_outputs(study, space, out, base_plan.stage_names)
        if base.run.logger == "wandb":
            from kgc_kd.sweep.wandb_table import log_sweep

            log_sweep(base, out, study_name, summary)
        print((out / "trials.md").read_text())
        print(f"[sweep] {out}: trials.md, trials.json, best.yaml, plots ({summary['counts']})", flush=True)
        return summary


script = console_script(main)

if __name__ == "__main__":
    main()
