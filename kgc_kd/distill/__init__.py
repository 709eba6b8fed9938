"""Distillation loss terms: pure functions on tensors (and the small generator block), no Lightning.
May import runtime, eval, data and models, never lit/, chain/ or an entry point. The registry
(registry.py) imports nothing of this package; importing the package imports the modules that register the
shipped terms (torchdistill's way), so `kgc_kd.distill.registry` always knows every term: a module with a
new term is added to the list below.
"""

from kgc_kd.distill import feature_terms, terms  # noqa: F401 - register the shipped loss terms
