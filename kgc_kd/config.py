"""Typed run configuration: dataclass defaults, merged with YAML from `conf/` and `key=value` overrides.

The dataclass defaults are the embedded default run (bundled UMLS, packaged MiniLM, a CPU-sized
schedule), so `python -m kgc_kd.fit` needs no file at all. Command-line items are applied left to right:
- `config=PATH`      merge a whole YAML file (e.g. conf/experiment/wn18rr_simkgc.yaml);
- `GROUP=NAME`       merge the preset conf/GROUP/NAME.yaml into that group (data, model, optim, trainer,
                     eval, run); for `data`, a name without a preset is taken as the data source (a
                     built-in KG or a directory), so `data=path/to/WN18RR` works;
- `a.b=value`        set one key.
Unknown keys and wrong types are errors that name the key and where it came from.

This module is the schema only: dataclasses, the merge of presets and items, per-field checks, and each
stage's objective spelt out as a term list (`objective_entries`, pure Python). It imports nothing of kgc_kd
and no torch (so `--print-config` and every `--help` answer at once); the registered loss terms check the
term lists when the run plan is built (kgc_kd/chain/plan.py).
"""

from __future__ import annotations

import hashlib
import math
import re
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, make_dataclass, replace
from pathlib import Path
from typing import Any, Optional, get_type_hints

