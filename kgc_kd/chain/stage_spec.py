"""A student stage's resolved spec: the one place where a stage's objective meets the registered loss terms.

`resolve_stage(cfg, i)` turns stage i of a loaded config into a plain dict: its terms (the config's term
list, `kgc_kd.config.objective_entries`, each entry checked and completed by its registered term,
distill/registry.py), the input masking, the negatives, the stage it learns from, its layers and layer
map. The run plan (chain/plan.py) resolves every stage once; preflight checks the resolved terms against
the encoders' shapes (`check_dims`); the driver hands the plan's spec to the `DistillModule`, and
report.json records it per stage.

Two spellings of an objective (config.py turns the second into the first, at load):
- a term list (`distill.terms` or `stages.N.terms`): `[{name: ce}, {name: score, weight: 0.1, loss: kl}]`,
  each term's parameters beside its name;
- PMD's shorthand (no term list): L = (1 - alpha - beta - pkd) ce + alpha score + beta mgfd + pkd pkd,
  whose score term takes `score_loss` / `kd_temperature` and whose mgfd term is PMD's (`mgfd: pmd`) or MGD's
  (`mgfd: generation` -> the `mgd` term, `generator` its generator). These four keys belong to the
  shorthand: with a term list they are an error that says where they go now.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kgc_kd.config import objective_entries, objective_error, shorthand_entries, to_plain
from kgc_kd.data.fingerprint import kg_fingerprint
from kgc_kd.data.kg import KG
from kgc_kd.distill.registry import Dims, resolve_term, term_class
from kgc_kd.models.plm import resolve_plm
from kgc_kd.runtime.fingerprint import tree_digest
from kgc_kd.serve.digest import DERIVED_FILES


def resolve_terms(entries: list[dict[str, Any]], dims: Dims | None = None) -> list[dict[str, Any]]:
    """Each entry checked and completed by its registered term ({name, weight, params}); ValueError names
    what is wrong."""
    terms = [resolve_term(t, dims) for t in entries]
    names = [t["name"] for t in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"a loss term appears twice in {names}")
    return terms


def objective_terms(settings: dict[str, Any], dims: Dims | None = None,
                    origin: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The resolved term list ({name, weight, params} each) of one stage's objective keys (alpha/beta/...,
    or `terms`); keys missing from `settings` take ObjectiveCfg's defaults. A ValueError names what is wrong."""
    return resolve_terms(shorthand_entries(settings, origin), dims)


def stage_negatives(cfg: DictConfig, index: int | None) -> dict[str, Any]:
    """The negatives stage `index` trains with (None: the teacher): the teacher's (model.*) unless the stage
    overrides them, so students see the objective their teacher was trained on."""
    st = cfg.stages[index] if index is not None else None
    pick = lambda key: cfg.model[key] if st is None or st[key] is None else st[key]  # noqa: E731
    return {"in_batch": True, "pre_batch": int(pick("pre_batch")), "pre_batch_weight": float(cfg.model.pre_batch_weight),
            "self_negative": bool(pick("self_negative"))}


