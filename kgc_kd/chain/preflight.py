"""Everything a chain can check before it writes anything or trains for an hour.

A mistake that only surfaces when stage 3 starts (a layer map past the end of its teacher, a loss
term's weights, a teacher exported with another tokenizer) would cost the hours spent on stages 1-2
and leave a half-finished run directory. These checks need the config, the loaded KG and the tokenizer,
never a built model; each error names the config key and what was expected.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

from omegaconf import DictConfig

from kgc_kd.chain import tracking
from kgc_kd.chain.plan import RunPlan, as_plan
from kgc_kd.chain.stage_spec import check_dims, input_fingerprints
from kgc_kd.config import ConfigError
from kgc_kd.data.datamodule import KGDataModule
from kgc_kd.data.tokens import tokenizer_fingerprint
from kgc_kd.distill.registry import Dims
from kgc_kd.models.plm import plm_config, resolve_plm


WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")


def check_run(plan: RunPlan | DictConfig, dm: KGDataModule, tokenizer) -> RunPlan:
    """Every check of a run (`plan`, or a loaded config's plan); returns the plan refined with the encoders'
    shapes (`RunPlan.dims`) and its inputs' fingerprints, with the stage keys computed from them
    (`RunPlan.with_inputs`: the KG as `dm` loaded it, the PLM's files, a teacher.load export's files)."""
    plan = as_plan(plan)
    cfg = plan.cfg
    check_batch_size(cfg, dm)
    teacher_conf, teacher_vocab = check_teacher(cfg, tokenizer)
    check_max_length(cfg, teacher_conf)
    dims = check_stages(plan, teacher_conf)
    check_plm_vocab(cfg, tokenizer, teacher_vocab)
    check_outputs(plan)
    return plan.with_dims(dims).with_inputs(input_fingerprints(cfg, dm.kg))


# ---- what the run needs at its end: the report plot, a writable run directory, the logger ----------------
def check_outputs(plan: RunPlan) -> None:
    """Everything a chain needs after its last stage, checked before its first step (nothing is written)."""
    check_plot_library()
    check_run_directory(plan.run_dir, "run.root")
    check_logger(plan.cfg.run.logger)


def check_plot_library() -> None:
    """report.png is drawn with matplotlib (headless Agg backend) after the last stage."""
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        importlib.import_module("matplotlib.pyplot")
    except Exception as err:  # ImportError, or a broken install that fails while importing
        raise ConfigError(
            f"the report plot (report.png) needs matplotlib, which cannot be imported ({type(err).__name__}: {err}); "
            "expected it installed with kgc-kd: `make install`, or `pip install 'matplotlib>=3.8'`"
        ) from None


def check_run_directory(run_dir: Path, key: str) -> None:
    """`run_dir` exists as a writable directory, or can be created: every existing part of the path is a
    directory and the deepest existing one accepts a new file (tried with a temporary file, removed at once)."""
    path = run_dir.expanduser().absolute()
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            raise ConfigError(f"{key}: {existing} is a broken symbolic link; expected a directory for {path}")
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}: {existing} exists and is not a directory; the run directory {path} "
                          "(report, checkpoints, exports) cannot be created there: expected a directory path")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".kgc-kd-write-check-"):
            pass
    except OSError as err:
        raise ConfigError(f"{key}: cannot write the run directory {path}: {existing} does not accept new files "
                          f"({err.strerror or err}); expected a writable location") from None
    for part in ("config.yaml", "report.json", "report.md", "report.png", "stages"):
        target = path / part
        want_dir = part == "stages"
        if target.exists() and target.is_dir() != want_dir:
            raise ConfigError(f"{key}: {target} exists and is {'not ' if want_dir else ''}a directory; "
                              f"the run writes a {'directory' if want_dir else 'file'} there: expected it removed")


def check_logger(logger: str) -> None:
    """run.logger=wandb: the library imports, WANDB_MODE is one W&B knows, and online mode has an API key."""
    if logger != "wandb":
        return  # csv is Lightning's own CSVLogger, none logs nothing
    try:
        importlib.import_module("wandb")
    except Exception as err:
        raise ConfigError(f"run.logger=wandb: the wandb package cannot be imported ({type(err).__name__}: {err}); "
                          "expected `make install`, or run.logger=csv") from None
    env = os.environ.get("WANDB_MODE")
    if env is not None and env not in WANDB_MODES:
        raise ConfigError(f"run.logger=wandb: environment variable WANDB_MODE={env!r} is not a W&B mode; "
                          f"expected one of {', '.join(WANDB_MODES)} (or unset: online with an API key, else offline)")
    if tracking.wandb_mode() == "online" and not tracking.has_api_key():
        raise ConfigError("run.logger=wandb with WANDB_MODE=online but no W&B API key (WANDB_API_KEY or ~/.netrc): "
                          "expected `wandb login`, WANDB_MODE=offline (sync later with `wandb sync`), or run.logger=csv")


def check_batch_size(cfg: DictConfig, dm: KGDataModule) -> None:
    devices = cfg.trainer.devices if isinstance(cfg.trainer.devices, int) and cfg.trainer.devices > 0 else 1
    n, bs = len(dm.train_examples), cfg.data.batch_size
    if bs * devices > n:
        per = f" per device x {devices} devices" if devices > 1 else ""
        raise ConfigError(
            f"data.batch_size={bs}{per} exceeds the {n} training examples of {dm.kg.name} (train triples and their "
            f"inverses); training drops the last incomplete batch, so no step would run: expected at most "
            f"{n // devices}"
        )


def check_teacher(cfg: DictConfig, tokenizer) -> tuple[dict, int]:
    """The teacher's encoder config (config.json) and vocabulary size; a loaded teacher must read this
    tokenizer's ids."""
    if not cfg.teacher.load:
        conf = plm_config(cfg.model.plm)
        return conf, int(conf["vocab_size"])
    d = Path(cfg.teacher.load).expanduser()
    meta_path, conf_path = d / "biencoder.json", d / "query" / "config.json"
    if not meta_path.is_file() or not conf_path.is_file():
        raise ConfigError(f"teacher.load={cfg.teacher.load!r}: expected an exported stage directory "
                          "(biencoder.json, query/, entity/: runs/<run>/stages/<stage>/export)")
    meta, conf = json.loads(meta_path.read_text()), json.loads(conf_path.read_text())
    vocab = int(meta["vocab"]["source_vocab_size"]) if meta.get("vocab") else int(conf["vocab_size"])
    recorded = (meta.get("tokenizer") or {}).get("fingerprint")
    # The recorded fingerprint decides; without one (older exports) only too few embedding rows can be told
    # apart: models often carry more rows than their tokenizer has tokens (padded vocabularies).
    differs = recorded != tokenizer_fingerprint(tokenizer) if recorded is not None else vocab < len(tokenizer)
    if differs:
        raise ConfigError(
            f"teacher.load={cfg.teacher.load!r} was trained with another tokenizer than model.plm={cfg.model.plm!r} "
            f"(vocabulary {vocab} vs {len(tokenizer)}" + (", different tokens" if recorded is not None else "")
            + "): teacher and students must read the same token ids; expected model.plm to be the teacher's PLM"
        )
    return conf, vocab


# Models whose position ids start after the padding index (RoBERTa's create_position_ids_from_input_ids): of
# max_position_embeddings rows, pad_token_id + 1 are never a token's position.
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text", "mpnet",
                    "ibert")


