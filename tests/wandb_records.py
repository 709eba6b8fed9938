"""Offline W&B runs read back with wandb's own reader, `wandb leet inspect` (the records of a run's `.wandb` log,
and its state, config and summary), for the tests of the report run and of the `wandb agent` route."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _inspect(run_dir: Path, *flags: str) -> str:
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(run_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def read_run(run_dir: Path) -> dict:
    """`run_dir` (an `offline-run-*` directory) as wandb reads it: `summary` (state, project, tags, config,
    summary: `wandb leet inspect --summary --json`), `run` (the run record), `history` (every history step's
    items, in order), `config` (every config record merged, wandb's own keys such as `_wandb.visualize.*`
    included), `records` (all of them) and `files` (the run's files directory, where its media and tables are)."""
    summary = json.loads(_inspect(run_dir, "--summary"))
    records = [json.loads(line) for line in _inspect(run_dir).splitlines() if line.strip()]
    run = next(r["run"] for r in records if r["type"] == "run")
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    config = dict(run["config"]["update"])
    for r in records:
        if r["type"] == "config":
            config.update(r["config"].get("update") or {})
    return {"summary": summary, "run": run, "history": history, "config": config, "records": records,
            "files": Path(run_dir) / "files"}


def table(run: dict, key: str) -> dict:
    """A `wandb.Table` logged under `key`: its JSON file (columns, data) as the summary points to it."""
    ref = run["summary"]["summary"][key]
    assert ref["_type"] == "table-file", ref
    return json.loads((run["files"] / ref["path"]).read_text())


def offline_runs(wandb_dir: Path) -> list[Path]:
    return sorted(Path(wandb_dir).glob("offline-run-*"))