def resolve_stage(cfg: DictConfig, index: int, entries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Stage `index` as it trains: a plain dict (report.json holds it). `entries`: its objective as a term list
    (as `kgc_kd.config.load` spelt it; None: spelt here). ConfigError names the key at fault."""
    st = cfg.stages[index]
    entries = objective_entries(cfg, index) if entries is None else entries
    try:
        terms = resolve_terms(entries)
    except ValueError as err:
        raise objective_error(cfg, index, err) from None
    return {
        "name": str(st.name), "layers": int(st.layers), "teacher": "teacher" if index == 0 else str(cfg.stages[index - 1].name),
        "init": str(st.init), "layer_map": None if st.layer_map is None else [int(i) for i in st.layer_map],
        "mask_rate": float(st.mask_rate), "masks_inputs": any(term_class(t["name"]).masks_inputs for t in terms),
        "shared_encoder": st.shared_encoder, "prune_vocab": bool(st.prune_vocab), "epochs": st.epochs, "lr": st.lr,
        "negatives": stage_negatives(cfg, index), "terms": terms,
    }


def check_dims(cfg: DictConfig, index: int, spec: dict[str, Any], dims: Dims) -> None:
    """Stage `index`'s resolved terms checked against the encoders' shapes (preflight); ConfigError names the key."""
    try:
        for t in spec["terms"]:
            term_class(t["name"]).check(dict(t["params"]), dims)
    except ValueError as err:
        raise objective_error(cfg, index, err) from None


# What does not change a stage's outputs, so not its key: where and how a run is named, logged and shown.
# Everything else is in the key (a spurious retrain is cheaper than a wrong reuse).
NOT_IN_STAGE_KEY = {"run": ("name", "root", "logger", "wandb_project", "wandb_entity", "wandb_log_model",
                            "wandb_group", "checkpoint_every_n_steps"),
                    "trainer": ("enable_progress_bar", "log_every_n_steps"),
                    "teacher": ("only",)}
# 2: the content of the KG (all but its test split), the PLM's files and a loaded export's files joined the settings
STAGE_KEY_VERSION = 2  # bumped when what a stage stores changes meaning

# The parts of the KG's content (data.fingerprint.kg_fingerprint) a stage is trained and selected on: all but
# the test split, which only evaluates it (a stage done on another test split is evaluated again, not retrained).
KG_PARTS_IN_KEY = ("entities", "relations", "train", "valid")
# Files of a PLM directory that are not the model: a git checkout's metadata, huggingface_hub's download state.
NOT_PLM_FILES = (".git", ".cache", ".gitattributes", "*.lock", "*.incomplete")
# Files of an export that are not its model: its KG (rewritten when the stage is evaluated on another test
# split), the token table linked from the run's cache, what is derived from the model (entity vectors, index,
# ONNX towers: `serve.digest.DERIVED_FILES`) and temporary files.
NOT_EXPORT_MODEL_FILES = ("kg", "kg.json", "token-cache", *DERIVED_FILES, "*.tmp", "*.old")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def input_fingerprints(cfg: DictConfig, kg: KG) -> dict[str, Any]:
    """What a run's stages are made of beside their settings, by content (SHA-256): `kg`, the KG as loaded
    (`kg_fingerprint`: entities, relations, train, valid, test) and its test triple count; `plm`, the files of
    model.plm's directory (a hub id: its snapshot; `NOT_PLM_FILES` left out); `teacher_load`, the model files
    of a teacher.load export (`NOT_EXPORT_MODEL_FILES` left out; None without one). Computed once per run, by
    preflight (`check_run`), from the loaded KG; a file's digest is remembered within the process."""
    load = cfg.teacher.load
    return {"kg": kg_fingerprint(kg), "test_triples": len(kg.test),
            "plm": tree_digest(resolve_plm(str(cfg.model.plm)), skip=NOT_PLM_FILES),
            "teacher_load": tree_digest(Path(load).expanduser(), skip=NOT_EXPORT_MODEL_FILES) if load else None}


def recorded_test_split(inputs: dict[str, Any]) -> dict[str, Any]:
    """The test split of `inputs` (`input_fingerprints`) as a stage's row records it: its SHA-256 and size."""
    return {"sha256": inputs["kg"]["test"], "triples": int(inputs["test_triples"])}


def stage_keys(cfg: DictConfig, specs: list[dict[str, Any]], inputs: dict[str, Any]) -> dict[str, str]:
    """Stage name -> the key of what determines its outputs: the data, model, optimiser, evaluation and
    trainer settings and the seed; the content of the KG it trains and selects on and of the PLM's files
    (`inputs`, from `input_fingerprints`; the test split is not in it); then the teacher's own settings and a
    teacher.load export's files (teacher) or the stage's resolved spec (`specs[i]`, a student), and the key of
    the stage it learns from. Two runs that differ only in a student's settings share the teacher's key (and
    every stage before that student); `teacher.only` is not in it, so a teacher trained alone is the one a full
    chain of the same settings reuses."""
    plain = to_plain(cfg)
    for group, keys in NOT_IN_STAGE_KEY.items():
        for k in keys:
            plain[group].pop(k, None)
    content = {"kg": {part: inputs["kg"][part] for part in KG_PARTS_IN_KEY}, "plm": inputs["plm"]}
    shared = {"version": STAGE_KEY_VERSION, **{g: plain[g] for g in ("data", "model", "optim", "eval", "trainer")},
              "seed": plain["run"]["seed"], "content": content}
    keys = {"teacher": _digest({**shared, "teacher": plain["teacher"], "teacher_load": inputs["teacher_load"]})}
    before = keys["teacher"]
    for st, spec in zip(cfg.stages, specs):
        before = keys[str(st.name)] = _digest({**shared, "stage": spec, "after": before})
    return keys
