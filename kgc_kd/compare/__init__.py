"""`python -m kgc_kd.compare`: distillation objectives against each other, over several seeds (see __main__.py).
An entry point: may import every layer below it (chain plans and the driver); nothing imports it.

One idea per file: `plan.py` (which chains, with which arguments: checked before anything trains),
`run.py` (the teacher once, then every objective x seed chain through `kgc_kd.chain.driver.run_chain`,
finished chains read back instead of rerun), `aggregate.py` (mean, sample std and paired differences
to `none`, pure functions), `report.py` (compare.json / .md / .png and the W&B run).
"""
