"""`wandb sweep FILE` + `wandb agent SWEEP_ID` with the shipped sweep files, checked with W&B's own parts: the sweep
engine (`sweeps`, W&B's open-source controller) proposes the run, wandb's agent code builds the parameter file and
the command, the chain runs as the agent starts it, wandb's reader (`wandb leet inspect`) reads the run back, and
the engine, fed that run, proposes the next one (kgc_kd/chain/wandb_report.py, the agent's run)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wandb_records import offline_runs, read_run

sweeps = pytest.importorskip("sweeps", reason="W&B's sweep engine: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "experiments" / "sweeps").glob("*.yaml"))
DOCS = [ROOT / "docs" / "sweeps.md", ROOT / "docs" / "wandb.md"]


# ---- every sweep file we ship or show is one W&B takes --------------------------------------------------------
def yaml_blocks(md: Path) -> list[str]:
    return re.findall(r"^```ya?ml\n(.*?)^```", md.read_text(), flags=re.S | re.M)


def doc_examples() -> list[tuple[str, str]]:
    return [(f"{md.name}#{i}", block) for md in DOCS for i, block in enumerate(yaml_blocks(md))]


def assert_valid_for_wandb(spec) -> None:
    from sweeps.config import schema_violations_from_proposed_config

    assert isinstance(spec, dict), spec
    assert schema_violations_from_proposed_config(spec) == []
    sweeps.SweepConfig(spec)  # fills the defaults, raises on what the schema refuses


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweep_files_are_valid_for_wandbs_schema_and_kgc_kd_sweep(path):
    from kgc_kd.sweep.space import load_space

    spec = yaml.safe_load(path.read_text())
    assert_valid_for_wandb(spec)
    assert "${args_no_hyphens}" in spec["command"] and "kgc_kd.fit" in spec["command"]
    load_space(path)  # the Optuna route reads the same file


def test_files_tuned_on_nations_run_nations_under_the_agent():
    """The agent passes `value:` parameters through ${args_no_hyphens}, kgc_kd.sweep adds them to every trial."""
    from kgc_kd.sweep.space import load_space

    for name in ("kd_nations.yaml", "pmd_alpha_beta.yaml"):
        spec = yaml.safe_load((ROOT / "experiments" / "sweeps" / name).read_text())
        assert spec["parameters"]["data.source"] == {"value": "nations"}, name
        assert "data.source=nations" in load_space(ROOT / "experiments" / "sweeps" / name).fixed
    kd = yaml.safe_load((ROOT / "experiments" / "sweeps" / "kd_nations.yaml").read_text())
    assert kd["parameters"]["teacher.epochs"] == {"value": 1}


def test_every_yaml_example_in_the_docs_is_yaml_and_a_wandb_sweep_unless_marked_optuna_only(tmp_path):
    """An example marked `# Optuna only` (a list of metrics, `fixed:`) is read by kgc_kd.sweep instead."""
    from kgc_kd.sweep.space import load_space

    examples = doc_examples()
    assert len(examples) >= 3
    for where, block in examples:
        spec = yaml.safe_load(block)  # a YAML error names the block in the traceback
        if block.lstrip().startswith("# Optuna only"):
            path = tmp_path / "optuna-only.yaml"
            path.write_text(block)
            load_space(path)
            continue
        try:
            assert_valid_for_wandb(spec)
        except Exception as err:
            raise AssertionError(f"{where}: {err}") from None


# ---- a chain started as the agent starts it ----------------------------------------------------------------
def agent_start(tmp_path: Path, sweep_file: Path, run_id: str, items: list[str], plm: Path) -> tuple[dict, dict]:
    """Ask the engine for the sweep's first run, then start it as `wandb agent` does (wandb_agent.Agent.
    _command_run): the parameter file in wandb's format under $WANDB_DIR/wandb/sweep-<id>/, WANDB_RUN_ID,
    WANDB_SWEEP_ID and WANDB_SWEEP_PARAM_PATH set, the file's `command` with its macros replaced. `items`: the
    settings that make the chain tiny, put into `command` before ${args_no_hyphens} as a user would."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args
    from wandb.sdk.lib.config_util import save_config_file_from_dict

    spec = yaml.safe_load(sweep_file.read_text())
    proposed = sweeps.next_run(spec, [], validate=True)
    args = {k: {"value": v["value"].item() if hasattr(v["value"], "item") else v["value"]}
            for k, v in proposed.config.items()}
    sweep_id = "swp" + sweep_file.stem.replace("_", "")[:8]
    param_path = tmp_path / "wandb" / f"sweep-{sweep_id}" / f"config-{run_id}.yaml"
    save_config_file_from_dict(str(param_path), args)
    command = list(spec["command"])
    at = command.index("${args_no_hyphens}")
    command[at:at] = items
    macros = create_sweep_command_args({"args": args})
    macros.update(interpreter=["python"], program=[spec["program"]], env=["/usr/bin/env"])
    argv = []
    for c in create_sweep_command(command):
        c = str(c)
        argv += (macros.get(c[2:-1]) or []) if c.startswith("${") and c.endswith("}") else [c]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SWEEP_ID": sweep_id, "WANDB_RUN_ID": run_id,
           "WANDB_SWEEP_PARAM_PATH": str(param_path), "WANDB_PROJECT": "kd-agent-project",
           "WANDB_ENTITY": "kd-agent-team", "WANDB_DIR": str(tmp_path),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert any(a.startswith("distill.alpha=") for a in argv)
    return spec, args