from omegaconf import MISSING, Container, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration problem, with the key and its origin in the message."""


# Every name that becomes a path component under a root (stage names, run.name, a compare's --name, sweep and
# study names): letters, digits, `_`, `.` and `-`, at most 100 characters, not `.` or `..`. One pattern, checked
# here and nowhere else, so a name can never climb out of (or name a file beside) its root.
NAME_PATTERN = r"[A-Za-z0-9_.-]{1,100}"


def check_name(value: Any, key: str) -> str:
    """`value` as a name that is a single path component under its root; ConfigError naming `key` otherwise."""
    name = str(value)
    if not re.fullmatch(NAME_PATTERN, name) or name in (".", ".."):
        raise ConfigError(f"{key}={name!r}: expected a name of letters, digits, '_', '.' and '-' (at most 100, "
                          "not '.' or '..'): it names a directory under its root and must stay inside it")
    return name


@dataclass
class SyntheticCfg:
    num_entities: int = 30
    num_relations: int = 3
    num_triples: int = 90
    seed: int = 0


@dataclass
class DataCfg:
    source: str = "umls"  # built-in (umls, nations, kinships), "synthetic", or a KG-BERT / SimKGC directory
    max_length: int = 50  # tokens of the hr pair and of an entity (SimKGC: 50)
    batch_size: int = 128
    eval_batch_size: int = 256
    num_workers: Optional[int] = None  # None: auto, 0 without CUDA, min(4, CPU cores) on CUDA (data/datamodule.py resolve_loader)
    pin_memory: Optional[bool] = None  # None: auto, True on a CUDA run (page-locked batches, asynchronous copies)
    dedup_entities: bool = True  # encode each distinct entity of a batch once (exact at eval; shares dropout)
    use_long_text: bool = True  # KG-BERT dirs: entity2textlong as the description when present
    name_separator: Optional[str] = None  # KG-BERT WN18RR packs "lemma, definition": set ", "
    drop_unknown: bool = False  # skip (and count) triples whose entity or relation has no text line; else an error
    # valid/test triples that also occur in train (a leak): always warned with counts and the first file:line;
    # true: dropped from valid/test (counted in the report's data_checks)
    drop_overlap: bool = False
    link_graph: bool = False  # SimKGC's neighbour text: short descriptions get 10 train neighbours' names
    synthetic: SyntheticCfg = field(default_factory=SyntheticCfg)


@dataclass
class ModelCfg:
    plm: str = "minilm"  # packaged all-MiniLM-L6-v2, or a local Hugging Face encoder directory
    shared_encoder: bool = False
    pooling: str = "mean"
    temperature: float = 0.05
    learn_temperature: bool = True
    margin: float = 0.02
    self_negative: bool = True
    pre_batch: int = 0  # k previous batches as extra negatives (SimKGC FB15k-237: 2)
    pre_batch_weight: float = 0.5


@dataclass
class OptimCfg:
    lr: float = 1e-4
    weight_decay: float = 1e-4
    no_decay_norm_bias: bool = False  # SimKGC decays every parameter, LayerNorm/bias and temperature included
    warmup_steps: int = 400  # SimKGC: min(400, total_steps // 10)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # None: every step without CUDA (free there), trainer.log_every_n_steps on CUDA (lit/base.py check_finite)
    check_finite_every_n_steps: Optional[int] = None


@dataclass
class TrainerCfg:
    accelerator: str = "auto"
    devices: Any = 1  # multi-GPU is opt-in: trainer=ddp (in-batch negatives span the global batch)
    strategy: str = "auto"
    num_nodes: int = 1
    precision: Optional[str] = None  # None: bf16-mixed on a CUDA device with bf16, else 32-true (kgc_kd/runtime/precision.py)
    max_epochs: int = 1  # per stage unless the stage (or teacher.epochs) says otherwise
    max_steps: int = -1
    gradient_clip_val: Optional[float] = 10.0  # 0 or null: no clipping
    accumulate_grad_batches: int = 1
    check_val_every_n_epoch: int = 1
    val_check_interval: Any = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    log_every_n_steps: int = 10
    num_sanity_val_steps: int = 0
    enable_progress_bar: bool = True
    deterministic: bool = False


@dataclass
class EvalCfg:
    chunk_size: int = 256  # queries scored at most at once: memory O(chunk x entities)
    # GB (10^9 bytes) of ranking scratch: fewer queries per chunk (and re-rank heads per search) where
    # chunk_size would need more; null: chunk_size alone (kgc_kd/eval/memory_plan.py)
    memory_budget_gb: Optional[float] = 8.0
    rerank_weight: float = 0.0  # SimKGC WN18RR: 0.05
    rerank_hops: int = 0  # SimKGC WN18RR: 5, others 2
    topk: int = 10  # top-k predictions saved per test query
    save_predictions: bool = True
    untrained_baseline: bool = True  # test the untouched PLM first, so the gain from training is on record
    val_max_queries: Optional[int] = None  # validation ranks a fixed seeded subset of this many queries (test: all)


@dataclass
class TeacherCfg:
    only: bool = False  # train and evaluate the teacher alone (the stages are ignored)
    load: Optional[str] = None  # an exported stage directory (query/ entity/ biencoder.json): skip training
    epochs: Optional[int] = 2  # None: trainer.max_epochs (the embedded default chain must fit in 20 CPU minutes)
    lr: Optional[float] = None  # default: optim.lr


@dataclass
class ObjectiveCfg:
    """A stage's objective: the distill group's type (presets: conf/distill), and every key of it is also a
    stage key (`stages.N.alpha`, ..., None there: the distill group's value). The keys are declared here
    only. Two spellings: a term list, or PMD's alpha/beta shorthand, which `objective_entries` turns into a
    term list (pure Python; the registered terms check the entries in kgc_kd/chain/stage_spec.py)."""

    alpha: float = 0.1  # shorthand: L_SCORE weight
    beta: float = 0.1  # shorthand: L_MGFD weight
    pkd: float = 0.0  # shorthand: patient-KD weight (baseline)
    score_loss: Optional[str] = None  # shorthand: the score term's loss, mse (default, PMD) | kl (logit KD)
    kd_temperature: Optional[float] = None  # shorthand: the score term's temperature (default 1)
    mgfd: Optional[str] = None  # shorthand: pmd (default: PMD's masked-input features) | generation (the mgd term)
    generator: Optional[str] = None  # shorthand, mgfd=generation: the mgd term's generator (conv)
    # non-empty: the objective is this list of {name, weight, <the term's own parameters>}; alpha/beta unused.
    # Entries are checked by the registered term (kgc_kd/distill/registry.py resolve_term), not by a schema
    # here, so a new term brings its own parameters: docs/configuration.md lists each term's.
    terms: list[Any] = field(default_factory=list)


DistillCfg = ObjectiveCfg  # the distill group
OBJECTIVE_KEYS = tuple(f.name for f in fields(ObjectiveCfg))
WEIGHT_KEYS = ("alpha", "beta", "pkd")
# The shorthand's own keys: with a term list they go on the term (the message says how).
SHORTHAND_KEYS = {"score_loss": "{name: score, loss: %s}", "kd_temperature": "{name: score, temperature: %s}",
                  "mgfd": "{name: mgd} (generation) or {name: mgfd} (pmd); got %s",
                  "generator": "{name: mgd, generator: %s}"}


@dataclass
class _StageFields:
    name: str = MISSING
    layers: int = MISSING
    layer_map: Optional[list[int]] = None  # default: uniform over the init source's layers
    init: str = "teacher"  # teacher (its fine-tuned weights) | plm (the original PLM, as PMD's code)
    mask_rate: float = 0.0  # PMD grades: 0.2, 0.1, 0.05, 0.0
    shared_encoder: Optional[bool] = None  # one encoder for queries and entities; None: as the teacher
    prune_vocab: bool = False  # keep only the word-pieces the KG's texts use (lossless on this KG)
    pre_batch: Optional[int] = None  # pre-batch negatives of this stage; None: model.pre_batch (as the teacher)
    self_negative: Optional[bool] = None  # the head as a negative; None: model.self_negative (as the teacher)
    epochs: Optional[int] = None  # default: trainer.max_epochs
    lr: Optional[float] = None  # default: optim.lr


# A stage: its own fields, then every objective key of ObjectiveCfg, optional (None: the distill group's).
_objective_hints = get_type_hints(ObjectiveCfg)
StageCfg = make_dataclass(
    "StageCfg", [(k, Optional[_objective_hints[k]], field(default=None)) for k in OBJECTIVE_KEYS],
    bases=(_StageFields,))
StageCfg.__module__ = __name__
StageCfg.__doc__ = "A student stage: its own fields and, optionally, any objective key (ObjectiveCfg) for itself."


def _default_stages() -> list[StageCfg]:
    """The embedded default chain on the 6-layer MiniLM: pre-distillation 6, then grades 4 and 2. Every
    student keeps only the KG's word-pieces (lossless), and the grades share one encoder between queries
    and entities: parameters fall to a sixth of the teacher's (see README, "Smaller students").
    No input masking: on the built-in KGs' 1-4-word names PMD's 20%/10% masks cost the pre-distilled
    student 0.027 test MRR over 3 seeds (docs/results.md, "Objectives over seeds"); PMD's schedule for
    long descriptions stays in conf/experiment/wn18rr_pmd.yaml and fb15k237_pmd.yaml."""
    return [StageCfg(name="pmd6", layers=6, mask_rate=0.0, prune_vocab=True),
            StageCfg(name="pmd4", layers=4, mask_rate=0.0, prune_vocab=True, shared_encoder=True),
            StageCfg(name="pmd2", layers=2, mask_rate=0.0, prune_vocab=True, shared_encoder=True)]


@dataclass
class RunCfg:
    name: Optional[str] = None  # default: <data>-<hash of the config>, so a rerun finds its directory
    root: str = "runs"
    seed: int = 42
    logger: str = "wandb"  # wandb (+ csv; offline without an API key) | csv | none
    wandb_project: str = "kgc-kd"
    wandb_entity: Optional[str] = None
    wandb_log_model: bool = False  # each stage's export directory as a W&B model artifact (aliases: stage, run name)
    wandb_group: Optional[str] = None  # W&B group of the stage runs (default: the run name); not part of the hash
    # more W&B tags on every run of the chain (a sweep trial adds its study and trial number); not part of the hash
    wandb_tags: list[str] = field(default_factory=list)
    # seconds a run waits for a stage another run is training (its lock) before it gives up; None: as long as it takes
    lock_timeout_s: Optional[float] = None
    checkpoint_every_n_steps: int = 1000  # also write the resumable last.ckpt every N training steps (0: epoch ends only)


@dataclass
class Config:
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    trainer: TrainerCfg = field(default_factory=TrainerCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    teacher: TeacherCfg = field(default_factory=TeacherCfg)
    distill: DistillCfg = field(default_factory=DistillCfg)
    stages: list[StageCfg] = field(default_factory=_default_stages)
    run: RunCfg = field(default_factory=RunCfg)


PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
GROUPS = ("data", "model", "optim", "trainer", "eval", "teacher", "distill", "run")
EXPERIMENT = "experiment"  # `experiment=NAME`: the whole recipe conf/experiment/NAME.yaml, as config= would merge it


def conf_dir() -> Path:
    """The presets: $KGC_KD_CONF, else conf/ in the working directory, else the checkout's conf/ (an editable
    install: pyproject.toml beside the package), else the copy installed with the package (kgc_kd/conf/)."""
    env = os.environ.get("KGC_KD_CONF")
    package = Path(__file__).resolve().parent
    checkout = [package.parent / "conf"] if (package.parent / "pyproject.toml").is_file() else []
    for cand in ([Path(env)] if env else []) + [Path.cwd() / "conf", *checkout, package / "conf"]:
        if cand.is_dir():
            return cand
    return package / "conf"


def presets(group: str) -> list[str]:
    d = conf_dir() / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _merge(cfg: DictConfig, other: Any, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, other)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{origin}: {'key ' + repr(key) + ': ' if key else ''}{msg}") from None


def _merge_yaml(cfg: DictConfig, loaded: DictConfig, prefix: str, origin: str) -> DictConfig:
    """Merge, keeping the file's `???` (required) values: a plain merge would let the default win, so a
    preset that asks for data.source would silently train on the default data instead."""
    cfg = _merge(cfg, OmegaConf.create({prefix: loaded}) if prefix else loaded, origin)
    plain = OmegaConf.to_container(loaded, resolve=False)

    def walk(node: Any, path: list[str]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [str(k)])
        elif node == "???":
            OmegaConf.update(cfg, ".".join(path), "???", merge=False)

    walk(plain, [prefix] if prefix else [])
    return cfg


def _merge_file(cfg: DictConfig, loaded: DictConfig, prefix: str, origin: str) -> DictConfig:
    """A preset or config file merged in; an objective it gives (the distill group) replaces the one before
    instead of merging into it: an objective is one choice (a term list and the alpha/beta form do not mix),
    so `experiment=wn18rr_pmd distill=mgd` trains MGD's objective on PMD's recipe, whichever of the two
    comes last winning. Single keys (`distill.alpha=0.2`) still merge."""
    if prefix == "distill" or (not prefix and "distill" in loaded):
        cfg.distill = ObjectiveCfg()
    return _merge_yaml(cfg, loaded, prefix, origin)


def _load_yaml(path: Path, origin: str) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"{origin}: no such file {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError carries the line
        raise ConfigError(f"{origin}: cannot parse {path}: {err}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{origin}: {path} must hold a mapping of config keys")
    return loaded


def load_config(argv: list[str] | None = None) -> DictConfig:
    """The validated config of the items `argv` (the module docstring lists their forms)."""
    return load(argv)[0]


def load(argv: list[str] | None = None) -> tuple[DictConfig, list[list[dict[str, Any]]]]:
    """The validated config of the items `argv` and every student stage's objective as a term list (the
    alpha/beta shorthand spelt out, `objective_entries`): what the run plan (kgc_kd/chain/plan.py) starts from."""
    cfg = OmegaConf.structured(Config)
    for arg in argv or []:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r}: expected key=value, config=PATH or GROUP=PRESET")
        key, value = arg.split("=", 1)
        key = key.strip()
        if key.startswith("+") or key.startswith("~"):
            raise ConfigError(f"argument {arg!r}: Hydra's +/~ prefixes are not supported; use plain key=value")
        if key == "config":
            cfg = _merge_file(cfg, _load_yaml(Path(value), f"config={value}"), "", f"config={value}")
        elif key in GROUPS or key == EXPERIMENT:
            # Only a bare name can be a preset: a path (data=/x/WN18RR) must never resolve outside conf/.
            preset = conf_dir() / key / f"{value}.yaml"
            if re.fullmatch(r"[\w.-]+", value) and ".." not in value and preset.is_file():
                prefix = "" if key == EXPERIMENT else key  # a recipe is a whole config file, like config=
                cfg = _merge_file(cfg, _load_yaml(preset, arg), prefix, f"{arg} ({preset})")
            elif key == "data":
                cfg = _merge(cfg, {"data": {"source": value}}, arg)
            else:
                raise ConfigError(f"{arg}: no preset {value!r} in {conf_dir() / key}; available: {presets(key)}")
        elif re.search(r"\.\d+(\.|$)|\[", key):  # into a list: stages.1.mask_rate=0.1 or stages[1].mask_rate=0.1
            try:
                parsed = OmegaConf.from_dotlist([f"v={value}"])["v"]
            except Exception:
                parsed = value
            try:
                if OmegaConf.select(cfg, key, throw_on_missing=False, default="__absent__") == "__absent__":
                    raise ConfigError(f"argument {arg!r}: no key {key!r} (check the list index)")
                OmegaConf.update(cfg, key, parsed, merge=True)
            except OmegaConfBaseException as err:
                raise ConfigError(f"argument {arg!r}: {str(err).splitlines()[0]}") from None
        else:
            try:
                override = OmegaConf.from_dotlist([arg])
            except Exception:  # not valid YAML (e.g. data.name_separator=", "): take the text literally
                override = OmegaConf.create({})
                OmegaConf.update(override, key, value, force_add=True)
            cfg = _merge(cfg, override, f"argument {arg!r}")
    return cfg, validate(cfg)


# ---- the range of every numeric key, written once ------------------------------------------------------------
# `validate` checks each key against its entry before anything is loaded or written; docs/configuration.md's
# table of ranges is `ranges_table()` (a test compares them), and a test asserts every numeric field has an entry.
# Keys `stages.N.x` apply to every stage; an objective key (`distill.x`) applies to `stages.N.x` too.
def _bound(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _expected(body: str, why: str = "", also: tuple[tuple[Any, str], ...] = (), null: str | None = None) -> str:
    """`body` with its notes as the messages and the docs' table write them: `>= 0 (or null: auto)`."""
    notes = ([why] if why else []) + [f"or {a}: {meaning}" for a, meaning in also]
    notes += [f"or null: {null}"] if null is not None else []
    return body + (f" ({'; '.join(notes)})" if notes else "")


