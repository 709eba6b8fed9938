"""The report run, and under `wandb agent` the agent's run (kgc_kd/chain/wandb_report.py)."""

import os
import subprocess
import sys

from kgc_kd.chain import wandb_report


def test_under_a_wandb_agent_the_agents_run_is_the_report_and_holds_the_sweep_metric(tmp_path, plm4):
    """`wandb agent` starts fit with its sweep's run id in the environment and reads the sweep's metric from that
    run: the stage runs get their own ids, the report run takes the agent's id and sweep and its summary holds
    every stage's validation figure (`s2/val_mrr`, `last/val_mrr`), even with run.logger=csv."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SWEEP_ID": "swp12345", "WANDB_RUN_ID": "agentrun1"}
    subprocess.run([sys.executable, "-m", "kgc_kd.fit", "data=synthetic", f"model.plm={plm4}", "trainer.max_epochs=1",
                    "trainer.accelerator=cpu", "data.batch_size=8", "data.max_length=24", f"run.root={tmp_path / 'runs'}",
                    "run.name=wb", "run.logger=csv", "trainer.enable_progress_bar=false", "eval.untrained_baseline=false",
                    "stages=[{name: s2, layers: 2}]"], env=env, check=True, capture_output=True, timeout=300)
    runs = list((tmp_path / "runs" / "wb" / "wandb").glob("offline-run-*"))
    (agent_run,) = [r for r in runs if r.name.endswith("-agentrun1")]
    assert len(runs) == 1  # run.logger=csv: no stage runs, but the agent's run is still written
    record = next(agent_run.glob("run-*.wandb")).read_bytes()
    for key in (b"swp12345", b"last/val_mrr", b"s2/val_mrr", b"teacher/val_mrr", b"s2/test_mrr", b"s2/params_total"):
        assert key in record, key


def test_summary_figures_name_every_stage_and_the_last():
    rows = [{"name": "teacher", "best_val_mrr": 0.5, "test": {"mrr": 0.4}, "params_total": 10},
            {"name": "g", "best_val_mrr": 0.3, "test": {"mrr": 0.2}, "params_total": 4}]
    figs = wandb_report.summary_figures(rows)
    assert figs["teacher/val_mrr"] == 0.5 and figs["g/test_mrr"] == 0.2 and figs["last/val_mrr"] == 0.3
    assert figs["last/params_total"] == 4 and "teacher/queries_per_s" not in figs
