"""Everything about a distillation chain: the run plan, preflight, the driver, the stage store, the stage recorder
callback, the report and the W&B tracking. May import every lower layer (runtime, config, data, models, distill,
eval, lit, callbacks); only the entry points (fit, compare, sweep) import it."""
