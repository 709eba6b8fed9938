"""Assemble and run the chain: teacher -> pre-distillation -> student grades, one Trainer per stage.

All stages share one KGDataModule. The chain's store (`ChainStore`: run directory, finished stages, their rows
and exports, the current teacher) carries everything from one stage to the next; each stage's Trainer gets a
`StageRecorder` callback that records the stage's row into it. After a stage is tested the driver hands the
tested bi-encoder to the store, frozen, as the next stage's teacher. Every stage is seeded with the same run
seed, so a baseline chain (distill=none) sees the same data order and initialisation as the distilled one.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from kgc_kd.callbacks.resume import (AtomicCheckpointIO, CheckpointOnInterrupt, LastCheckpoint, RngState,
                                     newest_checkpoint, remove_hpc_checkpoints, resume_candidates)
from kgc_kd.callbacks.timing import PhaseTimer
from kgc_kd.chain import tracking, wandb_report
from kgc_kd.chain.plan import RunPlan, as_plan
from kgc_kd.chain.preflight import check_run
from kgc_kd.chain.recorder import StageRecorder, test_metrics
from kgc_kd.chain.report import write_report
from kgc_kd.chain.stage_spec import input_fingerprints, recorded_test_split, stage_negatives
from kgc_kd.chain.store import ChainStore
from kgc_kd.config import to_plain
from kgc_kd.data.datamodule import KGDataModule, resolve_loader
from kgc_kd.lit.distill_module import DistillModule
from kgc_kd.lit.kgc_module import KGCModule
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.plm import load_tokenizer
from kgc_kd.models.student import build_student, num_layers
from kgc_kd.models.vocab import used_token_ids
from kgc_kd.runtime.files import write_text_atomic
from kgc_kd.runtime.memory import peak_rss_mib
from kgc_kd.runtime.precision import configure_matmul, resolve_precision


def data_checks(dm: KGDataModule) -> dict[str, int]:
    """What loading changed in the data (deduplicated, dropped, no text, truncated): nonzero counts."""
    truncated = {f"truncated.{k}": v for k, v in dm.tokens.truncated.items() if v}
    return {**dm.kg.notes, **truncated}


def build_datamodule(cfg: DictConfig, tokenizer=None) -> KGDataModule:
    """The run's datamodule; with `tokenizer`, every text is tokenised (or the run root's cached token table
    mapped) now, which writes `<run.root>/token-cache/` the first time: a run connects its tokenizer only
    after its checks passed (`run_chain`), so a refused run writes nothing."""
    d = cfg.data
    loader = resolve_loader(d.get("num_workers"), d.get("pin_memory"), cfg.trainer.accelerator)
    dm = KGDataModule(
        d.source, max_length=d.max_length, batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
        num_workers=loader.num_workers, pin_memory=loader.pin_memory, use_long_text=d.use_long_text, dedup_entities=d.dedup_entities,
        name_separator=d.name_separator, synthetic=to_plain(d.synthetic), tokenizer=tokenizer,
        drop_unknown=d.drop_unknown, drop_overlap=d.drop_overlap, link_graph=d.link_graph,
        val_max_queries=cfg.eval.val_max_queries,
        token_cache_dir=Path(cfg.run.root) / "token-cache",  # shared by every run under run.root
    )
    dm.loader_settings = loader  # resolved once, here; run_chain prints and records it
    return dm


def trainer_kwargs(cfg: DictConfig, **overrides) -> dict:
    t = {k: v for k, v in to_plain(cfg.trainer).items() if v is not None}
    t["precision"] = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)[0]
    return {**t, **overrides}


def _stage_trainer(plan: RunPlan | DictConfig, chain: ChainStore, name: str, epochs: int | None,
                   callback: StageRecorder, stage: dict | None = None):
    plan = as_plan(plan)
    cfg = plan.cfg
    stage_dir = chain.stage_dir(name)
    # The best epoch by val MRR (tested at the end); the resume point last.ckpt is LastCheckpoint's, written at
    # every epoch's end and every run.checkpoint_every_n_steps steps (ModelCheckpoint's save_last would only
    # refresh it at improving epochs). ckpt stays first: it is trainer.checkpoint_callback.
    ckpt = ModelCheckpoint(dirpath=stage_dir / "checkpoints", filename="best-epoch{epoch:03d}", monitor="val/mrr",
                           mode="max", save_top_k=1, save_last=False, auto_insert_metric_name=False)
    # the timer before the stage's recorder (it reads the timer); RNG state and an interrupt checkpoint make a
    # killed stage resume where it stopped (callbacks/resume.py)
    callbacks = [ckpt, LastCheckpoint(stage_dir / "checkpoints", cfg.run.checkpoint_every_n_steps), PhaseTimer(),
                 callback, RngState(), CheckpointOnInterrupt(stage_dir / "checkpoints")]
    logger: list | bool = False
    if cfg.run.logger in ("csv", "wandb"):  # the CSV log is kept with W&B too: it needs no service to read
        # A resumed stage logs to logs/resume-N/: CSVLogger deletes an existing metrics.csv it would reuse.
        resumes = len(list((stage_dir / "logs").glob("resume-*"))) + 1
        version = f"resume-{resumes}" if resume_candidates(stage_dir) else ""
        logger = [CSVLogger(save_dir=str(stage_dir), name="logs", version=version)]
        if cfg.run.logger == "wandb":
            logger.append(tracking.stage_logger(plan, name, stage or {}, wandb_report.agent_destination()))
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    kw = trainer_kwargs(cfg, default_root_dir=str(stage_dir), logger=logger, callbacks=callbacks,
                        plugins=[AtomicCheckpointIO()])
    if epochs is not None:
        kw["max_epochs"] = epochs
    return L.Trainer(**kw)


def _fit_and_test(trainer: L.Trainer, module: L.LightningModule, dm: KGDataModule, stage_dir: Path) -> None:
    # resume if interrupted: from last.ckpt or a SLURM requeue's hpc_ckpt_N.ckpt, whichever holds the later step
    # (an explicit ckpt_path: Lightning's own SLURM lookup would take the hpc file even when last.ckpt is newer)
    resume = newest_checkpoint(stage_dir)
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
    if trainer.is_global_zero:  # superseded by last.ckpt; on SLURM, test(ckpt_path=None) would load them
        remove_hpc_checkpoints(stage_dir)
    trainer.strategy.barrier("kgc_kd.remove_hpc_checkpoints")
    best = trainer.checkpoint_callback.best_model_path
    trainer.test(module, datamodule=dm, ckpt_path=best or None, verbose=False)


def _optim(cfg: DictConfig, lr: float | None) -> dict:
    o = to_plain(cfg.optim)
    return {**o, "lr": lr} if lr is not None else o


def evaluate_untrained(cfg: DictConfig, module: L.LightningModule, dm: KGDataModule, root: Path) -> dict[str, float]:
    """Test metrics of the encoder before any training: the bar training has to clear. `root` is the trainer's
    directory (`evaluation_only_root`)."""
    t = L.Trainer(**trainer_kwargs(cfg, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                   enable_model_summary=False, default_root_dir=str(root)))
    t.test(module, datamodule=dm, verbose=False)
    return dict(module.last_eval["test"]["metrics"])


def _recorder(cfg: DictConfig, chain: ChainStore, info: dict) -> StageRecorder:
    """The callback that records the stage `info` describes into `chain` once it is tested."""
    return StageRecorder(chain, info, save_predictions=cfg.eval.save_predictions)


def evaluation_only_root(chain: ChainStore) -> Path:
    """Where the test-only trainers (untrained baseline, loaded teacher) live. Not the working directory: on
    SLURM, Lightning's test with ckpt_path=None loads any `hpc_ckpt_N.ckpt` of its default_root_dir, and a
    requeue signal during such a test writes one there; here such a file can only hold the same weights."""
    return chain.stage_dir("teacher") / "evaluation-only"


def _agreed(flag: bool) -> bool:
    """Rank zero's `flag` on every rank once a process group exists (the stage store's lock is rank zero's:
    all ranks of a run must take the same decision); the flag itself otherwise. Before the first fit, DDP's
    other ranks do not exist yet: they start inside it and read the store as rank zero left it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [flag]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])
    return flag


