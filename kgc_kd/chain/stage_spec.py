"""A student stage's resolved spec: the one place where the distill group and a stage's overrides are merged.

`resolve_stage(cfg, i)` turns the config into a plain dict per stage: its terms (each with its weight and
its own parameters, validated by the registered term, distill/registry.py), the input masking, the
negatives, the stage it learns from, its layers and layer map. `config.validate` resolves every stage when
a config is loaded (no model known), `preflight.check_stages` resolves them again with the encoders'
shapes (`Dims`, from the PLM's config.json) before anything trains, `chain.build_stage` hands the spec to
the `DistillModule`, and report.json records it per stage.

Two spellings of an objective:
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
from dataclasses import asdict
from typing import Any

from omegaconf import DictConfig

from kgc_kd.config import ConfigError, DistillCfg, to_plain
from kgc_kd.distill.registry import Dims, resolve_term, term_class

LOSS_KEYS = ("alpha", "beta", "pkd", "score_loss", "kd_temperature", "mgfd", "generator", "terms")
SHORTHAND_KEYS = {"score_loss": "{name: score, loss: %s}", "kd_temperature": "{name: score, temperature: %s}",
                  "mgfd": "{name: mgd} (generation) or {name: mgfd} (pmd); got %s",
                  "generator": "{name: mgd, generator: %s}"}


def distill_settings(cfg: DictConfig, index: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Stage `index`'s loss settings (the distill group with the stage's overrides) and, per key, the config
    key it came from (for messages)."""
    st, group = to_plain(cfg.stages[index]), to_plain(cfg.distill)
    settings, origin = {}, {}
    for k in LOSS_KEYS:
        own = st.get(k) is not None
        settings[k] = st[k] if own else group.get(k)
        origin[k] = f"stages[{index}].{k}" if own else f"distill.{k}"
    return settings, origin


def objective_terms(settings: dict[str, Any], dims: Dims | None = None,
                    origin: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The resolved term list ({name, weight, params} each) of one stage's loss settings; keys missing from
    `settings` take DistillCfg's defaults. A ValueError names what is wrong."""
    s = {**asdict(DistillCfg()), **{k: v for k, v in settings.items() if v is not None}}
    where = {k: (origin or {}).get(k, f"distill.{k}") for k in LOSS_KEYS}
    if s["terms"]:
        for key, spelling in SHORTHAND_KEYS.items():
            if s.get(key) is not None:
                raise ValueError(f"{where[key]}={s[key]!r} belongs to the alpha/beta form; with a term list give it on "
                                 f"the term: {spelling % s[key]}")
        entries = [dict(t) for t in s["terms"]]
    else:
        a, b, p = float(s["alpha"]), float(s["beta"]), float(s["pkd"])
        if a + b + p > 1.0 + 1e-9:
            raise ValueError(f"{where['alpha']} + {where['beta']} + {where['pkd']} = {a:g} + {b:g} + {p:g} > 1; "
                             "expected at most 1 (CE keeps 1 minus their sum)")
        entries = [{"name": "ce", "weight": max(0.0, 1.0 - a - b - p)}]
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
    terms = [resolve_term(t, dims) for t in entries]
    names = [t["name"] for t in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"a loss term appears twice in {names}")
    return terms


def stage_negatives(cfg: DictConfig, index: int | None) -> dict[str, Any]:
    """The negatives stage `index` trains with (None: the teacher): the teacher's (model.*) unless the stage
    overrides them, so students see the objective their teacher was trained on."""
    st = cfg.stages[index] if index is not None else None
    pick = lambda key: cfg.model[key] if st is None or st[key] is None else st[key]  # noqa: E731
    return {"in_batch": True, "pre_batch": int(pick("pre_batch")), "pre_batch_weight": float(cfg.model.pre_batch_weight),
            "self_negative": bool(pick("self_negative"))}


def resolve_stage(cfg: DictConfig, index: int, dims: Dims | None = None) -> dict[str, Any]:
    """Stage `index` as it trains: a plain dict (report.json holds it). ConfigError names the key at fault."""
    st = cfg.stages[index]
    settings, origin = distill_settings(cfg, index)
    try:
        if settings["terms"]:
            own = [k for k in ("alpha", "beta", "pkd") if st[k] is not None]
            if own:
                raise ValueError(f"stages[{index}].{own[0]}={st[own[0]]} weighs the alpha/beta form, but this stage's "
                                 "objective is a term list: give the weight on the term instead")
        terms = objective_terms(settings, dims, origin)
    except ValueError as err:
        prefix = f"{origin['terms']} (used by stages[{index}])" if settings["terms"] else f"stages[{index}] ({st.name})"
        raise ConfigError(f"{prefix}: {err}") from None
    return {
        "name": str(st.name), "layers": int(st.layers), "teacher": "teacher" if index == 0 else str(cfg.stages[index - 1].name),
        "init": str(st.init), "layer_map": None if st.layer_map is None else [int(i) for i in st.layer_map],
        "mask_rate": float(st.mask_rate), "masks_inputs": any(term_class(t["name"]).masks_inputs for t in terms),
        "shared_encoder": st.shared_encoder, "prune_vocab": bool(st.prune_vocab), "epochs": st.epochs, "lr": st.lr,
        "negatives": stage_negatives(cfg, index), "terms": terms,
    }


# What does not change a stage's outputs, so not its key: where and how a run is named, logged and shown.
# Everything else is in the key (a spurious retrain is cheaper than a wrong reuse).
NOT_IN_STAGE_KEY = {"run": ("name", "root", "logger", "wandb_project", "wandb_entity", "wandb_log_model",
                            "wandb_group", "checkpoint_every_n_steps"),
                    "trainer": ("enable_progress_bar", "log_every_n_steps"),
                    "teacher": ("only",)}
STAGE_KEY_VERSION = 1  # bumped when what a stage stores changes meaning


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def stage_keys(cfg: DictConfig) -> dict[str, str]:
    """Stage name -> the key of what determines its outputs: the data, model, optimiser, evaluation and
    trainer settings and the seed, then the teacher's own settings (teacher) or the stage's resolved spec
    (a student), and the key of the stage it learns from. Two runs that differ only in a student's settings
    share the teacher's key (and every stage before that student); `teacher.only` is not in it, so a teacher
    trained alone is the one a full chain of the same settings reuses."""
    plain = to_plain(cfg)
    for group, keys in NOT_IN_STAGE_KEY.items():
        for k in keys:
            plain[group].pop(k, None)
    shared = {"version": STAGE_KEY_VERSION, **{g: plain[g] for g in ("data", "model", "optim", "eval", "trainer")},
              "seed": plain["run"]["seed"]}
    keys = {"teacher": _digest({**shared, "teacher": plain["teacher"]})}
    before = keys["teacher"]
    for i, st in enumerate(cfg.stages):
        before = keys[str(st.name)] = _digest({**shared, "stage": resolve_stage(cfg, i), "after": before})
    return keys
