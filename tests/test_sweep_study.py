"""kgc_kd.sweep.study: storages, the study's budget, stale trials retried, and worker processes sharing one study
through the storages a multi-node user gives (a journal file; a PostgreSQL server the test starts)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from kgc_kd.sweep.space import SweepError, load_space
from kgc_kd.chain.lock import process_record
from kgc_kd.sweep.study import (HEARTBEAT, WORKER as WORKER_ATTR, Heartbeat, budget, default_storage, fail_stale, finished,
                                make_pruner, open_storage, open_study)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(tmp_path, **spec):
    spec = {"name": "s", "method": "random", "metric": {"name": "last/val_mrr", "goal": "maximize"},
            "parameters": {"distill.alpha": {"min": 0.0, "max": 0.5}}, **spec}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_space(path)


def test_the_default_storage_is_a_sqlite_file_in_the_sweep_directory_and_a_rerun_resumes_it(tmp_path):
    url = default_storage(tmp_path / "sweeps" / "s")
    assert url == f"sqlite:///{(tmp_path / 'sweeps' / 's' / 'study.db').resolve()}"
    space = _space(tmp_path)
    study = open_study(space, "s", open_storage(url), make_pruner("median", space, 4), 0)
    study.optimize(lambda t: t.suggest_float("distill.alpha", 0, 0.5), n_trials=2)
    again = open_study(space, "s", open_storage(url), make_pruner("median", space, 4), 0)
    assert len(again.trials) == 2 and (tmp_path / "sweeps" / "s" / "study.db").is_file()


def _optuna_cli(*args) -> str:
    """The `optuna` command (Optuna's own reader, not ours), installed beside this Python."""
    optuna_cli = Path(sys.executable).with_name("optuna")
    proc = subprocess.run([str(optuna_cli), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_study_names_its_metrics_for_optunas_own_readers(tmp_path):
    """set_metric_names: load_study's metric_names, and the `optuna` CLI's tables name the sweep's metrics
    (optuna-dashboard reads the same study attribute), not `value` / "Objective 0"."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    multi = _space(tmp_path, metric=[{"name": "pmd2/val_mrr"}, {"name": "pmd2/params_total", "goal": "minimize"}])
    study = open_study(multi, "s", open_storage(url), make_pruner("median", multi, 4), 0)
    study.add_trial(optuna.trial.create_trial(params={"distill.alpha": 0.1}, distributions=ALPHA, values=[0.5, 1e6]))
    assert optuna.load_study(study_name="s", storage=url).metric_names == ["pmd2/val_mrr", "pmd2/params_total"]
    rows = json.loads(_optuna_cli("trials", "--study-name", "s", "--storage", url, "-f", "json"))
    assert rows[0]["values"] == {"pmd2/val_mrr": 0.5, "pmd2/params_total": 1e6}
    best = json.loads(_optuna_cli("best-trials", "--study-name", "s", "--storage", url, "-f", "json"))
    assert best[0]["values"] == {"pmd2/val_mrr": 0.5, "pmd2/params_total": 1e6}
    one = _space(tmp_path, metric={"name": "pmd6/val_mrr", "goal": "maximize"})
    url1 = f"sqlite:///{tmp_path / 'one.db'}"
    study = open_study(one, "one", open_storage(url1), make_pruner("median", one, 4), 0)
    study.add_trial(optuna.trial.create_trial(params={"distill.alpha": 0.1}, distributions=ALPHA, value=0.25))
    assert json.loads(_optuna_cli("best-trial", "--study-name", "one", "--storage", url1, "-f", "json"))["value"] == {
        "pmd6/val_mrr": 0.25}
    assert "pmd6/val_mrr" in _optuna_cli("trials", "--study-name", "one", "--storage", url1, "-f", "table")


def test_a_study_written_before_metric_names_gets_them_and_one_with_other_metrics_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    old = optuna.create_study(study_name="s", storage=url, direction="maximize")
    old.set_user_attr("metrics", ["last/val_mrr"])  # how a study was named before set_metric_names
    space = _space(tmp_path)
    assert open_study(space, "s", open_storage(url), make_pruner("median", space, 4), 0).metric_names == ["last/val_mrr"]
    other = _space(tmp_path, metric={"name": "pmd6/val_mrr", "goal": "maximize"})
    with pytest.raises(SweepError, match=r"exists with metrics \['last/val_mrr'\], the file asks for \['pmd6/val_mrr'\]"):
        open_study(other, "s", open_storage(url), make_pruner("median", other, 4), 0)


@pytest.mark.parametrize("url, named", [
    ("postgresql://nobody@127.0.0.1:1/nothing", "cannot open the study storage"),
    ("sqlite:////proc/no/such/dir/study.db", "cannot open the study storage"),
    ("nosuchdialect://x", "cannot open the study storage"),
])
def test_an_unreachable_storage_is_an_error_naming_it(url, named):
    with pytest.raises(SweepError, match=named) as err:
        open_storage(url)
    assert url in str(err.value)


def test_a_journal_path_is_a_journal_storage(tmp_path):
    from optuna.storages.journal import JournalStorage

    assert isinstance(open_storage(f"journal:{tmp_path / 'a' / 'kd.journal'}"), JournalStorage)
    assert isinstance(open_storage(str(tmp_path / "kd.log")), JournalStorage)


def test_the_budget_is_the_trials_asked_for_at_most_the_grid(tmp_path):
    grid = _space(tmp_path, method="grid", parameters={"distill.alpha": {"values": [0.1, 0.2, 0.3]}})
    assert budget(grid, 10) == 3 and budget(grid, 2) == 2 and budget(_space(tmp_path), 10) == 10


def test_pruners(tmp_path):
    space = _space(tmp_path)
    assert isinstance(make_pruner("median", space, 4), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("none", space, 4), optuna.pruners.NopPruner)
    assert isinstance(make_pruner("hyperband", space, 4), optuna.pruners.HyperbandPruner)
    multi = _space(tmp_path, metric=[{"name": "last/val_mrr"}, {"name": "last/params_total", "goal": "minimize"}])
    assert isinstance(make_pruner("median", multi, 4), optuna.pruners.NopPruner)  # Optuna prunes single objectives
    with pytest.raises(SweepError, match="--pruner 'asha'"):
        make_pruner("asha", space, 4)


def test_a_trial_whose_heartbeat_stopped_is_failed_and_enqueued_again_with_its_parameters(tmp_path):
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'db'}"))
    dead = study.ask({"distill.alpha": optuna.distributions.FloatDistribution(0, 0.5)})
    study._storage.set_trial_system_attr(dead._trial_id, HEARTBEAT, time.time() - 100)
    alive = study.ask({"distill.alpha": optuna.distributions.FloatDistribution(0, 0.5)})
    study._storage.set_trial_system_attr(alive._trial_id, HEARTBEAT, time.time())
    assert fail_stale(study, heartbeat_s=10) == [dead.number]
    states = {t.number: t.state for t in study.trials}
    assert states[dead.number] == TrialState.FAIL and states[alive.number] == TrialState.RUNNING
    (retry,) = [t for t in study.trials if t.state == TrialState.WAITING]
    assert retry.params == dead.params and retry.system_attrs["failed_trial"] == dead.number
    assert finished(study.trials) == []  # the failed trial was retried: it does not count
    assert fail_stale(study, heartbeat_s=10) == []  # once only


ALPHA = {"distill.alpha": optuna.distributions.FloatDistribution(0, 0.5)}


class LockedOnce:
    """The study's storage, except that the first heartbeat write fails as SQLite's does when another writer
    holds the database too long (the injected error); everything else goes to the real storage."""

    def __init__(self, storage):
        self.storage, self.failed, self.beats = storage, 0, []

    def __getattr__(self, name):
        return getattr(self.storage, name)

    def set_trial_system_attr(self, trial_id, key, value):
        if key == HEARTBEAT and not self.failed:
            import sqlite3

            from sqlalchemy.exc import OperationalError

            self.failed += 1
            raise OperationalError("UPDATE trial_system_attributes ...", {}, sqlite3.OperationalError("database is locked"))
        self.storage.set_trial_system_attr(trial_id, key, value)
        if key == HEARTBEAT:
            self.beats.append(value)


def test_a_storage_error_in_the_heartbeat_is_logged_and_the_live_trial_is_neither_failed_nor_duplicated(tmp_path,
                                                                                                       capsys):
    url = f"sqlite:///{tmp_path / 'db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    trial = study.ask(ALPHA)
    flaky = LockedOnce(study._storage)
    study._storage = flaky
    other = optuna.load_study(study_name="s", storage=open_storage(url))  # another worker, on the real storage
    with Heartbeat(study, trial, interval=0.1) as beat:
        time.sleep(0.8)  # the first beat fails, then ~7 more; 0.8 s is over 3 beats without one
        assert beat._thread.is_alive() and beat.errors == 1
        assert fail_stale(other, heartbeat_s=0.1) == []
    assert flaky.failed == 1 and len(flaky.beats) >= 3  # the beat went on after the error
    err = capsys.readouterr().err
    assert "trial 0: heartbeat not written (OperationalError: " in err and "database is locked" in err
    (t,) = other.get_trials()  # one trial, still running: not failed, not queued again
    assert t.state == TrialState.RUNNING and t.system_attrs[WORKER_ATTR]["pid"] == os.getpid()


def test_only_a_trial_whose_process_is_gone_is_failed_however_late_its_heartbeat(tmp_path):
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'db'}"))
    late = study.ask(ALPHA)  # its process (this one) runs; its heartbeat is late (a storage outage, say)
    study._storage.set_trial_system_attr(late._trial_id, WORKER_ATTR, process_record())
    study._storage.set_trial_system_attr(late._trial_id, HEARTBEAT, time.time() - 100)
    ended = study.ask(ALPHA)  # its process has ended: failed at once, its heartbeat still fresh
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    study._storage.set_trial_system_attr(ended._trial_id, WORKER_ATTR, {**process_record(), "pid": child.pid})
    study._storage.set_trial_system_attr(ended._trial_id, HEARTBEAT, time.time())
    away = study.ask(ALPHA)  # on another node: told by its heartbeat alone
    study._storage.set_trial_system_attr(away._trial_id, WORKER_ATTR, {**process_record(), "host": "node-7"})
    study._storage.set_trial_system_attr(away._trial_id, HEARTBEAT, time.time() - 100)
    assert sorted(fail_stale(study, heartbeat_s=10)) == [ended.number, away.number]
    states = {t.number: t.state for t in study.trials}
    assert states[late.number] == TrialState.RUNNING
    assert states[ended.number] == states[away.number] == TrialState.FAIL
    assert sorted(t.system_attrs["failed_trial"] for t in study.trials if t.state == TrialState.WAITING) == [
        ended.number, away.number]


WORKER = """
import os, sys, time
from kgc_kd.sweep.space import load_space
from kgc_kd.sweep.study import make_pruner, open_storage, open_study, work
space = load_space(sys.argv[1])
study = open_study(space, "shared", open_storage(sys.argv[2]), make_pruner("none", space, 1), int(sys.argv[3]))
def objective(trial):
    trial.set_user_attr("pid", os.getpid())
    x = trial.suggest_float("distill.alpha", 0.0, 0.5)
    time.sleep(0.3)
    return -(x - 0.3) ** 2
print("ran", work(study, objective, total=8, heartbeat_s=1.0))
"""


def _two_workers(tmp_path, url):
    path = tmp_path / "s.yaml"
    _space(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(path), url, str(i)], stdout=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = optuna.load_study(study_name="shared", storage=open_storage(url))
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == len(study.trials) >= 8  # the budget is shared: at most one extra trial per late worker
    assert len(study.trials) <= 9
    assert len({t.user_attrs["pid"] for t in done}) == 2  # both processes ran trials of the one study
    assert sum(int(o.split()[-1]) for o in outs) == len(study.trials)


def test_two_worker_processes_share_one_study_through_a_journal_file(tmp_path):
    _two_workers(tmp_path, f"journal:{tmp_path / 'shared-fs' / 'kd.journal'}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres(tmp_path):
    """A real PostgreSQL server in tmp_path (initdb + pg_ctl; as the `postgres` user when run as root)."""
    bins = [shutil.which(b) for b in ("initdb", "pg_ctl")]
    if not all(bins):
        pytest.skip("needs PostgreSQL's initdb and pg_ctl on PATH")
    pytest.importorskip("psycopg", reason="needs the psycopg driver (pip install \"psycopg[binary]\")")
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="kgc-kd-pg-"))  # not under pytest's 0700 directory: the server user reads it
    os.chmod(top, 0o755)
    data = top / "pg"
    data.mkdir()
    prefix = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(data, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    try:
        subprocess.run([*prefix, bins[0], "-D", str(data), "-U", "postgres", "--auth=trust"], check=True,
                       capture_output=True)
        subprocess.run([*prefix, bins[1], "-D", str(data), "-w", "-l", str(data / "log"), "-o",
                        f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, bins[1], "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


def test_two_worker_processes_share_one_study_through_a_postgresql_server(tmp_path, postgres):
    _two_workers(tmp_path, postgres)