@dataclass(frozen=True)
class Range:
    """Numbers from `ge` (or above `gt`) to `le` (or below `lt`), finite; `kind` (int or float), for the keys typed
    Any, requires that type; `also`: other values accepted and what they mean; `null`: null accepted, meaning this;
    `what` names the value before its bounds ("a rate"), `why` comes after them."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    kind: type | None = None
    what: str = ""
    why: str = ""
    also: tuple[tuple[Any, str], ...] = ()
    null: str | None = None

    def accepts(self, v: Any) -> bool:
        if v is None:
            return self.null is not None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if any(v == a and type(v) is type(a) for a, _ in self.also):
            return True
        if not math.isfinite(v) or (self.kind is not None and type(v) is not self.kind):
            return False
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def bounds(self) -> str:
        low = (f"[{_bound(self.ge)}" if self.ge is not None else f"({_bound(self.gt)}" if self.gt is not None
               else None)
        high = (f"{_bound(self.le)}]" if self.le is not None else f"{_bound(self.lt)})" if self.lt is not None
                else None)
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>=' if self.ge is not None else '>'} {low[1:]}"
        return f"{'<=' if self.le is not None else '<'} {high[:-1]}" if high else "a finite number"

    def expected(self) -> str:
        return _expected(f"{self.what} {self.bounds()}".strip(), self.why, self.also, self.null)


@dataclass(frozen=True)
class Rule:
    """Values `test` accepts (never None: `null` says whether null is, and what it means), described by `text`."""

    test: Callable[[Any], bool]
    text: str
    null: str | None = None

    def accepts(self, v: Any) -> bool:
        return self.null is not None if v is None else bool(self.test(v))

    def expected(self) -> str:
        return _expected(self.text, null=self.null)


@dataclass(frozen=True)
class Either:
    """A value one of `options` accepts (theirs without null), or null when `null` says what it means."""

    options: tuple[Range | Rule, ...]
    null: str | None = None
    why: str = ""

    def accepts(self, v: Any) -> bool:
        return self.null is not None if v is None else any(o.accepts(v) for o in self.options)

    def expected(self) -> str:
        return _expected(", or ".join(o.expected() for o in self.options), self.why, null=self.null)


@dataclass(frozen=True)
class Each:
    """A list (of `count` values when given) whose every value `item` accepts."""

    item: Range
    count: int | None = None
    what: str = "values"
    why: str = ""
    null: str | None = None

    def accepts(self, v: Any) -> bool:
        if v is None:
            return self.null is not None
        if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
            return False
        return (self.count is None or len(v) == self.count) and all(v_ is not None and self.item.accepts(v_)
                                                                     for v_ in v)

    def expected(self) -> str:
        n = f"{self.count} " if self.count is not None else ""
        return _expected(f"{n}{self.what}, each {self.item.bounds()}", self.why, null=self.null)


def _devices(v: Any) -> bool:
    """What Lightning's `devices` takes: a count >= 1, -1 (all), "auto", or distinct indices (a list or "0,1")."""
    if isinstance(v, str):
        s = v.strip()
        if s in ("auto", "-1"):
            return True
        if s.isdigit():
            return int(s) >= 1
        v = [p.strip() for p in s.split(",") if p.strip()]
        if not v or not all(p.isdigit() for p in v):
            return False
        v = [int(p) for p in v]
    if isinstance(v, Sequence):
        return (len(v) >= 1 and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)
                and len(set(v)) == len(v))
    return isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1)


