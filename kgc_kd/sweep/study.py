"""The Optuna side of a sweep: storage, study, pruner, the worker loop and the worker processes.

Storage (`--storage`): default a SQLite file in the sweep's directory (rerunning the command resumes the
study); `journal:PATH` (or a path ending in .log / .journal) is Optuna's JournalStorage on a file, which
workers on several machines share over a shared file system; any SQLAlchemy URL (postgresql://,
mysql://) is Optuna's RDBStorage, the form for many nodes without a shared file system.

Killed workers: every running trial records the process that runs it (pid, host, its start, the machine:
`chain.lock.process_record`) and writes a heartbeat (a system attribute, every `heartbeat_s`) from a thread;
a storage error there (SQLite's `database is locked`, a dropped connection) is logged and the beat tried
again at the next interval: the thread ends only with the trial. A worker that finds a RUNNING trial fails it
and enqueues it again with the same parameters (Optuna's RetryHeartbeatStaleTrialCallback, up to twice)
only when its process is gone: on this machine, when that process has ended (its heartbeat does not matter,
a live one is never failed); on another machine, which cannot be asked, when its heartbeat is older than
three beats. So a killed sweep rerun completes the study; the retried trial's chain reuses every stage its
first attempt finished and resumes the interrupted one (the stage store). Optuna's own heartbeat exists
only for RDBStorage; this one works on every storage.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from kgc_kd.chain.lock import process_gone, process_record
from kgc_kd.sweep.space import SweepError, SweepSpace

HEARTBEAT = "kgc_kd:heartbeat"
WORKER = "kgc_kd:worker"  # the process that runs the trial (chain.lock.process_record)
RETRIES = 2
PRUNERS = ("median", "percentile", "hyperband", "none")


def default_storage(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / 'study.db').resolve()}"


def open_storage(url: str):
    """The storage of `url`; an unreachable or malformed one is a SweepError naming it."""
    try:
        if url.startswith("journal:") or url.endswith((".log", ".journal")):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # SQLite: writers wait for each other's lock instead of failing at once
        kw = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if url.startswith("sqlite") else {}
        for attempt in range(3):
            try:
                return optuna.storages.RDBStorage(url, **kw)
            except Exception as err:  # noqa: BLE001
                # workers starting together on a new database race to create Optuna's tables: the loser's
                # CREATE fails on a unique constraint (PostgreSQL) once the winner's exist; try again
                if attempt == 2 or "IntegrityError" not in type(err).__name__:
                    raise
                time.sleep(1.0 + attempt)
    except Exception as err:  # noqa: BLE001 - any driver's error: the URL is what the user can fix
        raise SweepError(f"--storage {url!r}: cannot open the study storage ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None


def make_pruner(name: str, space: SweepSpace, grades: int):
    """Median by default: a trial whose grade's validation MRR is below the median of the trials before it at
    the same grade stops there (from the first student on: every trial shares the teacher)."""
    if space.multi_objective or name == "none":
        return optuna.pruners.NopPruner()
    if name not in PRUNERS:
        raise SweepError(f"--pruner {name!r}: expected one of {PRUNERS}")
    if name == "hyperband" or space.hyperband_min_iter is not None:
        return optuna.pruners.HyperbandPruner(min_resource=space.hyperband_min_iter or 1, max_resource=grades)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=2, n_warmup_steps=1)
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)


def open_study(space: SweepSpace, study_name: str, storage, pruner, seed: int) -> optuna.Study:
    """Create the study or load it (a rerun resumes). The sampler's seed moves on with the trials already in
    the study: a resumed random search would otherwise draw its first parameters again."""
    directions = [m.goal for m in space.metrics]
    try:
        seed += 1000 * len(optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False))
    except KeyError:  # no such study yet
        pass
    study = optuna.create_study(study_name=study_name, storage=storage, sampler=space.sampler(seed), pruner=pruner,
                                directions=directions, load_if_exists=True)
    if [d.name.lower() for d in study.directions] != directions:
        raise SweepError(f"study {study_name!r} exists with goals {[d.name.lower() for d in study.directions]}, "
                         f"the file asks for {directions}: give --study another name")
    names = [m.name for m in space.metrics]
    had = metric_names(study)
    if had is not None and had != names:
        raise SweepError(f"study {study_name!r} exists with metrics {had}, the file asks for {names}: give --study "
                         "another name")
    if study.metric_names != names:  # a new study, or one written before the names were Optuna's
        with warnings.catch_warnings():  # experimental since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    return study


def metric_names(study: optuna.Study) -> list[str] | None:
    """The study's metric names (`pmd2/val_mrr`, ...): Optuna's (`set_metric_names`, what optuna-dashboard, the
    `optuna` CLI and `trials_dataframe` show), or the `metrics` user attribute of a study written before them."""
    return study.metric_names or study.user_attrs.get("metrics")


def budget(space: SweepSpace, trials: int) -> int:
    """How many trials the study holds when done: `trials`, at most the grid."""
    return min(trials, space.grid_size()) if space.method == "grid" else trials


def retried_numbers(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def finished(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Complete, pruned, or failed and not retried: what counts towards the budget."""
    retried = retried_numbers(trials)
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and t.number not in retried)]


