"""Distillation sweeps on Optuna: `python -m kgc_kd.sweep FILE` (kgc_kd/sweep/__main__.py).
An entry point: may import every layer below it (chain plans and the driver); nothing imports it.

- `space`: a sweep file (W&B's format) -> parameters as Optuna distributions, the sampler, the metrics;
- `study`: the Optuna storage and study, the worker loop (heartbeats, stale trials retried), worker processes;
- `trial`: one trial, a chain run whose grades report their validation MRR to the pruner;
- `report`: what a sweep leaves behind (trials.md/json, best.yaml, plots, the W&B table).
"""
