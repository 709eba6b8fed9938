"""The LightningModules: the shared evaluation, optimiser and checks (base.py), the teacher, the students.
May import runtime, config, eval, data, models and distill; callbacks, chain and the entry points build on it."""