def position_limit(conf: dict) -> int | None:
    """The longest input (tokens, special ones included) an encoder of config `conf` (config.json) has position
    embeddings for; None where its config does not say."""
    n = conf.get("max_position_embeddings")
    if n is None:
        return None
    if conf.get("model_type") in OFFSET_POSITIONS:
        return int(n) - int(conf.get("pad_token_id", 1)) - 1
    return int(n)


def check_max_length(cfg: DictConfig, teacher_conf: dict) -> None:
    """data.max_length fits every encoder the run builds or loads: the teacher's (model.plm's config.json, or a
    teacher.load export's query/config.json) and, where a stage starts from model.plm, the PLM's."""
    sources = [("teacher.load", Path(cfg.teacher.load).expanduser() / "query" / "config.json", teacher_conf)
               if cfg.teacher.load else ("model.plm", resolve_plm(str(cfg.model.plm)) / "config.json", teacher_conf)]
    if cfg.teacher.load and any(st.init == "plm" for st in cfg.stages):
        sources.append(("model.plm", resolve_plm(str(cfg.model.plm)) / "config.json", plm_config(cfg.model.plm)))
    for key, path, conf in sources:
        limit = position_limit(conf)
        if limit is not None and cfg.data.max_length > limit:
            raise ConfigError(
                f"data.max_length={cfg.data.max_length} exceeds the {limit} positions the encoder of {key} "
                f"({cfg[key.split('.')[0]][key.split('.')[1]]}) has (max_position_embeddings in {path}); expected "
                f"data.max_length <= {limit}"
            )