def freeze(net: BiEncoder) -> BiEncoder:
    return net.requires_grad_(False).eval()


class CurrentTeacher:
    """The frozen bi-encoder the next stage learns from (None before the first stage is done): the driver's own
    state from stage to stage, never stored."""

    def __init__(self) -> None:
        self.net: BiEncoder | None = None

    def hand_over(self, net: BiEncoder) -> None:
        """A tested stage's bi-encoder teaches the next stage: a frozen copy, so training the next stage
        cannot change it."""
        self.net = freeze(copy.deepcopy(net))

    def load(self, export_dir: Path) -> None:
        """A finished stage is skipped: its export teaches the next stage (read with the source tokenizer's ids)."""
        self.net = freeze(BiEncoder.from_pretrained(export_dir, source_ids=True))


def _reuse_if_done(chain: ChainStore, name: str, teacher: CurrentTeacher,
                   retest: Callable[[], None] | None = None) -> bool:
    """A stage already done (by this run or, in the stage store, by another) is not trained again: it joins the
    run and its export becomes the next stage's teacher. Its row's test metrics must be on this run's test
    split: where they are not (`ChainStore.test_is_current`), `retest()` evaluates it again first."""
    if not _agreed(chain.is_done(name)):
        return False
    if chain.adopt(name):
        print(f"[chain] {name}: reusing {chain.stage_dir(name)} (trained by another run with the same stage key)",
              flush=True)
    if not _agreed(chain.test_is_current(name)):
        if retest is None:
            raise RuntimeError(f"stage {name}: its recorded test metrics are of another test split and nothing "
                               "evaluates it again")
        retest()
    teacher.load(chain.export_dir(name))
    return True


