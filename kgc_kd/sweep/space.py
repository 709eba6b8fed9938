"""A sweep file (W&B's sweep format) read into what an Optuna study needs, every mistake named before a trial.

The file: `method` (grid | random | bayes), `metric` ({name, goal}; a list of them makes a multi-objective
study), `parameters` (config keys, each `values`, `value`, or `min`/`max` with an optional W&B
`distribution`), optionally `early_terminate` (W&B's hyperband) and `fixed` (config items for every trial;
ours, not W&B's). The mapping to Optuna:

- grid -> GridSampler over the `values`; random -> RandomSampler; bayes -> TPESampler (seeded);
- `values: [...]` -> CategoricalDistribution (lists and mappings as their YAML text); `value: v` -> a
  fixed item; `min`/`max` -> IntDistribution when both are integers, else FloatDistribution, with W&B's
  `distribution`: uniform, int_uniform, q_uniform (step q), log_uniform_values (log scale, min/max the
  values), log_uniform (min/max natural-log exponents, as W&B);
- a metric is `<stage>/<key>` of a validation figure or a size: `val_mrr` (the stage's best validation
  MRR, which picked its checkpoint), `params_total`, `params_no_embeddings`, `queries_per_s`,
  `entities_per_s`; `<stage>` is `teacher`, a stage name or `last`. Test metrics never select: naming one
  is an error;
- `name` (default: the file's name without `.yaml`) names the study, and so its directory under
  `<run.root>/sweeps/`: a name of letters, digits, `_ . -` (`config.check_name`), never a path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kgc_kd.config import ConfigError, check_name


class SweepError(ValueError):
    pass


METRIC_KEYS = ("val_mrr", "params_total", "params_no_embeddings", "queries_per_s", "entities_per_s")
TEST_KEYS = ("mrr", "mr", "hits@1", "hits@3", "hits@10", "test_mrr", "test_mr", "test_hits@1", "test_hits@3",
             "test_hits@10")
METHODS = ("grid", "random", "bayes")
DISTRIBUTIONS = ("uniform", "int_uniform", "q_uniform", "log_uniform_values", "log_uniform", "categorical")


@dataclass
class Metric:
    name: str  # <stage>/<key>
    goal: str  # maximize | minimize

    @property
    def stage(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def key(self) -> str:
        return self.name.split("/", 1)[1]


@dataclass
class SweepSpace:
    path: Path
    name: str
    method: str
    metrics: list[Metric]
    distributions: dict[str, Any]  # config key -> optuna distribution
    fixed: list[str] = field(default_factory=list)  # key=value items of every trial (fixed + `value:` parameters)
    hyperband_min_iter: int | None = None  # W&B's early_terminate: {type: hyperband, min_iter}

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    def grid(self) -> dict[str, list]:
        return {k: list(d.choices) for k, d in self.distributions.items()}

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values()) if self.method == "grid" else 0

    def sampler(self, seed: int):
        import optuna

        if self.method == "grid":
            return optuna.samplers.GridSampler(self.grid(), seed=seed)
        if self.method == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed)

    def corners(self) -> list[dict[str, Any]]:
        """Parameter sets that together touch every choice and both ends of every range: checked as configs
        before anything trains (an unknown key or a bad value fails there)."""
        from optuna.distributions import CategoricalDistribution

        width = max([len(d.choices) if isinstance(d, CategoricalDistribution) else 2
                     for d in self.distributions.values()] or [1])
        out = []
        for i in range(width):
            out.append({k: (d.choices[i % len(d.choices)] if isinstance(d, CategoricalDistribution)
                            else (d.low if i % 2 == 0 else d.high)) for k, d in self.distributions.items()})
        return out


def item_value(value: Any) -> str:
    """A parameter value as the text of a key=value item."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def _choice(value: Any) -> Any:
    """Optuna's categorical choices are None, bool, int, float or str: a list or mapping goes as its YAML text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else item_value(value)


def _number(where: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SweepError(f"{where}: expected a number, got {value!r}")
    return value


def distribution(where: str, name: str, p: Any):
    """One parameter of the file -> (an Optuna distribution, None) or (None, a fixed value)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not isinstance(p, dict):
        raise SweepError(f"{where}: parameters.{name}: expected a mapping (values, value, or min and max)")
    kind = p.get("distribution")
    if kind is not None and kind not in DISTRIBUTIONS:
        raise SweepError(f"{where}: parameters.{name}.distribution={kind!r}: expected one of {DISTRIBUTIONS}")
    if "value" in p:
        return None, p["value"]
    if "values" in p:
        values = p["values"]
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: parameters.{name}.values: expected a non-empty list")
        choices = [_choice(v) for v in values]
        if len(set(map(repr, choices))) != len(choices):
            raise SweepError(f"{where}: parameters.{name}.values: a value is listed twice")
        return CategoricalDistribution(choices), None
    if "min" not in p or "max" not in p:
        raise SweepError(f"{where}: parameters.{name}: expected values, value, or min and max")
    lo, hi = _number(f"{where}: parameters.{name}.min", p["min"]), _number(f"{where}: parameters.{name}.max", p["max"])
    if not lo < hi:
        raise SweepError(f"{where}: parameters.{name}: min={lo} >= max={hi}: an empty or inverted range")
    if kind == "log_uniform":  # W&B: min/max are exponents of e
        return FloatDistribution(math.exp(lo), math.exp(hi), log=True), None
    if kind == "log_uniform_values":
        if lo <= 0:
            raise SweepError(f"{where}: parameters.{name}: log_uniform_values needs min > 0, got {lo}")
        return FloatDistribution(float(lo), float(hi), log=True), None
    if kind == "q_uniform":
        q = _number(f"{where}: parameters.{name}.q", p.get("q", 1.0))
        if isinstance(lo, int) and isinstance(hi, int) and isinstance(q, int):
            return IntDistribution(lo, hi, step=q), None
        return FloatDistribution(float(lo), float(hi), step=float(q)), None
    if kind == "int_uniform" or (kind is None and isinstance(lo, int) and isinstance(hi, int)):
        if not (isinstance(lo, int) and isinstance(hi, int)):
            raise SweepError(f"{where}: parameters.{name}: int_uniform needs integer min and max")
        return IntDistribution(lo, hi), None
    return FloatDistribution(float(lo), float(hi)), None