def _shape(conf: dict, layers: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(hidden_size=int(conf["hidden_size"]), intermediate_size=int(conf["intermediate_size"]),
                           num_attention_heads=int(conf["num_attention_heads"]),
                           num_hidden_layers=int(layers if layers is not None else conf["num_hidden_layers"]))


def check_stages(plan: RunPlan | DictConfig, teacher_conf: dict) -> list[Dims]:
    """Each grade is cut from the stage before it (init=teacher) or from the PLM (init=plm), and its resolved
    terms pass their checks against the real shapes: its taught-by stage's layers and widths and its own.
    Returns each student stage's shapes."""
    plan = as_plan(plan)
    cfg = plan.cfg
    dims = []
    plm_conf = None
    teacher_layers = int(teacher_conf["num_hidden_layers"])
    source, source_layers = "the teacher", teacher_layers
    taught_by = _shape(teacher_conf)
    for i, st in enumerate(cfg.stages):
        if st.init == "plm":
            if plm_conf is None:
                plm_conf = plm_config(cfg.model.plm)
            src, n, cut_from = f"model.plm ({cfg.model.plm})", int(plm_conf["num_hidden_layers"]), plm_conf
        else:
            src, n, cut_from = source, source_layers, teacher_conf
        if st.layers > n:
            raise ConfigError(f"stages[{i}].layers={st.layers}: its source, {src}, has {n} layers; "
                              f"expected at most {n}")
        if st.layer_map is not None:
            bad = [j for j in st.layer_map if not 0 <= j < n]
            if bad:
                raise ConfigError(f"stages[{i}].layer_map={list(st.layer_map)}: layer {bad[0]} does not exist in its "
                                  f"source, {src}, which has {n} layers; expected indices 0..{n - 1}")
        student = _shape(cut_from, st.layers)
        dims.append(Dims.of(student, taught_by))
        check_dims(cfg, i, plan.specs[i], dims[-1])
        source, source_layers, taught_by = f"stage {st.name}", st.layers, student
    return dims


def check_plm_vocab(cfg: DictConfig, tokenizer, teacher_vocab: int) -> None:
    """Models built from model.plm (the teacher, init=plm students) must cover the tokenizer's ids."""
    uses_plm = not cfg.teacher.load or any(st.init == "plm" for st in cfg.stages)
    if not uses_plm:
        return
    vocab = int(plm_config(cfg.model.plm)["vocab_size"])
    if vocab < len(tokenizer) or (cfg.teacher.load and vocab != teacher_vocab):
        raise ConfigError(
            f"model.plm={cfg.model.plm!r}: its embeddings have {vocab} rows but "
            + (f"the teacher (teacher.load) reads {teacher_vocab} token ids" if cfg.teacher.load and vocab != teacher_vocab
               else f"its tokenizer has {len(tokenizer)} tokens")
            + "; expected the model and tokenizer of one PLM"
        )