def _duration(v: Any) -> bool:
    """Lightning's time-based `val_check_interval`: 'DD:HH:MM:SS', longer than 0 s."""
    m = re.fullmatch(r"(\d+):(\d+):(\d+):(\d+)", v.strip()) if isinstance(v, str) else None
    return bool(m) and any(int(g) for g in m.groups())


SEEDS = Range(ge=0, le=2**32 - 1, what="a seed", why="what Lightning's seed_everything accepts")
BATCH_LIMIT = Either((Range(ge=0, kind=int, what="a number of batches"),
                      Range(ge=0, le=1, kind=float, what="a fraction")), null="every batch")
WEIGHT = Range(ge=0, le=1, what="a weight")

RANGES: dict[str, Range | Rule | Either | Each] = {
    "data.max_length": Range(ge=5, why="tokens; at most the PLM's max_position_embeddings, checked when it is loaded"),
    "data.batch_size": Range(ge=2, why="in-batch negatives"),
    "data.eval_batch_size": Range(ge=1),
    "data.num_workers": Range(ge=0, null="auto"),
    "data.synthetic.num_entities": Range(ge=2),
    "data.synthetic.num_relations": Range(ge=1),
    "data.synthetic.num_triples": Range(ge=10, why="a valid and a test triple at least"),
    "data.synthetic.seed": SEEDS,
    "model.temperature": Range(gt=0),
    "model.margin": Range(ge=0),
    "model.pre_batch": Range(ge=0, why="0: none"),
    "model.pre_batch_weight": Range(ge=0),
    "optim.lr": Range(gt=0),
    "optim.weight_decay": Range(ge=0),
    "optim.warmup_steps": Range(ge=0),
    "optim.betas": Each(Range(ge=0, lt=1), count=2),
    "optim.eps": Range(gt=0),
    "optim.check_finite_every_n_steps": Range(ge=1, null="auto"),
    "trainer.devices": Either((Rule(_devices, "a number of devices >= 1, -1 (all), 'auto', or distinct device indices "
                                              "([0, 1] or '0,1')"),)),
    "trainer.num_nodes": Range(ge=1),
    "trainer.max_epochs": Range(ge=1, also=((-1, "no epoch limit, with trainer.max_steps >= 1"),)),
    "trainer.max_steps": Range(ge=1, also=((-1, "no step limit"),)),
    "trainer.gradient_clip_val": Range(ge=0, why="0: no clipping", null="as 0"),
    "trainer.accumulate_grad_batches": Range(ge=1),
    "trainer.check_val_every_n_epoch": Range(ge=1),
    "trainer.val_check_interval": Either((Range(ge=1, kind=int, what="a number of training batches"),
                                          Range(gt=0, le=1, kind=float, what="a fraction of the epoch"),
                                          Rule(_duration, "a duration 'DD:HH:MM:SS'")), null="at each epoch's end"),
    "trainer.limit_train_batches": BATCH_LIMIT,
    "trainer.limit_val_batches": BATCH_LIMIT,
    "trainer.log_every_n_steps": Range(ge=1),
    "trainer.num_sanity_val_steps": Range(ge=0, also=((-1, "every validation batch"),)),
    "eval.chunk_size": Range(ge=1),
    "eval.memory_budget_gb": Range(gt=0, why="GB", null="no budget"),
    "eval.rerank_weight": Range(ge=0),
    "eval.rerank_hops": Range(ge=0),
    "eval.topk": Range(ge=1),
    "eval.val_max_queries": Range(ge=1, why="queries", null="all"),
    "teacher.epochs": Range(ge=1, null="trainer.max_epochs"),
    "teacher.lr": Range(gt=0, null="optim.lr"),
    "distill.alpha": WEIGHT,
    "distill.beta": WEIGHT,
    "distill.pkd": WEIGHT,
    "distill.kd_temperature": Range(gt=0, null="1"),
    "stages.N.layers": Range(ge=1, why="at most its source's layers, checked when the run is planned"),
    "stages.N.layer_map": Each(Range(ge=0), what="layer indices", why="one per layer; below its source's layers, "
                                                                      "checked when the run is planned",
                               null="spread evenly over its source's layers"),
    "stages.N.mask_rate": Range(ge=0, lt=1, what="a rate"),
    "stages.N.pre_batch": Range(ge=0, null="model.pre_batch"),
    "stages.N.epochs": Range(ge=1, null="trainer.max_epochs"),
    "stages.N.lr": Range(gt=0, null="optim.lr"),
    "run.seed": SEEDS,
    "run.lock_timeout_s": Range(gt=0, why="seconds", null="wait as long as it takes"),
    "run.checkpoint_every_n_steps": Range(ge=0, why="0: at epoch ends only"),
}


