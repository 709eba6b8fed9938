"""Weights & Biases: one W&B run per stage, grouped under the pipeline (this module), plus a report run
(chain/wandb_report.py, which is also the `wandb agent`'s run) and a sweep's trials table (sweep/wandb_table.py).

One run per stage (not one run with stage-prefixed keys) because every stage restarts its step
counter and has its own model; W&B's grouping shows the chain as one experiment and each stage's
curves stay comparable across runs. Every run is created with `reinit="create_new"`: a stage run and the
report run are open together, and a stage ends by finishing its own run only (`finish_open_stage`), never
through the global `wandb.finish()`. At most one stage run is open at a time (`_OPEN`): opening the next
one, and the process's exit, finish one left open. Without an API key (or with WANDB_MODE=offline) runs are
written offline under the run directory and can be uploaded later with `wandb sync`.

What a stage run holds beyond Lightning's curves: tags (`run_tags`: data, objective, seed, `run.wandb_tags`,
and `stage:<name>`), `val/mrr` summarised as its max over the stage (`define_metric`, on Lightning's step
axis `trainer/global_step`), and at its end its row's figures (`stage_summary`: sizes, compression against
the teacher, wall time per phase, peak memory). With `run.wandb_log_model=true` the stage's export directory
is a `model` artifact whose input is its teacher's (`log_export`, called by the StageRecorder once the export
is written).
"""

from __future__ import annotations

import atexit
import netrc
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kgc_kd.config import conf_dir, presets, to_plain
from kgc_kd.serve.digest import DERIVED_FILES

if TYPE_CHECKING:
    from kgc_kd.chain.plan import RunPlan

MAX_TAG = 64  # W&B refuses longer tags


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_mode() -> str:
    """Explicit WANDB_MODE wins; otherwise online only with an API key."""
    return os.environ.get("WANDB_MODE") or ("online" if has_api_key() else "offline")


# ---- names and tags ---------------------------------------------------------------------------------------
def data_name(cfg) -> str:
    """The data set's short name: the source's last path component (`umls`, `WN18RR`, `synthetic`)."""
    return Path(str(cfg.data.source).rstrip("/")).name or str(cfg.data.source)


def objective_name(cfg) -> str:
    """The chain's objective: the conf/distill preset whose resolved terms the distill group's equal, else
    `terms` (a term list of its own) or `custom` (the alpha/beta form with other values)."""
    from omegaconf import OmegaConf

    from kgc_kd.chain.stage_spec import objective_terms
    from kgc_kd.config import ObjectiveCfg

    def resolved(settings) -> Any:
        try:
            return objective_terms(settings)
        except (ValueError, KeyError):
            return None

    own = resolved(to_plain(cfg.distill))
    for name in presets("distill"):
        try:
            loaded = OmegaConf.load(conf_dir() / "distill" / f"{name}.yaml")
            preset = OmegaConf.merge(OmegaConf.structured(ObjectiveCfg), loaded)
        except Exception:  # a preset that does not load is not this one
            continue
        if own is not None and resolved(to_plain(preset)) == own:
            return name
    return "terms" if cfg.distill.terms else "custom"


def _tag(text: str) -> str:
    return str(text)[:MAX_TAG]


def run_tags(plan: RunPlan, stage: str | None = None) -> list[str]:
    """Every run of a chain: `data:`, `objective:`, `seed:` and `run.wandb_tags` (a sweep trial's `study:`,
    `trial:`); a stage run also `stage:<name>`."""
    cfg = plan.cfg
    tags = [f"data:{data_name(cfg)}", f"objective:{objective_name(cfg)}", f"seed:{cfg.run.seed}"]
    if stage is not None:
        tags.append(f"stage:{stage}")
    tags += [str(t) for t in (cfg.run.get("wandb_tags") or [])]
    return list(dict.fromkeys(_tag(t) for t in tags))


def init_kwargs(plan: RunPlan, name: str, job_type: str, extra: dict) -> dict:
    """`wandb.init`'s arguments for the chain's run `name` (a stage, or the report); `reinit="create_new"`: the
    report run stays open beside the stage runs, and no run becomes wandb's global run."""
    cfg = plan.cfg
    group = cfg.run.wandb_group or plan.run_name  # a comparison (kgc_kd.compare) groups all its chains
    return {"project": cfg.run.wandb_project, "entity": cfg.run.wandb_entity, "group": group,
            "name": f"{plan.run_name}/{name}", "job_type": job_type, "dir": str(plan.run_dir),
            "config": {**to_plain(cfg), "stage": extra}, "mode": wandb_mode(), "reinit": "create_new",
            "tags": run_tags(plan)}