def _retest(plan: RunPlan, dm: KGDataModule, chain: ChainStore, name: str, encoder=None) -> None:
    """A done stage whose row was tested on another test split than this run's (its key leaves the test split
    out): evaluated on this one, test only, from its export (as a teacher.load is), and recorded again
    (`ChainStore.retested`: metrics, predictions, the export's KG). The teacher's untrained baseline, measured
    on the old split too, is measured again."""
    cfg = plan.cfg
    before = chain.row(name) or {}
    previous = (before.get("test_data") or {}).get("sha256")
    if name == "teacher" and chain.untrained_test is not None:
        L.seed_everything(cfg.run.seed, workers=True)  # the initialisation the teacher's own baseline measured
        untrained = KGCModule(to_plain(cfg.model), _optim(cfg, cfg.teacher.lr), to_plain(cfg.eval),
                              cfg.data.batch_size, encoder=encoder)
        start = time.perf_counter()
        metrics = evaluate_untrained(cfg, untrained, dm, evaluation_only_root(chain))
        chain.set_untrained(metrics, round(time.perf_counter() - start, 2))
    net = BiEncoder.from_pretrained(chain.export_dir(name), source_ids=True)
    module = KGCModule(to_plain(cfg.model), to_plain(cfg.optim), to_plain(cfg.eval), cfg.data.batch_size, net=net)
    trainer = L.Trainer(**trainer_kwargs(cfg, logger=False, enable_checkpointing=False, enable_model_summary=False,
                                         default_root_dir=str(evaluation_only_root(chain))))
    trainer.test(module, datamodule=dm, verbose=False)
    ev = module.last_eval["test"]
    test = test_metrics(ev)
    if trainer.is_global_zero:
        chain.retested(name, test, dm.kg, ev if cfg.eval.save_predictions else None, max_length=dm.max_length,
                       link_graph=dm.link_graph)
    was = (before.get("test") or {}).get("mrr")
    other = previous[:12] if previous else "not recorded"
    print(f"[chain] {name}: tested before on another test split (sha256 {other}); evaluated again on "
          f"this one ({len(dm.kg.test):,} triples, sha256 {chain.test_data['sha256'][:12]}), not trained: test MRR "
          f"{test['mrr']:.4f}" + (f" (was {was:.4f} on the other split)" if was is not None else ""), flush=True)


def run_teacher(plan: RunPlan, dm: KGDataModule, chain: ChainStore, teacher: CurrentTeacher,
                encoder=None) -> dict | None:
    """Train (or load) the teacher and hand it to `teacher`; returns the untrained baseline metrics when measured."""
    with chain.claim("teacher", lock=chain.writes, timeout_s=plan.cfg.run.lock_timeout_s):
        return _run_teacher(plan, dm, chain, teacher, encoder)