def _shown(v: Any) -> str:
    """A value as a message shows it: a list as a list, a text quoted."""
    if isinstance(v, Container):
        v = OmegaConf.to_container(v)
    return repr(v) if isinstance(v, str) else str(list(v) if isinstance(v, tuple) else v)


def check_value(key: str, value: Any, spec: Range | Rule | Either | Each) -> None:
    """ConfigError `key=value: expected ...` unless `spec` accepts `value`."""
    if not spec.accepts(value):
        raise ConfigError(f"{key}={_shown(value)}: expected {spec.expected()}")


def check_ranges(cfg: DictConfig) -> None:
    """Every numeric key against its range (`RANGES`), in the table's order: the first out of range is the error.
    A stage's objective key is checked where the stage gives it (null: the distill group's, checked itself)."""
    for key, spec in RANGES.items():
        group, name = key.rsplit(".", 1)
        if group == "stages.N":
            for i, st in enumerate(cfg.stages):
                check_value(f"stages[{i}].{name}", st[name], spec)
            continue
        check_value(key, OmegaConf.select(cfg, key), spec)
        if group == "distill":  # a stage's own value; null there: the distill group's
            for i, st in enumerate(cfg.stages):
                if st[name] is not None:
                    check_value(f"stages[{i}].{name}", st[name], replace(spec, null=key))
    if cfg.trainer.max_epochs == -1 and cfg.trainer.max_steps == -1:
        raise ConfigError("trainer.max_epochs=-1 (no epoch limit) with trainer.max_steps=-1 (no step limit): a stage "
                          "would never end; expected trainer.max_epochs >= 1 or trainer.max_steps >= 1")