def parse_metrics(where: str, raw: Any) -> list[Metric]:
    entries = raw if isinstance(raw, list) else [raw]
    if not entries or not all(isinstance(m, dict) and m.get("name") for m in entries):
        raise SweepError(f"{where}: metric: expected {{name: <stage>/val_mrr, goal: maximize}} or a list of them")
    out = []
    for m in entries:
        name, goal = str(m["name"]), m.get("goal", "maximize")
        if goal not in ("maximize", "minimize"):
            raise SweepError(f"{where}: metric {name!r}: goal={goal!r}: expected maximize or minimize")
        stage, _, key = name.partition("/")
        if not stage or not key:
            raise SweepError(f"{where}: metric {name!r}: expected <stage>/<key>, e.g. pmd2/val_mrr or last/val_mrr")
        if key in TEST_KEYS:
            raise SweepError(f"{where}: metric {name!r} is a test metric: a sweep selects on validation and only "
                             f"reports test; use {stage}/val_mrr")
        if key not in METRIC_KEYS:
            raise SweepError(f"{where}: metric {name!r}: unknown key {key!r}; expected one of {METRIC_KEYS}")
        out.append(Metric(name, goal))
    if len({m.name for m in out}) != len(out):
        raise SweepError(f"{where}: metric: a metric is listed twice")
    return out


def load_space(path: str | Path) -> SweepSpace:
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SweepError(f"{path}: cannot read the sweep file ({err})") from None
    where = str(path)
    if not isinstance(spec, dict) or not isinstance(spec.get("parameters"), dict) or not spec["parameters"]:
        raise SweepError(f"{where}: expected a mapping with a non-empty 'parameters' section")
    if spec.get("name") is not None:
        try:
            check_name(spec["name"], "name")
        except ConfigError as err:
            raise SweepError(f"{where}: {err}") from None
    method = spec.get("method", "grid")
    if method not in METHODS:
        raise SweepError(f"{where}: method={method!r}: expected one of {METHODS}")
    metrics = parse_metrics(where, spec.get("metric"))
    dists, fixed = {}, [str(i) for i in (spec.get("fixed") or [])]
    for name, p in spec["parameters"].items():
        d, value = distribution(where, str(name), p)
        if d is None:
            fixed.append(f"{name}={item_value(value)}")
        else:
            dists[str(name)] = d
    if not dists:
        raise SweepError(f"{where}: parameters: nothing to search (every parameter has a single value)")
    from optuna.distributions import CategoricalDistribution

    if method == "grid":
        ranged = [k for k, d in dists.items() if not isinstance(d, CategoricalDistribution)]
        if ranged:
            raise SweepError(f"{where}: method=grid: parameters.{ranged[0]} is a range; a grid needs 'values'")
    et = spec.get("early_terminate")
    min_iter = None
    if et is not None:
        if not isinstance(et, dict) or et.get("type") != "hyperband":
            raise SweepError(f"{where}: early_terminate: expected {{type: hyperband, min_iter: N}}")
        min_iter = int(et.get("min_iter", 1))
    return SweepSpace(path=path, name=str(spec.get("name") or path.stem), method=method, metrics=metrics,
                      distributions=dists, fixed=fixed, hyperband_min_iter=min_iter)


def check_metric_stages(space: SweepSpace, stage_names: list[str]) -> None:
    """Every metric names a stage of the chain the trials run (`teacher`, a stage or `last`)."""
    known = ["teacher", *stage_names, "last"]
    for m in space.metrics:
        if m.stage not in known:
            raise SweepError(f"{space.path}: metric {m.name!r}: no stage {m.stage!r} in the chain; expected one of {known}")
