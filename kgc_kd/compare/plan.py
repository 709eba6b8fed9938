"""What a comparison will run, decided and checked before anything trains.

Every chain is an ordinary `python -m kgc_kd.fit` run whose arguments are the comparison's key=value
items plus `distill=<objective>`, `run.seed=<seed>` and `teacher.load=<the teacher's export>`; the
teacher (unless `--teacher` names an export) is the `teacher.only=true` run of the same items. Each
chain's items go through `kgc_kd.chain.plan.build_plan`, so an unknown objective, key, preset or loss term
fails here, naming it, and each chain's run plan (its stages resolved, its run directory: the one `fit`
itself would derive, so a rerun finds it) is built here, once.

A variant (`--variant "LABEL=PRESET key=value ..."`) is an objective of its own: the preset plus items that
apply to its chains only (a mask schedule, a KD temperature, weights), compared as a row named LABEL. The
other objectives' chains, `none` included, keep their argv and so their finished run directories.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from kgc_kd.chain.plan import RunPlan, build_plan as build_run_plan
from kgc_kd.config import NAME_PATTERN, OBJECTIVE_KEYS, ConfigError, check_name, config_hash, load_config, presets
from kgc_kd.runtime.files import OutsideRoot, confined


@dataclass
class Chain:
    objective: str
    seed: int
    argv: list[str]  # the `python -m kgc_kd.fit` arguments of this chain
    plan: RunPlan  # its run plan (config, resolved stages, stage keys, run directory)

    @property
    def cfg(self) -> DictConfig:
        return self.plan.cfg

    @property
    def run_dir(self) -> Path:
        return self.plan.run_dir


@dataclass
class Plan:
    name: str
    out_dir: Path  # <run.root>/compare/<name>
    objectives: list[str]  # row labels: presets, then variant labels
    seeds: list[int]
    overrides: list[str]
    base: DictConfig  # the items alone: the settings shared by every chain
    teacher_export: str
    teacher: Optional[Chain] = None  # the teacher.only run when this comparison trains the teacher
    chains: list[Chain] = field(default_factory=list)
    variants: dict[str, dict] = field(default_factory=dict)  # label -> {"preset": name, "items": [key=value]}

    @property
    def grades(self) -> list[str]:
        return self.chains[0].plan.stage_names[1:]


def parse_objectives(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names and not text.strip():
        return []
    available = presets("distill")
    unknown = [n for n in names if n not in available]
    if not names or unknown:
        raise ConfigError(f"--objectives {text!r}: " + (f"unknown objective(s) {', '.join(unknown)}" if unknown
                          else "no objective given") + f"; expected distill presets from {available}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--objectives {text!r}: an objective is listed twice")
    return names


def parse_variants(specs: list[str], objectives: list[str]) -> dict[str, dict]:
    """`LABEL=PRESET key=value ...` -> {LABEL: {"preset": PRESET, "items": [...]}}, checked before anything runs."""
    available = presets("distill")
    out: dict[str, dict] = {}
    for spec in specs:
        words = spec.split()
        head = words[0] if words else ""
        label, _, preset = head.partition("=")
        if not label or not preset:
            raise ConfigError(f"--variant {spec!r}: expected 'LABEL=PRESET key=value ...', e.g. "
                              "'pmd_nomask=pmd stages.0.mask_rate=0'")
        if not re.fullmatch(r"[\w.+-]+", label):
            raise ConfigError(f"--variant {spec!r}: label {label!r}: expected letters, digits, '.', '_', '+' or '-'")
        if label in objectives or label in out:
            raise ConfigError(f"--variant {spec!r}: the row {label!r} is already compared; give the variant its own label")
        if preset not in available:
            raise ConfigError(f"--variant {spec!r}: unknown objective {preset!r}; expected a distill preset from {available}")
        items = words[1:]
        for item in items:
            if "=" not in item:
                raise ConfigError(f"--variant {spec!r}: item {item!r}: expected key=value")
        check_items(items)
        out[label] = {"preset": preset, "items": items}
    return out


def parse_seeds(text: str, base_seed: int) -> list[int]:
    """`N`: the N seeds run.seed, run.seed + 1, ...; `a,b,c`: exactly these seeds."""
    text = text.strip()
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected a number of seeds or a comma-separated list of integers") from None
    if "," not in text and len(seeds) == 1:
        if seeds[0] < 1:
            raise ConfigError(f"--seeds {text}: expected a number of seeds >= 1 or a comma-separated list")
        return [base_seed + i for i in range(seeds[0])]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: expected distinct integer seeds")
    return seeds


def _key(item: str) -> str:
    return item.split("=", 1)[0].strip() if "=" in item else ""


def check_items(overrides: list[str]) -> None:
    """Items a comparison sets itself, per chain, are refused with what to use instead."""
    for item in overrides:
        key = _key(item)
        if key == "distill":
            raise ConfigError(f"argument {item!r}: the objectives set distill= for each chain; list them in --objectives")
        if key == "run.name":
            raise ConfigError(f"argument {item!r}: every chain needs its own run directory (derived from its config); "
                              "name the comparison with --name")


def _check_base(base: DictConfig) -> None:
    if base.teacher.only:
        raise ConfigError("teacher.only=true: a comparison trains student grades; set teacher.only=false "
                          "(the teacher is trained once with the teacher.* settings, or given by --teacher)")
    if base.run.name:
        raise ConfigError(f"run.name={base.run.name!r}: every chain needs its own run directory; name the "
                          "comparison with --name instead")
    for i, st in enumerate(base.stages):
        for k in OBJECTIVE_KEYS:
            if st[k] is not None:
                raise ConfigError(f"stages[{i}].{k} ({st.name}) overrides the objective under comparison; expected "
                                  "each grade to train with the objective's settings: remove it")


def chain_argv(overrides: list[str], objective: str, seed: int, teacher_export: str, group: str,
               variant_items: tuple[str, ...] = ()) -> list[str]:
    """The objective's preset goes after the other items (so a config file cannot undo it) and before the
    explicit distill.* items (which adjust every objective alike), then a variant's own items."""
    distill_items = [o for o in overrides if _key(o).startswith("distill.")]
    rest = [o for o in overrides if o not in distill_items]
    return [*rest, f"distill={objective}", *distill_items, *variant_items, f"run.seed={seed}",
            f"teacher.load={teacher_export}", f"run.wandb_group={group}"]


