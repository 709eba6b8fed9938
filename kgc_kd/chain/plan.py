"""The run plan: everything a chain run is decided to be, built once from the command line (or a loaded config).

`build_plan(argv)` loads the config (kgc_kd.config.load: presets, items, per-field checks, each stage's
objective as a term list) and `plan_config(cfg, objectives)` turns it into a `RunPlan`: the config, every student stage's resolved
spec (chain/stage_spec.py: its terms checked by the registered loss terms), the run name and the run
directory; nothing is read from disk. Preflight (chain/preflight.py `check_run`) refines the plan once the data
and tokenizer are loaded: the encoders' shapes (`dims`, one `Dims` per student stage) and the content of the
run's inputs (`inputs`: the KG as loaded, the PLM's files, a loaded export's files), from which, with the
settings, the stage keys (the stage store's) are computed, once;
`run_chain` (chain/driver.py), `kgc_kd.compare` and `kgc_kd.sweep` take the plan. Nothing else resolves a
stage or derives a run name. A bad value raises ConfigError (exit status 2) before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from kgc_kd.config import load, objective_entries, run_name
from kgc_kd.chain.stage_spec import resolve_stage, stage_keys
from kgc_kd.distill.registry import Dims


@dataclass(frozen=True)
class RunPlan:
    cfg: DictConfig  # the loaded, validated config (what the run writes as config.yaml)
    specs: list[dict[str, Any]]  # student stage i's resolved spec (stage_spec.resolve_stage), in chain order
    run_name: str  # run.name, or <data>-<config hash>
    run_dir: Path  # <run.root>/<run_name>
    dims: Optional[list[Dims]] = field(default=None)  # student stage i's encoder shapes, once preflight checked them
    # the run's input fingerprints (stage_spec.input_fingerprints), once preflight computed them from the loaded KG
    inputs: Optional[dict[str, Any]] = field(default=None)
    # stage name (teacher first) -> its stage key in the stage store: settings and `inputs` (None before them)
    keys: Optional[dict[str, str]] = field(default=None)

    @property
    def stage_names(self) -> list[str]:
        """Every stage of the chain, the teacher first."""
        return ["teacher", *(spec["name"] for spec in self.specs)]

    def with_dims(self, dims: list[Dims]) -> RunPlan:
        """The plan refined with the encoders' shapes (preflight, once each stage's terms passed their checks)."""
        return replace(self, dims=list(dims))

    def with_inputs(self, inputs: dict[str, Any]) -> RunPlan:
        """The plan refined with its inputs' fingerprints (preflight) and the stage keys computed from them."""
        return replace(self, inputs=inputs, keys=stage_keys(self.cfg, self.specs, inputs))


def plan_config(cfg: DictConfig, objectives: list[list[dict[str, Any]]] | None = None) -> RunPlan:
    """The plan of a loaded config: every stage resolved, the run name and directory (the stage keys come
    with the inputs' fingerprints, `RunPlan.with_inputs`).
    `objectives`: each stage's term list as `kgc_kd.config.load` returned it (None: spelt from `cfg`)."""
    if objectives is None:
        objectives = [objective_entries(cfg, i) for i in range(len(cfg.stages))]
    specs = [resolve_stage(cfg, i, entries) for i, entries in enumerate(objectives)]
    name = run_name(cfg)
    return RunPlan(cfg=cfg, specs=specs, run_name=name, run_dir=Path(cfg.run.root) / name)


def build_plan(argv: list[str] | None = None) -> RunPlan:
    """The plan of a command line's configuration items (`config=PATH`, `GROUP=PRESET`, `key=value`)."""
    return plan_config(*load(argv))


def as_plan(plan_or_cfg: RunPlan | DictConfig) -> RunPlan:
    """A plan as it is, or the plan of a loaded config (callers that hold only a config: tests, the benchmark)."""
    return plan_or_cfg if isinstance(plan_or_cfg, RunPlan) else plan_config(plan_or_cfg)