def fail_stale(study: optuna.Study, heartbeat_s: float) -> list[int]:
    """RUNNING trials whose process is gone (`stale`): failed and enqueued again."""
    now, stale = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.system_attrs.get(HEARTBEAT, t.datetime_start.timestamp() if t.datetime_start else now)
        gone = process_gone(t.system_attrs.get(WORKER))
        if gone is False or (gone is None and now - beat <= 3 * heartbeat_s):
            continue  # its process runs here, or elsewhere with a recent heartbeat
        try:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # Optuna's own stale handling does this
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker got there first
        stale.append(t.number)
        with warnings.catch_warnings():  # experimental since Optuna 2.8, and the API Optuna's own heartbeat uses
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            RetryHeartbeatStaleTrialCallback(max_retry=RETRIES)(study, study.get_trials(deepcopy=False)[t.number])
        why = (f"its worker (pid {t.system_attrs[WORKER]['pid']}) has ended" if gone
               else f"no heartbeat for {now - beat:.0f} s (its worker died)")
        print(f"[sweep] trial {t.number}: {why}: retried", flush=True)
    return stale


class Heartbeat:
    """Records the process running the trial and writes the trial's heartbeat every `interval` seconds while
    it runs. A storage error is logged and the beat tried again at the next interval: only the trial's end
    (`__exit__`, or the storage saying the trial is finished) ends the thread."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, interval: float):
        self.study, self.trial_id, self.number, self.interval = study, trial._trial_id, trial.number, interval
        self.errors = 0  # storage errors so far (each logged)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        recorded = False
        while not self._stop.is_set():
            try:
                if not recorded:
                    self.study._storage.set_trial_system_attr(self.trial_id, WORKER, process_record())
                    recorded = True
                self.study._storage.set_trial_system_attr(self.trial_id, HEARTBEAT, time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # the trial finished meanwhile
            except Exception as err:  # noqa: BLE001 - any storage's error: logged, tried again at the next beat
                self.errors += 1
                text = str(err).splitlines()[0] if str(err) else ""
                print(f"[sweep] trial {self.number}: heartbeat not written ({type(err).__name__}: {text}); trying "
                      f"again in {self.interval:g} s", file=sys.stderr, flush=True)
            self._stop.wait(self.interval)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def work(study: optuna.Study, objective: Callable[[optuna.Trial], object], total: int, heartbeat_s: float) -> int:
    """Run trials until the study holds `total` finished ones (other workers' included); returns how many this
    worker ran. Waits while the last trials run elsewhere (and retries those whose worker died)."""
    ran = 0
    while True:
        fail_stale(study, heartbeat_s)
        trials = study.get_trials(deepcopy=False)
        done = len(finished(trials))
        waiting = any(t.state == TrialState.WAITING for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if done >= total:
            return ran
        if not waiting and done + running >= total:
            time.sleep(min(heartbeat_s, 5.0))
            continue
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
        ran += 1


def worker_env(index: int, workers: int) -> dict[str, str]:
    """One GPU per worker where there are enough, else the CPU threads split between the workers."""
    env = dict(os.environ)
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() >= workers:
        env["CUDA_VISIBLE_DEVICES"] = str(index)
    else:
        env["KGC_KD_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    return env


def spawn_workers(argvs: list[list[str]], log_dir: Path) -> list[int]:
    """One process of `python -m kgc_kd.sweep <argv> --worker` per argv, logs in log_dir/worker-N.log; their exit
    statuses. Ctrl-C / SIGTERM here stops them too."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for i, argv in enumerate(argvs):
            log = open(log_dir / f"worker-{i}.log", "ab")
            procs.append(subprocess.Popen([sys.executable, "-m", "kgc_kd.sweep", *argv, "--worker"],
                                          stdout=log, stderr=subprocess.STDOUT, env=worker_env(i, len(argvs))))
            print(f"[sweep] worker {i}: pid {procs[-1].pid}, log {log_dir / f'worker-{i}.log'}", flush=True)
        return [p.wait() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