def _check_baseline(cfg: DictConfig, overrides: list[str]) -> None:
    """`none` must stay CE only: an item for every objective (distill.alpha=...) must not make it distil."""
    d = cfg.distill
    terms = [str(t.name) for t in d.terms]
    if d.alpha or d.beta or d.pkd or any(t != "ce" for t in terms):
        items = [o for o in overrides if _key(o).startswith("distill.")]
        raise ConfigError(f"{' '.join(items) or 'the items'} would make the CE-only baseline `none` distil "
                          f"(alpha={d.alpha}, beta={d.beta}, pkd={d.pkd}, terms={terms}); give such settings to "
                          "one objective with --variant 'LABEL=PRESET key=value ...'")


def default_name(base: DictConfig, objectives: list[str], seeds: list[int]) -> str:
    """`<data>-<config hash>-<objectives>-<N>seeds`, made a name (`config.NAME_PATTERN`): other characters
    become `_`, and a name too long keeps its head and a hash of the whole."""
    data = Path(str(base.data.source).rstrip("/")).name or "data"
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{data}-{config_hash(base)}-{'_'.join(objectives)}-{len(seeds)}seeds")
    if not re.fullmatch(NAME_PATTERN, name):  # too long
        name = f"{name[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return name


def build_plan(objectives: str, seeds: str, overrides: list[str], teacher: Optional[str] = None,
               name: Optional[str] = None, variants: Optional[list[str]] = None) -> Plan:
    check_items(overrides)
    base = load_config(overrides)
    _check_base(base)
    presets_listed = parse_objectives(objectives)
    variant_map = parse_variants(list(variants or []), presets_listed)
    objs = presets_listed + list(variant_map)
    if not objs:
        raise ConfigError("--objectives: no objective given; expected distill presets (or --variant)")
    seed_list = parse_seeds(seeds, int(base.run.seed))
    if base.teacher.load and teacher and str(base.teacher.load) != teacher:
        raise ConfigError(f"--teacher {teacher!r} and teacher.load={base.teacher.load!r} disagree; give one")
    teacher = teacher or (str(base.teacher.load) if base.teacher.load else None)
    name = check_name(name, "--name") if name is not None else default_name(base, objs, seed_list)
    out_dir = Path(base.run.root) / "compare" / name
    try:  # resolved (links followed) and checked to stay inside run.root
        confined(base.run.root, Path("compare") / name, f"--name {name}")
    except OutsideRoot as err:  # compare/ itself a link out of the root
        raise ConfigError(str(err)) from None
    plan = Plan(name=name, out_dir=out_dir, objectives=objs, seeds=seed_list,
                overrides=list(overrides), base=base, teacher_export=teacher or "", variants=variant_map)
    if teacher is None:
        argv = [*overrides, "teacher.only=true", f"run.wandb_group={name}"]
        t_plan = build_run_plan(argv)
        plan.teacher = Chain("teacher", int(t_plan.cfg.run.seed), argv, t_plan)
        plan.teacher_export = str(plan.teacher.run_dir / "stages" / "teacher" / "export")
    for seed in seed_list:  # seed by seed: an interrupted comparison has every objective for its first seeds
        for obj in objs:
            v = variant_map.get(obj, {"preset": obj, "items": []})
            argv = chain_argv(overrides, v["preset"], seed, plan.teacher_export, name, tuple(v["items"]))
            try:
                run = build_run_plan(argv)
            except ConfigError as e:
                raise ConfigError(f"objective {obj!r}: {e}") from None
            if obj == "none":
                _check_baseline(run.cfg, overrides)
            plan.chains.append(Chain(obj, seed, argv, run))
    return plan