def ranges_table() -> str:
    """docs/configuration.md's table of ranges (a test checks the page holds it)."""
    rows = ["| key | accepted values |", "|---|---|"]
    for key, spec in RANGES.items():
        group, name = key.rsplit(".", 1)
        shown = f"`{key}`, `stages.N.{name}`" if group == "distill" else f"`{key}`"
        rows.append(f"| {shown} | {spec.expected()} |")
    return "\n".join(rows)


def validate(cfg: DictConfig) -> list[list[dict[str, Any]]]:
    """Per-field checks (ConfigError names the key); returns every student stage's objective as a term list."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"required value not set: {', '.join(missing)} (give it as key=value, e.g. {missing[0]}=...)")
    if cfg.run.name is not None and str(cfg.run.name) != "":  # "" as null: the derived name
        check_name(cfg.run.name, "run.name")
    for i, st in enumerate(cfg.stages):
        check_name(st.name, f"stages[{i}].name")
    check_ranges(cfg)
    checks = [
        (cfg.model.pooling in ("mean", "cls"), f"model.pooling={cfg.model.pooling!r}: expected mean or cls"),
        (cfg.run.logger in ("wandb", "csv", "none"), f"run.logger={cfg.run.logger!r}: expected wandb, csv or none"),
        (cfg.trainer.precision is None or cfg.trainer.precision in PRECISIONS, f"trainer.precision={cfg.trainer.precision!r}: expected one of {PRECISIONS}"),
    ]
    if not cfg.teacher.only and len(cfg.stages) == 0:
        checks.append((False, "stages: the list has no stages; a chain needs at least one student stage "
                              "(to train and evaluate the teacher alone, set teacher.only=true)"))
    names = [s.name for s in cfg.stages]
    if len(set(names)) != len(names) or "teacher" in names:
        checks.append((False, f"stages: names must be unique and not 'teacher', got {names}"))
    for i, st in enumerate(cfg.stages):
        checks += [
            (st.init in ("teacher", "plm"), f"stages[{i}].init={st.init!r}: expected teacher or plm"),
            (st.layer_map is None or len(st.layer_map) == st.layers,
             f"stages[{i}].layer_map={list(st.layer_map or [])}: expected {st.layers} entries, one per student layer"),
        ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    # every stage's objective as a term list, once, here (the registered terms check the entries: the run plan)
    objectives = [objective_entries(cfg, i) for i in range(len(cfg.stages))]
    if cfg.teacher.only:  # the resolved config (written next to the run) shows what runs
        cfg.stages = []
        objectives = []
    return objectives


# ---- a stage's objective: the distill group with the stage's overrides, as a term list ----------------------
def objective_settings(cfg: DictConfig, index: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Stage `index`'s objective keys (the distill group with the stage's overrides) and, per key, the config
    key it came from (for messages)."""
    st, group = to_plain(cfg.stages[index]), to_plain(cfg.distill)
    settings, origin = {}, {}
    for k in OBJECTIVE_KEYS:
        own = st.get(k) is not None
        settings[k] = st[k] if own else group.get(k)
        origin[k] = f"stages[{index}].{k}" if own else f"distill.{k}"
    return settings, origin