def engine_run(run: dict):
    """The run as W&B's backend hands it to the engine: every top-level config key as {value: v}."""
    import copy

    config = {k: {"value": v} for k, v in run["summary"]["config"].items()}
    # by the backend's names (summaryMetrics, sampledHistory): the only ones sweeps 0.2 reads under pydantic 2
    return sweeps.SweepRun(name=run["summary"]["run_id"], state=sweeps.RunState.finished, config=config,
                           summaryMetrics=copy.deepcopy(run["summary"]["summary"]),
                           sampledHistory=copy.deepcopy(run["history"]))


TINY = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "trainer.max_epochs=1",
        "trainer.accelerator=cpu", "data.batch_size=8", "data.max_length=16", "trainer.enable_progress_bar=false",
        "eval.untrained_baseline=false", "eval.save_predictions=false"]


@pytest.mark.parametrize("sweep_file, logger", [("kd_nations.yaml", "wandb"), ("pmd_alpha_beta.yaml", "csv")])
def test_the_agents_run_feeds_wandbs_sweep_engine(tmp_path, plm4, caplog, sweep_file, logger):
    """A bayes file (every stage run beside the agent's) and a grid file (run.logger=csv: the agent's run only):
    the agent's run has the agent's id, sweep, project and entity, every sweep parameter under its flat key with
    the agent's value, each grade's metric in its history (step = the stage's index), and the engine, fed the
    run, misses no parameter."""
    items = [f"model.plm={plm4}", f"run.root={tmp_path / 'runs'}", "run.name=agent", f"run.logger={logger}",
             "stages=[{name: pmd6, layers: 2}, {name: pmd2, layers: 1}]", *TINY]
    spec, args = agent_start(tmp_path, ROOT / "experiments" / "sweeps" / sweep_file, "agentrun1", items, plm4)

    (run_dir,) = [r for r in offline_runs(tmp_path / "runs" / "agent" / "wandb") if r.name.endswith("-agentrun1")]
    run = read_run(run_dir)
    caplog.set_level(logging.DEBUG)  # W&B's engine, fed the run, proposes the next one and misses no parameter
    seen = engine_run(run)
    assert seen.summary_metrics and seen.history  # the engine sees the run's figures
    following = sweeps.next_run(spec, [seen], validate=True)
    engine_log = caplog.text
    assert "does not contain parameter" not in engine_log and "not found in config" not in engine_log, engine_log
    assert following is not None and set(following.config) == set(spec["parameters"])
    if spec["method"] == "grid":  # the grid's next point is another one than the run's
        assert {k: v["value"] for k, v in following.config.items()} != {k: v["value"] for k, v in args.items()}
    # hyperband's view: `last/val_mrr` has a value per grade, so `early_terminate` can stop between grades
    assert len(engine_run(run).metric_history("last/val_mrr", filter_invalid=True)) == 3

    summary = run["summary"]
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    assert run["run"]["sweep_id"] == f"swp{Path(sweep_file).stem.replace('_', '')[:8]}"
    assert summary["project"] == "kd-agent-project" and run["run"].get("entity") == "kd-agent-team"
    stage_runs = [read_run(r) for r in offline_runs(tmp_path / "runs" / "agent" / "wandb") if r != run_dir]
    assert len(stage_runs) == (3 if logger == "wandb" else 0)
    for r in stage_runs:  # the stage runs beside the agent's go where the agent's run goes
        assert r["summary"]["project"] == "kd-agent-project" and r["run"].get("entity") == "kd-agent-team"
    for key, v in args.items():  # flat keys with the agent's values, besides the nested config
        assert summary["config"][key] == pytest.approx(v["value"]) if isinstance(v["value"], float) \
            else summary["config"][key] == v["value"], key
    assert summary["config"]["data"]["source"] == "nations" and summary["config"]["distill"]["alpha"] == \
        pytest.approx(args["distill.alpha"]["value"])
    steps = {h["_step"]: h for h in run["history"] if "stage/index" in h}
    assert sorted(steps) == [0, 1, 2]
    for i, name in enumerate(["teacher", "pmd6", "pmd2"]):
        assert steps[i]["stage/index"] == i and f"{name}/val_mrr" in steps[i] and "stage/val_mrr" in steps[i]
        assert steps[i][f"{name}/val_mrr"] == steps[i]["stage/val_mrr"]
    assert steps[2]["pmd2/val_mrr"] == summary["summary"]["pmd2/val_mrr"]  # the sweep's metric, as the grade ends