# ---- the open stage run -----------------------------------------------------------------------------------
class _Chain:
    """This process's current chain as W&B saw it: its stage runs and their model artifacts."""

    def __init__(self, run_name: str | None = None):
        self.run_name = run_name
        self.runs: dict[str, dict[str, str]] = {}
        self.artifacts: dict[str, Any] = {}  # stage -> its logged wandb.Artifact (a student's input)


_CHAIN = _Chain()
_OPEN: dict[str, Any] | None = None  # the open stage run: {"stage", "logger", "run", "plan"}


def stage_logger(plan: RunPlan, stage: str, info: dict, destination: dict[str, str] | None = None):
    """The stage's WandbLogger, its run started now (a stage run still open is finished first): tagged, with
    `val/mrr` summarised as its max. Lightning's own checkpoints are not uploaded (`log_model=False`): with
    `run.wandb_log_model` the stage's export is (`log_export`). `destination`: a project and entity that win over
    run.wandb_project/run.wandb_entity (under `wandb agent`: the agent's)."""
    global _CHAIN, _OPEN
    from lightning.pytorch.loggers import WandbLogger

    finish_open_stage(outcome="superseded")  # never two stage runs open: the driver should have finished it
    if _CHAIN.run_name != plan.run_name:
        _CHAIN = _Chain(plan.run_name)
    kw = init_kwargs(plan, stage, stage, info)
    kw["tags"] = run_tags(plan, stage)
    kw.update(destination or {})
    kw.pop("dir")
    # the mode goes to wandb.init as it is; WandbLogger(offline=True) would set WANDB_MODE=dryrun process-wide, which
    # wandb 0.31 does not read as offline for the runs opened after it (the open report run's, a new stage's):
    # they then ask for an API key
    logger = WandbLogger(save_dir=str(plan.run_dir), log_model=False, offline=False, **kw)
    run = logger.experiment  # created here (rank zero; elsewhere a stand-in): its axes, tags and id known now
    from wandb.sdk.wandb_run import Run

    if isinstance(run, Run):
        # Lightning defined `trainer/global_step` and `*` on it; a metric of its own needs its step axis again
        run.define_metric("val/mrr", step_metric="trainer/global_step", summary="max")
        _OPEN = {"stage": stage, "logger": logger, "run": run, "plan": plan}
        _CHAIN.runs[stage] = {"id": run.id, "name": run.name, "group": run.group, "project": run.project}
        # after wandb's own exit hook of this run: ours runs first (atexit is last in, first out)
        atexit.unregister(_at_exit)
        atexit.register(_at_exit)
    return logger


def stage_runs() -> dict[str, dict[str, str]]:
    """The W&B runs of this process's current chain: {stage: {"id", "name", "group", "project"}}."""
    return {k: dict(v) for k, v in _CHAIN.runs.items()}


def open_stage_run(stage: str) -> dict[str, str] | None:
    """Stage `stage`'s open run: its id, name, group and project (None: no run of it is open)."""
    return dict(_CHAIN.runs[stage]) if _OPEN is not None and _OPEN["stage"] == stage else None


def _compression(row: dict) -> dict[str, float]:
    return {f"compression/{k}": v for k, v in (row.get("compression") or {}).items() if v is not None}


def stage_summary(row: dict) -> dict[str, Any]:
    """A stage row's figures as its run's summary keys."""
    test = row.get("test") or {}
    phases = row.get("phases_s") or {}
    figures = {
        "best/val_mrr": row.get("best_val_mrr"), "best/test_mrr": test.get("mrr"),
        "params/total": row.get("params_total"), "params/no_embeddings": row.get("params_no_embeddings"),
        "params/query": row.get("params_query"), "params/entity": row.get("params_entity"),
        "model/layers": row.get("layers"), "model/vocab_size": row.get("vocab_size"),
        "model/temperature": row.get("temperature"),
        "time/fit_s": row.get("fit_time_s"), **{f"time/{k}_s": v for k, v in phases.items()},
        "speed/queries_per_s": row.get("queries_per_s"), "speed/entities_per_s": row.get("entities_per_s"),
        "memory/peak_rss_mib": row.get("peak_rss_mib"), "memory/peak_cuda_mib": row.get("peak_cuda_mib"),
        "fit/epochs": row.get("epochs"), "fit/steps": row.get("steps"), **_compression(row),
    }
    return {k: v for k, v in figures.items() if v is not None}