def shorthand_entries(settings: dict[str, Any], origin: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The term list ({name, weight, <params>} each, unchecked by the registry) of one stage's objective keys:
    the term list as given, or PMD's shorthand L = (1 - alpha - beta - pkd) ce + alpha score + beta mgfd +
    pkd pkd. Keys missing from `settings` (or None) take ObjectiveCfg's defaults. A ValueError names what is
    wrong, with the config key from `origin`."""
    s = {**asdict(ObjectiveCfg()), **{k: v for k, v in settings.items() if v is not None}}
    where = {k: (origin or {}).get(k, f"distill.{k}") for k in OBJECTIVE_KEYS}
    if s["terms"]:
        for key, spelling in SHORTHAND_KEYS.items():
            if s.get(key) is not None:
                raise ValueError(f"{where[key]}={s[key]!r} belongs to the alpha/beta form; with a term list give it on "
                                 f"the term: {spelling % s[key]}")
        return [dict(t) for t in s["terms"]]
    a, b, p = float(s["alpha"]), float(s["beta"]), float(s["pkd"])
    if a + b + p > 1.0 + 1e-9:
        raise ValueError(f"{where['alpha']} + {where['beta']} + {where['pkd']} = {a:g} + {b:g} + {p:g} > 1; "
                         "expected at most 1 (CE keeps 1 minus their sum)")
    entries: list[dict[str, Any]] = [{"name": "ce", "weight": max(0.0, 1.0 - a - b - p)}]
    if a > 0:
        entries.append({"name": "score", "weight": a, "loss": s["score_loss"], "temperature": s["kd_temperature"]})
    mode = s["mgfd"] or "pmd"
    if mode not in ("pmd", "generation"):
        raise ValueError(f"{where['mgfd']}={mode!r}: expected pmd or generation")
    if s["generator"] is not None and mode != "generation":
        raise ValueError(f"{where['generator']}={s['generator']!r} applies to mgfd=generation only")
    if b > 0:
        entries.append({"name": "mgfd", "weight": b} if mode == "pmd"
                       else {"name": "mgd", "weight": b, "generator": s["generator"]})
    if p > 0:
        entries.append({"name": "pkd", "weight": p})
    return entries


def objective_error(cfg: DictConfig, index: int, err: Exception) -> ConfigError:
    """A problem with stage `index`'s objective, prefixed with where its objective comes from."""
    settings, origin = objective_settings(cfg, index)
    prefix = (f"{origin['terms']} (used by stages[{index}])" if settings["terms"]
              else f"stages[{index}] ({cfg.stages[index].name})")
    return ConfigError(f"{prefix}: {err}")


def objective_entries(cfg: DictConfig, index: int) -> list[dict[str, Any]]:
    """Stage `index`'s objective as a term list (the alpha/beta shorthand spelt out); ConfigError names the key."""
    st = cfg.stages[index]
    settings, origin = objective_settings(cfg, index)
    try:
        if settings["terms"]:
            own = [k for k in WEIGHT_KEYS if st[k] is not None]
            if own:
                raise ValueError(f"stages[{index}].{own[0]}={st[own[0]]} weighs the alpha/beta form, but this stage's "
                                 "objective is a term list: give the weight on the term instead")
        return shorthand_entries(settings, origin)
    except ValueError as err:
        raise objective_error(cfg, index, err) from None


def to_plain(cfg: DictConfig) -> dict:
    """Plain containers only: an OmegaConf object in a checkpoint breaks torch's weights_only loading."""
    return OmegaConf.to_container(cfg, resolve=True)


def config_hash(cfg: DictConfig) -> str:
    plain = to_plain(cfg)
    plain.get("run", {}).pop("name", None)
    plain.get("run", {}).pop("wandb_group", None)  # where W&B files a run, not what it trains
    plain.get("run", {}).pop("wandb_tags", None)  # how W&B labels it, not what it trains
    plain.get("run", {}).pop("checkpoint_every_n_steps", None)  # how often it saves, not what it trains
    plain.get("run", {}).pop("lock_timeout_s", None)  # how long it waits for another run's stage, not what it trains
    return hashlib.sha1(OmegaConf.to_yaml(OmegaConf.create(plain)).encode()).hexdigest()[:8]


def run_name(cfg: DictConfig) -> str:
    if cfg.run.name:
        return str(cfg.run.name)
    data = Path(str(cfg.data.source).rstrip("/")).name or "data"
    return f"{data}-{config_hash(cfg)}"