def _run_teacher(plan: RunPlan, dm: KGDataModule, chain: ChainStore, teacher: CurrentTeacher,
                 encoder=None) -> dict | None:
    cfg = plan.cfg
    if _reuse_if_done(chain, "teacher", teacher, lambda: _retest(plan, dm, chain, "teacher", encoder)):
        return chain.untrained_test
    chain.open_stage("teacher")
    L.seed_everything(cfg.run.seed, workers=True)
    info = {"name": "teacher", "kind": "teacher", "plm": cfg.model.plm, "negatives": stage_negatives(cfg, None)}
    if cfg.teacher.load:
        net = BiEncoder.from_pretrained(cfg.teacher.load, source_ids=True)
        net.check_vocab(dm.tokens.used_ids())  # a pruned teacher from another KG fails here
        module = KGCModule(to_plain(cfg.model), to_plain(cfg.optim), to_plain(cfg.eval), cfg.data.batch_size, net=net)
        info.pop("negatives")  # trained elsewhere: what it trained with is not known here
        recorder = _recorder(cfg, chain, {**info, "loaded_from": cfg.teacher.load,
                                          "layers": num_layers(net.query_encoder)})
        trainer = L.Trainer(**trainer_kwargs(cfg, logger=False, callbacks=[recorder], enable_checkpointing=False,
                                             default_root_dir=str(evaluation_only_root(chain))))
        trainer.test(module, datamodule=dm, verbose=False)  # its row records its test metrics
        teacher.hand_over(module.net)
        return None
    module = KGCModule(to_plain(cfg.model), _optim(cfg, cfg.teacher.lr), to_plain(cfg.eval), cfg.data.batch_size,
                       encoder=encoder)
    start = time.perf_counter()
    untrained = evaluate_untrained(cfg, module, dm, evaluation_only_root(chain)) if cfg.eval.untrained_baseline else None
    chain.set_untrained(untrained, round(time.perf_counter() - start, 2))
    recorder = _recorder(cfg, chain, {**info, "layers": num_layers(module.net.query_encoder)})
    stage_dir = chain.stage_dir("teacher")
    _fit_and_test(_stage_trainer(plan, chain, "teacher", cfg.teacher.epochs, recorder, info), module, dm, stage_dir)
    teacher.hand_over(module.net)  # tested with the best checkpoint's weights
    return untrained


def build_stage(plan: RunPlan | DictConfig, index: int, teacher: BiEncoder, dm: KGDataModule,
                tokenizer) -> DistillModule:
    """Student stage `index` taught by `teacher`, exactly as the chain trains it (the benchmark times this):
    its spec is the plan's (a loaded config: its plan's)."""
    plan = as_plan(plan)
    cfg = plan.cfg
    st = cfg.stages[index]
    student, layer_map = build_student(teacher, st.layers, layer_map=to_plain(st)["layer_map"], init=st.init,
                                       plm=cfg.model.plm, learn_temperature=cfg.model.learn_temperature,
                                       shared=st.shared_encoder)
    if st.prune_vocab and student.kept_ids is None:
        kept = used_token_ids(dm.tokens.used_ids(), tokenizer)
        student.prune_vocabulary(kept, student.query_encoder.config.vocab_size)
    spec = plan.specs[index]
    negatives = spec["negatives"]
    stage = {**spec, "layer_map": layer_map, "shared_encoder": student.shared,
             "vocab_size": len(student.kept_ids or []) or student.query_encoder.config.vocab_size}
    model = {**to_plain(cfg.model), "pre_batch": negatives["pre_batch"], "self_negative": negatives["self_negative"]}
    return DistillModule(model, _optim(cfg, st.lr), to_plain(cfg.eval), stage, cfg.data.batch_size,
                         student=student, teacher=teacher)


def run_student(plan: RunPlan, dm: KGDataModule, chain: ChainStore, teacher: CurrentTeacher, index: int) -> None:
    """Train student stage `index`, taught by `teacher`, and hand it over as the next stage's teacher."""
    with chain.claim(plan.specs[index]["name"], lock=chain.writes, timeout_s=plan.cfg.run.lock_timeout_s):
        _run_student(plan, dm, chain, teacher, index)


def _run_student(plan: RunPlan, dm: KGDataModule, chain: ChainStore, teacher: CurrentTeacher, index: int) -> None:
    cfg = plan.cfg
    st = cfg.stages[index]
    if _reuse_if_done(chain, str(st.name), teacher, lambda: _retest(plan, dm, chain, str(st.name))):
        return
    chain.open_stage(str(st.name))
    L.seed_everything(cfg.run.seed, workers=True)
    module = build_stage(plan, index, teacher.net, dm, chain.tokenizer)
    stage = module.hparams.stage
    recorder = _recorder(cfg, chain, {**stage, "kind": "student",
                                      "teacher_layers": num_layers(teacher.net.query_encoder)})
    stage_dir = chain.stage_dir(st.name)
    _fit_and_test(_stage_trainer(plan, chain, str(st.name), st.epochs, recorder, stage), module, dm, stage_dir)
    teacher.hand_over(module.net)  # tested with the best checkpoint's weights


def open_chain(plan: RunPlan, tokenizer=None, writes: bool = True) -> ChainStore:
    """The chain store of `plan`'s run: its run directory, its stages' keys in the stage store under run.root and
    the test split its rows must be on. `plan`: as preflight returned it (`check_run`: the keys computed from
    the inputs' content); a plan without them (a comparison asking whether a chain is done) has its inputs
    fingerprinted here, from the KG loaded again."""
    if plan.keys is None:
        plan = plan.with_inputs(input_fingerprints(plan.cfg, build_datamodule(plan.cfg).kg))
    return ChainStore(plan.run_dir, tokenizer, keys=plan.keys, store_root=plan.cfg.run.root, writes=writes,
                      test_data=recorded_test_split(plan.inputs))