def test_a_chain_the_agent_stops_keeps_its_finished_stages_and_its_run_says_stopped(tmp_path, plm4):
    """The agent stops a run with SIGTERM (early_terminate, `wandb sweep --stop`): sent while pmd6 trains, the
    chain exits 143 with pmd6's last.ckpt saved, the teacher stays in the stage store, and the agent's run ends
    with the teacher's step, marked `stopped`."""
    import signal
    import time

    from wandb.sdk.lib.config_util import save_config_file_from_dict

    param_path = tmp_path / "wandb" / "sweep-swpstop" / "config-stoprun.yaml"
    save_config_file_from_dict(str(param_path), {"distill.alpha": {"value": 0.2}})
    root = tmp_path / "runs"
    argv = [sys.executable, "-m", "kgc_kd.fit", f"model.plm={plm4}", f"run.root={root}", "run.name=stop",
            "run.logger=csv", "data=synthetic", "stages=[{name: pmd6, layers: 2, epochs: 200}]", *TINY,
            "distill.alpha=0.2"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SWEEP_ID": "swpstop", "WANDB_RUN_ID": "stoprun",
           "WANDB_SWEEP_PARAM_PATH": str(param_path)}
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(root.glob("stage-store/pmd6-*/checkpoints/last.ckpt")):  # pmd6 is training
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out[-3000:]
    assert list(root.glob("stage-store/teacher-*/export/biencoder.json"))
    (run_dir,) = [r for r in offline_runs(root / "stop" / "wandb") if r.name.endswith("-stoprun")]
    run = read_run(run_dir)
    assert run["summary"]["summary"]["outcome"] == "stopped" and "stopped" in run["summary"]["tags"]
    assert [h["_step"] for h in run["history"] if "stage/index" in h] == [0]
    assert run["summary"]["config"]["distill.alpha"] == 0.2