def finish_open_stage(row: dict | None = None, outcome: str | None = None) -> None:
    """Finish the open stage run (none open: nothing): `row`'s figures (default: the row its StageRecorder
    recorded, if any) into its summary (`stage_summary`) and,
    given an `outcome` ("pruned", "stopped", ...), that as a tag and as the summary's `outcome`."""
    global _OPEN
    if _OPEN is None:
        return
    state, _OPEN = _OPEN, None
    run = state["run"]
    row = row or state.get("row")
    if getattr(run, "_is_finished", False):  # finished elsewhere (wandb's own exit hook)
        return
    if row:
        run.summary.update(stage_summary(row))
    if outcome:
        run.tags = tuple(dict.fromkeys([*(run.tags or ()), _tag(outcome)]))
        run.summary["outcome"] = outcome
    run.finish(exit_code=1 if outcome == "interrupted" else None)


def _at_exit() -> None:
    finish_open_stage(outcome="interrupted")  # the driver did not finish it: the stage did not end normally


def finish_stage(trainer=None) -> None:
    """The stage ends: its run is finished with the row its StageRecorder recorded (`stage_recorded`)."""
    finish_open_stage()


def stage_recorded(stage: str, row: dict, export_dir: Path, teacher: str | None = None) -> dict[str, Any] | None:
    """The StageRecorder's call once stage `stage` is tested and exported, before its row is recorded: with a run
    of it open, the row is kept for the run's summary (`finish_open_stage` without a row), the export logged as
    a model artifact (`log_export`), and the run's id, name, group and project (and artifact) returned for the
    row's `wandb_run`. None: no run of it is open."""
    run = open_stage_run(stage)
    if run is None:
        return None
    _OPEN["row"] = row
    artifact = log_export(stage, export_dir, teacher)
    return {**run, "artifact": artifact} if artifact is not None else run


# ---- the stage's export as a model artifact ----------------------------------------------------------------
def _artifact_name(text: str) -> str:
    return re.sub(r"[^\w.-]", "-", text)


def artifact_name(plan: RunPlan, stage: str) -> str:
    """The stage's model collection: `<data>-<stage>`; each run's export is a version of it, aliased with the
    stage and the run name."""
    return _artifact_name(f"{data_name(plan.cfg)}-{stage}")


# What of an export is not uploaded: the token table linked from the run's cache (predict tokenises once without
# it; on a large KG it is the biggest file), what predict derives from the model again where absent (entity
# vectors: 7 GB at Wikidata5M; index; ONNX towers: `serve.digest.DERIVED_FILES`), temporary and replaced files.
NOT_IN_ARTIFACT = ("token-cache", *DERIVED_FILES, "*.tmp", "*.old")


def export_files(export_dir: Path) -> list[Path]:
    """The files of an export that its model artifact holds (`NOT_IN_ARTIFACT` left out), in a stable order."""
    import fnmatch

    return sorted(p for p in export_dir.rglob("*") if p.is_file()
                  and not any(fnmatch.fnmatch(p.relative_to(export_dir).parts[0], pat) for pat in NOT_IN_ARTIFACT))


def log_export(stage: str, export_dir: Path, teacher: str | None = None) -> dict[str, Any] | None:
    """With `run.wandb_log_model`, the stage's export directory as a `model` artifact of the open stage run
    (aliases: the stage, the run name), its teacher's artifact (logged by this chain) declared as its input
    where W&B allows it (online; offline runs cannot use artifacts, so the teacher is named in the artifact's
    metadata too). Returns what was logged (None: nothing)."""
    if _OPEN is None or _OPEN["stage"] != stage or not _OPEN["plan"].cfg.run.wandb_log_model:
        return None
    import wandb

    plan, run = _OPEN["plan"], _OPEN["run"]
    aliases = list(dict.fromkeys([_artifact_name(stage), _artifact_name(plan.run_name)]))
    parent = _CHAIN.artifacts.get(teacher) if teacher else None
    parent_ref = f"{artifact_name(plan, teacher)}:{_artifact_name(plan.run_name)}" if parent is not None else None
    art = wandb.Artifact(artifact_name(plan, stage), type="model",
                         description=f"{plan.run_name}: stage {stage}'s export (kgc_kd.predict loads it)",
                         metadata={"stage": stage, "run": plan.run_name, "teacher_artifact": parent_ref})
    for path in export_files(Path(export_dir)):
        art.add_file(str(path), name=path.relative_to(export_dir).as_posix())
    declared = False
    if parent is not None and not run.offline:
        parent.wait()  # committed: a draft cannot be an input
        run.use_artifact(parent)
        declared = True
    run.log_artifact(art, aliases=aliases)
    _CHAIN.artifacts[stage] = art
    return {"name": art.name, "aliases": aliases, "teacher_artifact": parent_ref, "input_declared": declared}