def _check_test_split(chain: ChainStore, rows: list[dict]) -> None:
    """The report's rows are all on this run's test split (a reused stage on another one was tested again)."""
    other = [r["name"] for r in rows if not chain.test_is_current(r["name"])]
    if other:
        raise RuntimeError(f"stages {other}: their test metrics are of another test split than {chain.test_data}; "
                           "the report would show them beside this data")


def run_chain(plan: RunPlan | DictConfig, *, encoder=None, tokenizer=None,
              on_stage: Callable[[int, dict], None] | None = None) -> dict:
    """Train (or reuse) every stage of `plan`'s chain (a loaded config: its plan's) and write its report.
    `on_stage(i, row)` is called after stage i (0: the teacher) is done, with its row; an exception from it
    stops the chain there (a sweep's pruner does this)."""
    start = time.time()
    plan = as_plan(plan)
    cfg = plan.cfg
    wandb_report.detach_agent()  # under `wandb agent`, the agent's run is the report's, not a stage's
    # Data and model first: a bad path or file fails before anything is written.
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model.plm)
    dm = build_datamodule(cfg)
    print(dm.kg.summary(), flush=True)  # loads the KG: a bad path or file fails here
    plan = check_run(plan, dm, tokenizer)  # every config/data/model mismatch fails here, before anything is written
    dm.connect(tokenizer)  # tokenises every text once, or maps the token table cached under run.root
    setup_s = round(time.time() - start, 2)
    precision, why = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    matmul = configure_matmul(cfg.trainer.accelerator)
    print(f"precision: {precision} ({why})" + (f"; float32 matmul precision {matmul} (TF32)" if matmul else ""),
          flush=True)
    loader = dm.loader_settings
    print(f"data loaders: {loader.num_workers} worker(s), pin_memory={loader.pin_memory} ({loader.why})", flush=True)

    run_dir = plan.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    is_zero = L.fabric.utilities.rank_zero.rank_zero_only.rank == 0
    if is_zero:
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    chain = open_chain(plan, tokenizer, writes=is_zero)
    # The report run (under `wandb agent`: the agent's run) is open during the chain and gets a step per stage;
    # a stage's W&B run ends once on_stage has seen the stage (a pruner marks it).
    report = is_zero and (cfg.run.logger == "wandb" or wandb_report.under_agent())
    if report:
        wandb_report.open_report(plan)
    teacher = CurrentTeacher()  # the frozen bi-encoder each next stage learns from
    done: list[dict] = []
    try:
        untrained = run_teacher(plan, dm, chain, teacher, encoder)
        for i, name in enumerate(plan.stage_names):
            if i:
                run_student(plan, dm, chain, teacher, i - 1)
            row = chain.row(name)
            done.append(row)
            if report:
                wandb_report.log_stage(i, row)
            if on_stage is not None:
                try:
                    on_stage(i, row)
                except BaseException as err:
                    outcome = "pruned" if _is_pruned(err) else "stopped"
                    tracking.finish_open_stage(row, outcome=outcome)
                    if report:
                        wandb_report.finish_report(plan, done, outcome)
                    raise
            tracking.finish_open_stage(row)
    except BaseException:
        if report and wandb_report.is_open():  # a failed or interrupted stage: the run keeps the stages done
            wandb_report.finish_report(plan, [r for r in done if r is not None], "stopped")
        raise

    rows = [r for r in chain.rows() if r["name"] in plan.stage_names]  # not a stage an earlier config had here
    if is_zero:
        _check_test_split(chain, rows)
    result = {"run_dir": str(run_dir), "data": dm.kg.summary(), "stages": rows, "untrained_test": untrained,
              "wall_time_s": round(time.time() - start, 1), "setup_s": setup_s,
              "untrained_eval_s": chain.untrained_eval_s, "peak_rss_mib": peak_rss_mib(),
              "data_checks": data_checks(dm), "precision": precision, "precision_reason": why,
              "float32_matmul_precision": matmul, "data_loader": loader.as_dict()}
    if is_zero:
        summary = write_report(run_dir, result)
        print(summary, flush=True)
        if report:
            wandb_report.finish_report(plan, rows)
    return result


def _is_pruned(err: BaseException) -> bool:
    """`on_stage` pruned the chain (optuna.TrialPruned, or a class of that name where optuna is absent)."""
    try:
        from optuna import TrialPruned
    except ImportError:
        return type(err).__name__ == "TrialPruned"
    return isinstance(err, TrialPruned)

