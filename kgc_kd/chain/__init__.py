"""Everything about a distillation chain: the run plan (plan.py, built once), stage specs, preflight, the driver
(one Trainer per stage, the current teacher), the stage store, the exporter, the stage recorder callback, the
report and W&B tracking. May import every lower layer (runtime, config, eval, data, models, distill, lit,
callbacks); only the entry points (fit, compare, sweep) import it. docs/architecture.md has the whole map."""
