import json
import pathlib
import os
import shutil
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
from transformers import AutoModel

from kgc_kd import fit
from kgc_kd.chain.driver import build_datamodule
from kgc_kd.config import load_config
from kgc_kd.lit.distill_module import DistillModule
from kgc_kd.lit.kgc_module import KGCModule
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.plm import load_tokenizer

STAGES = "stages=[{name: pre, layers: 4, mask_rate: 0.2}, {name: g2, layers: 2, mask_rate: 0.1}, {name: g1, layers: 1, score_loss: kl, beta: 0.0}]"


def _argv(tmp_path, plm, *extra):
    return ["data=synthetic", f"model.plm={plm}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            "data.batch_size=8", "data.max_length=24", "optim.lr=1e-3", "teacher.epochs=1", "trainer.max_epochs=1",
            f"run.root={tmp_path}", "run.name=chain", "eval.untrained_baseline=false", *extra]


def test_three_stage_chain_runs_reports_and_exports(tmp_path, plm4):
    result = fit.main(_argv(tmp_path, plm4, STAGES))
    run = tmp_path / "chain"
    rows = result["stages"]
    assert [r["name"] for r in rows] == ["teacher", "pre", "g2", "g1"]
    assert [r["layers"] for r in rows] == [4, 4, 2, 1]
    assert [r["teacher_layers"] for r in rows[1:]] == [4, 4, 2]  # each grade taught by the stage before
    assert rows[2]["layer_map"] == [1, 3] and rows[3]["layer_map"] == [1]
    terms = [{t["name"]: t for t in r["terms"]} for r in rows[1:]]  # each stage's resolved spec
    assert terms[1]["score"]["params"]["loss"] == "mse" and terms[1]["mgfd"]["weight"] == 0.1  # the group's defaults
    assert terms[2]["score"]["params"]["loss"] == "kl" and "mgfd" not in terms[2]  # per-stage overrides (beta 0)
    assert terms[2]["ce"]["weight"] == pytest.approx(0.9)
    sizes = [r["params_no_embeddings"] for r in rows]
    assert sizes[0] == sizes[1] > sizes[2] > sizes[3]
    for r in rows:
        assert r["queries_per_s"] > 0 and r["entities_per_s"] > 0 and 0 < r["test"]["mrr"] <= 1
        assert (run / "stages" / r["name"] / "export" / "query" / "config.json").is_file()
    report = json.loads((run / "report.json").read_text())
    assert report["rows"][3]["params_total_change_pct"] < 0
    md = (run / "report.md").read_text()
    assert all(f"| {n} |" in md for n in ("teacher", "pre", "g2", "g1"))
    assert (run / "report.png").stat().st_size > 1000
    # student checkpoints carry no teacher weights and load with weights_only=True
    ckpt = torch.load(rows[2]["best_checkpoint"])
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])


def test_export_loads_with_transformers_and_gives_the_same_scores(tmp_path, plm4):
    result = fit.main(_argv(tmp_path, plm4, "stages=[{name: g2, layers: 2}]"))
    row = result["stages"][1]
    export = tmp_path / "chain" / "stages" / "g2" / "export"
    q = AutoModel.from_pretrained(export / "query")
    assert q.config.num_hidden_layers == 2
    # re-evaluate the exported model from disk: the same test metrics as recorded at the end of the stage
    cfg = load_config(_argv(tmp_path, plm4))
    dm = build_datamodule(cfg, load_tokenizer(str(plm4)))
    module = KGCModule({"plm": str(plm4)}, {}, {"chunk_size": 256, "rerank_weight": 0.0, "rerank_hops": 0, "topk": 0},
                       8, net=BiEncoder.from_pretrained(export))
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).test(module, datamodule=dm, verbose=False)
    got = module.last_eval["test"]["metrics"]
    for key in ("mrr", "mr", "hits@1", "hits@10"):
        assert got[key] == pytest.approx(row["test"][key], abs=1e-6)


def test_rerun_skips_finished_stages_and_resumes_an_interrupted_one(tmp_path, plm4, monkeypatch):
    argv = _argv(tmp_path, plm4, "stages=[{name: a, layers: 2}, {name: b, layers: 1, epochs: 2}]")
    original = DistillModule.training_step

    def crash_in_second_epoch_of_b(self, batch, batch_idx):
        if self.stage_name == "b" and self.current_epoch == 1:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DistillModule, "training_step", crash_in_second_epoch_of_b)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit.main(argv)
    run = tmp_path / "chain"
    state = json.loads((run / "chain_state.json").read_text())
    assert state["order"] == ["teacher", "a"]
    assert (run / "stages" / "b" / "checkpoints" / "last.ckpt").is_file()
    teacher_export_mtime = (run / "stages/teacher/export/biencoder.json").stat().st_mtime_ns

    monkeypatch.setattr(DistillModule, "training_step", original)
    calls = []
    monkeypatch.setattr(KGCModule, "training_step", lambda *a, **k: calls.append(1))  # teacher must not retrain
    result = fit.main(argv)
    assert not calls
    rows = {r["name"]: r for r in result["stages"]}
    assert rows["teacher"] == state["stages"]["teacher"] and rows["a"] == state["stages"]["a"]
    assert (run / "stages/teacher/export/biencoder.json").stat().st_mtime_ns == teacher_export_mtime
    steps_per_epoch = rows["a"]["steps"]  # one epoch
    assert rows["b"]["steps"] == 2 * steps_per_epoch and rows["b"]["epochs"] == 2


@pytest.mark.parametrize("preset", ["makd", "pmd_makd"])
def test_chain_with_a_makd_preset_finishes_and_logs_each_term(tmp_path, plm4, preset):
    result = fit.main(_argv(tmp_path, plm4, f"distill={preset}", "stages=[{name: g2, layers: 2, mask_rate: 0.2}]"))
    row = result["stages"][1]
    assert row["name"] == "g2" and 0 < row["test"]["mrr"] <= 1
    assert [t["name"] for t in row["terms"]][:2] == ["ce", "score"]
    logged = (tmp_path / "chain" / "stages" / "g2" / "logs" / "metrics.csv").read_text().splitlines()[0]
    for term in ("train/ce", "train/attn_kl", "train/ffn_mid_mse", "train/hidden_mse"):
        assert term in logged
    # projections train with the student but are not part of the export
    export = tmp_path / "chain" / "stages" / "g2" / "export"
    assert BiEncoder.from_pretrained(export).query_encoder.config.num_hidden_layers == 2
    assert not any("projections" in p.name for p in export.rglob("*"))


PRESETS = sorted(f.stem for f in (pathlib.Path(__file__).resolve().parents[1] / "conf" / "distill").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "minilm_v2"])
def test_every_distill_preset_trains_a_grade_and_records_its_resolved_spec(tmp_path, plm4, preset):
    """Every conf/distill preset trains a grade (two steps) on the tiny PLM; report.json holds the stage's resolved
    terms with their parameters, and each term is logged."""
    result = fit.main(_argv(tmp_path, plm4, f"distill={preset}", "trainer.limit_train_batches=2", "trainer.log_every_n_steps=1",
                            "stages=[{name: g2, layers: 2, mask_rate: 0.2}]"))
    report = json.loads((tmp_path / "chain" / "report.json").read_text())
    row = next(r for r in report["stages"] if r["name"] == "g2")
    assert row["terms"] == result["stages"][1]["terms"] and row["terms"][0]["name"] == "ce"
    assert all(set(t) == {"name", "weight", "params"} for t in row["terms"]) and row["teacher"] == "teacher"
    logged = (tmp_path / "chain" / "stages" / "g2" / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert all(f"train/{t['name']}" in logged for t in row["terms"])


def test_minilm_v2s_relation_heads_are_checked_against_the_width_before_training(tmp_path, plm4):
    """48 relation heads (MiniLM v2 for base-size teachers) cannot split the tiny PLM's 32 dimensions: refused by
    preflight, naming the term, before any stage trains."""
    with pytest.raises(SystemExit) as exit_info:
        fit.main(_argv(tmp_path, plm4, "distill=minilm_v2", "stages=[{name: g2, layers: 2}]"))
    assert exit_info.value.code == 2 and not (tmp_path / "chain").exists()


def test_compressed_students_prune_the_vocabulary_share_an_encoder_and_resume(tmp_path, plm4):
    stages = ("stages=[{name: p4, layers: 4, prune_vocab: true}, "
              "{name: s2, layers: 2, shared_encoder: true, prune_vocab: true}]")
    result = fit.main(_argv(tmp_path, plm4, stages))
    teacher, p4, s2 = result["stages"]
    assert p4["vocab_size"] < teacher.get("vocab_size", 10**9) and p4["params_total"] < teacher["params_total"]
    assert not p4["shared_encoder"] and s2["shared_encoder"] and s2["params_entity"] == s2["params_query"]
    assert s2["params_total"] < p4["params_total"] / 2
    export = tmp_path / "chain" / "stages" / "s2" / "export"
    meta = json.loads((export / "biencoder.json").read_text())
    assert meta["shared"] and len(meta["vocab"]["kept_ids"]) == s2["vocab_size"]
    # the export is standalone: its own (pruned) tokenizer + model reproduce the recorded test metrics
    tok = load_tokenizer(str(export / "query"))
    assert len(tok) == s2["vocab_size"]
    cfg = load_config(_argv(tmp_path, plm4))
    dm = build_datamodule(cfg, tok)
    module = KGCModule({"plm": str(plm4)}, {}, {"chunk_size": 256, "rerank_weight": 0.0, "rerank_hops": 0, "topk": 0},
                       8, net=BiEncoder.from_pretrained(export))
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).test(module, datamodule=dm, verbose=False)
    assert module.last_eval["test"]["metrics"]["mrr"] == pytest.approx(s2["test"]["mrr"], abs=1e-6)
    # a rerun resumes from the pruned exports (read with the source tokenizer) without retraining
    again = fit.main(_argv(tmp_path, plm4, stages))
    assert [r["test"] for r in again["stages"]] == [r["test"] for r in result["stages"]]


KILL_STAGES = "stages=[{name: s1, layers: 2}, {name: s2, layers: 1, epochs: 4}]"


def _files(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_sigkill_mid_student_stage_then_rerun_completes_like_an_uninterrupted_run(tmp_path, plm4):
    """The same command, killed with SIGKILL in s2's second epoch, then rerun: finished stages are not
    retrained and the final report equals an uninterrupted run's (the RNG state travels in last.ckpt)."""
    extra = (KILL_STAGES, "run.logger=csv")
    reference = fit.main(_argv(tmp_path / "ref", plm4, *extra))

    argv = _argv(tmp_path / "killed", plm4, *extra)
    run = tmp_path / "killed" / "chain"
    marker = run / "stages" / "s2" / "checkpoints" / "last.ckpt"  # s2's first epoch is done
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "kgc_kd.fit", *argv], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not marker.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()  # SIGKILL: no handler runs, whatever was being written stays as it was
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the chain ended before it was killed:\n{err[-3000:]}"
    state = json.loads((run / "chain_state.json").read_text())
    assert state["order"] == ["teacher", "s1"], "the kill must land inside stage s2"
    finished = {name: _files(run / "stages" / name / "export") for name in ("teacher", "s1")}

    rerun = subprocess.run([sys.executable, "-m", "kgc_kd.fit", *argv], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())
    rows = {r["name"]: r for r in report["stages"]}
    assert list(rows) == ["teacher", "s1", "s2"]
    for name in ("teacher", "s1"):  # not retrained: the same row, the same exported bytes
        assert rows[name] == state["stages"][name]
        assert _files(run / "stages" / name / "export") == finished[name]
    assert (run / "stages" / "s2" / "logs" / "resume-1" / "metrics.csv").is_file()  # resumed, not restarted
    assert rows["s2"]["epochs"] == 4 and rows["s2"]["steps"] == 4 * rows["s1"]["steps"]
    for ref in reference["stages"]:
        for key, value in ref["test"].items():
            assert rows[ref["name"]]["test"][key] == pytest.approx(value, abs=1e-6), (ref["name"], key)


def test_same_config_and_seed_give_identical_metrics(tmp_path, plm4):
    extra = ("stages=[{name: s1, layers: 2, mask_rate: 0.2}]", "teacher.epochs=2")
    first = fit.main(_argv(tmp_path / "a", plm4, *extra))
    second = fit.main(_argv(tmp_path / "b", plm4, *extra))
    assert [r["test"] for r in first["stages"]] == [r["test"] for r in second["stages"]]
    assert [r["best_val_mrr"] for r in first["stages"]] == [r["best_val_mrr"] for r in second["stages"]]
    other = fit.main(_argv(tmp_path / "c", plm4, *extra, "run.seed=7"))
    assert [r["test"] for r in other["stages"]] != [r["test"] for r in first["stages"]]  # the seed matters


def test_non_finite_loss_stops_the_stage_naming_step_and_term_and_keeps_the_last_checkpoint(
        tmp_path, plm4, monkeypatch, capsys):
    import kgc_kd.distill.terms as dmod

    calls = []

    def score_turning_nan(*args, **kwargs):
        calls.append(1)
        value = dmod.score_loss.__wrapped__(*args, **kwargs)
        return value * float("nan") if len(calls) > 15 else value

    score_turning_nan.__wrapped__ = dmod.score_loss
    monkeypatch.setattr(dmod, "score_loss", score_turning_nan)
    with pytest.raises(SystemExit) as exit_info:
        fit.main(_argv(tmp_path, plm4, "stages=[{name: s1, layers: 2, epochs: 2}]"))
    assert exit_info.value.code == fit.EXIT_NON_FINITE
    state = json.loads((tmp_path / "chain" / "chain_state.json").read_text())
    assert state["order"] == ["teacher"]
    steps_per_epoch = state["stages"]["teacher"]["steps"]  # the teacher ran one epoch of the same loader
    assert steps_per_epoch < 15 < 2 * steps_per_epoch
    err = capsys.readouterr().err
    assert "stage s1: loss is nan at step 15 " in err and f"(epoch 1, batch {15 - steps_per_epoch})" in err
    assert "score=nan (weight 0.1)" in err and "ce=" not in err  # only the non-finite term is named
    last = tmp_path / "chain" / "stages" / "s1" / "checkpoints" / "last.ckpt"
    assert str(last.resolve()) in err  # the run's stages/s1 links to the stage store's entry
    ckpt = torch.load(last, weights_only=True)  # the end of epoch 0: every weight finite
    assert ckpt["global_step"] == steps_per_epoch
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_sigterm_saves_a_checkpoint_mid_epoch_exits_143_and_the_rerun_finishes(tmp_path, plm4, monkeypatch, capsys):
    argv = _argv(tmp_path, plm4, "stages=[{name: s1, layers: 2, epochs: 2}]")
    original = DistillModule.training_step

    def sigterm_at_step_3(self, batch, batch_idx):
        if self.global_step == 3:  # what a cluster's pre-emption sends
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DistillModule, "training_step", sigterm_at_step_3)
    with pytest.raises(SystemExit) as exit_info:
        fit.main(argv)
    assert exit_info.value.code == fit.EXIT_SIGTERM == 143
    out, err = capsys.readouterr()
    last = tmp_path / "chain" / "stages" / "s1" / "checkpoints" / "last.ckpt"
    assert f"SIGTERM: saved {last.resolve()} at step 4" in out and "rerun the same command to resume" in err
    assert torch.load(last, weights_only=True)["global_step"] == 4  # the step under way finished, then it stopped

    monkeypatch.setattr(DistillModule, "training_step", original)
    result = fit.main(argv)
    rows = {r["name"]: r for r in result["stages"]}
    assert rows["s1"]["steps"] == 2 * rows["teacher"]["steps"] and rows["s1"]["epochs"] == 2


def test_validation_every_second_epoch_through_the_chain(tmp_path, plm4, monkeypatch):
    """trainer.check_val_every_n_epoch reaches every stage; ModelCheckpoint(monitor=val/mrr) keeps the validated
    epoch and the final test uses it; a stage too short to validate tests its last weights. Validation ranks a
    fixed subset (eval.val_max_queries), re-ranked with neighbourhoods searched once for the whole chain."""
    from kgc_kd.data.datamodule import KGDataModule

    searches = []
    original = KGDataModule.rerank_neighbourhoods

    def counting(self, hops, device, **kwargs):
        before = dict(self._neighbourhoods)
        out = original(self, hops, device, **kwargs)
        searches.extend(k for k in self._neighbourhoods if k not in before)
        return out

    monkeypatch.setattr(KGDataModule, "rerank_neighbourhoods", counting)
    stages = "stages=[{name: g2, layers: 2, epochs: 3}, {name: g1, layers: 1, epochs: 1}]"
    result = fit.main(_argv(tmp_path, plm4, stages, "teacher.epochs=3", "trainer.check_val_every_n_epoch=2",
                            "eval.val_max_queries=6", "eval.rerank_weight=0.05", "eval.rerank_hops=2",
                            "run.logger=csv"))
    rows = {r["name"]: r for r in result["stages"]}
    assert searches == [(2, "cpu")]  # one search serves every validation and test of every stage
    run = tmp_path / "chain"
    for name in ("teacher", "g2"):
        row = rows[name]
        assert row["epochs"] == 3 and row["best_checkpoint"].endswith("best-epoch001.ckpt")
        assert 0 < row["best_val_mrr"] <= 1
        logged = (run / "stages" / name / "logs" / "metrics.csv").read_text().splitlines()
        head = logged[0].split(",")
        val_epochs = {line.split(",")[head.index("epoch")] for line in logged[1:]
                      if line.split(",")[head.index("val/mrr")]}
        assert val_epochs == {"1"}  # validated after the second epoch only
        # the exported (tested) weights are the best checkpoint's, not those after the third epoch
        best = torch.load(row["best_checkpoint"])["state_dict"]
        net = BiEncoder.from_pretrained(run / "stages" / name / "export")
        key = "query_encoder.encoder.layer.0.intermediate.dense.weight"
        assert torch.equal(net.state_dict()[key], best["net." + key])
    g1 = rows["g1"]  # one epoch, validation every second: never validated, tested with its final weights
    assert g1["best_checkpoint"] == "" and g1["best_val_mrr"] is None and 0 < g1["test"]["mrr"] <= 1


def test_students_train_with_the_teachers_pre_batch_negatives_unless_a_stage_overrides(tmp_path, plm4):
    stages = ("stages=[{name: pre, layers: 4}, {name: g2, layers: 2, pre_batch: 0, self_negative: false}]")
    result = fit.main(_argv(tmp_path, plm4, stages, "model.pre_batch=1", "model.pre_batch_weight=0.5"))
    rows = {r["name"]: r for r in result["stages"]}
    on = {"in_batch": True, "pre_batch": 1, "pre_batch_weight": 0.5, "self_negative": True}
    assert rows["teacher"]["negatives"] == on and rows["pre"]["negatives"] == on  # carried into the student
    assert rows["g2"]["negatives"] == {**on, "pre_batch": 0, "self_negative": False}  # the stage's override
    for name, k in (("pre", 1), ("g2", 0)):  # what each module was built with
        hp = torch.load(rows[name]["best_checkpoint"])["hyper_parameters"]
        assert hp["model"]["pre_batch"] == k
    md = (tmp_path / "chain" / "report.md").read_text()
    assert md.count("negatives in-batch + pre-batch x1 (weight 0.5) + self") == 2
    assert "- g2:" in md and "negatives in-batch;" in md


def test_on_slurm_a_stray_hpc_checkpoint_in_the_working_directory_is_never_loaded(tmp_path, plm4, monkeypatch):
    """Lightning's test(ckpt_path=None) on SLURM loads the newest hpc_ckpt_N.ckpt of its default_root_dir: the
    evaluation-only trainers (untrained baseline) must not use the working directory for that."""
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "hpc_ckpt_1.ckpt").write_bytes(b"not a checkpoint")  # a previous job's leftover
    monkeypatch.chdir(work)
    for key, value in {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_JOB_ID": "7",
                       "SLURM_JOB_NAME": "kgc-kd", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
                       "SLURM_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "15243"}.items():
        monkeypatch.setenv(key, value)
    saved = signal.getsignal(signal.SIGUSR1)
    try:
        argv = [a for a in _argv(tmp_path, plm4, "stages=[{name: g1, layers: 1}]") if "untrained_baseline" not in a]
        result = fit.main(argv + ["trainer.limit_train_batches=2"])
    finally:
        signal.signal(signal.SIGUSR1, saved)
    assert result["untrained_test"]["mrr"] > 0 and [r["name"] for r in result["stages"]] == ["teacher", "g1"]


# ---- the stage store: a stage trained once under its key, reused by every run under the same root -------------
def test_runs_that_differ_in_a_student_setting_share_one_teacher_and_a_teacher_change_trains_a_new_one(
        tmp_path, plm4, monkeypatch):
    teacher_fits = []
    original = KGCModule.on_fit_start
    monkeypatch.setattr(KGCModule, "on_fit_start", lambda self: (teacher_fits.append(1), original(self))[1])
    base = [a for a in _argv(tmp_path, plm4, "stages=[{name: g2, layers: 2}]") if a != "run.name=chain"]
    first = fit.main([*base, "distill.alpha=0.1"])
    second = fit.main([*base, "distill.alpha=0.3"])
    assert len(teacher_fits) == 1  # the second run reused the first one's teacher
    assert first["run_dir"] != second["run_dir"]
    t1, t2 = first["stages"][0], second["stages"][0]
    assert t2 == {**t1, "reused_from_store": True} and first["untrained_test"] == second["untrained_test"]
    assert second["stages"][1]["terms"] != first["stages"][1]["terms"]  # each trained its own student
    assert (pathlib.Path(second["run_dir"]) / "stages" / "teacher").resolve() == \
        (pathlib.Path(first["run_dir"]) / "stages" / "teacher").resolve()
    fit.main([*base, "distill.alpha=0.1", "teacher.lr=5e-4"])  # a teacher setting: another teacher
    assert len(teacher_fits) == 2


def test_a_stage_interrupted_in_one_run_resumes_in_the_next(tmp_path, plm4, monkeypatch):
    """Run A dies in the second epoch of its first student; run B (another run directory: its second student
    differs) needs the same first student, resumes it from A's last checkpoint and trains only the rest."""
    base = [a for a in _argv(tmp_path, plm4) if a != "run.name=chain"]
    stages = "stages=[{{name: a, layers: 2, epochs: 2}}, {{name: b, layers: 1, mask_rate: {}}}]"
    original = DistillModule.training_step
    steps = []

    def crash_in_second_epoch_of_a(self, batch, batch_idx):
        if self.stage_name == "a" and self.current_epoch == 1:
            raise RuntimeError("simulated crash")
        steps.append((self.stage_name, self.current_epoch))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DistillModule, "training_step", crash_in_second_epoch_of_a)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit.main([*base, stages.format(0.0)])
    first_epoch = len(steps)
    monkeypatch.setattr(DistillModule, "training_step",
                        lambda self, b, i: (steps.append((self.stage_name, self.current_epoch)), original(self, b, i))[1])
    result = fit.main([*base, stages.format(0.1)])
    rows = {r["name"]: r for r in result["stages"]}
    assert rows["a"]["epochs"] == 2 and rows["a"]["steps"] == 2 * first_epoch
    assert ("a", 0) not in steps[first_epoch:]  # epoch 0 of `a` was not trained again
    assert ("b", 0) in steps


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_the_chains_own_trainers_run_a_gpu_runs_optimizer_clipping_and_precision_on_the_cpu(
        tmp_path, plm4, precision, monkeypatch):
    """The CPU seam of a GPU run's configuration: the chain's own stage Trainers (their callbacks, the default
    `trainer.gradient_clip_val` 10, the precision plugin) with the optimizer a CUDA run builds (fused AdamW:
    kgc_kd.runtime.devices' seam adds torch's fused CPU kernel), two steps per stage. Before the fix of lit/base.py
    `configure_gradient_clipping` every bf16-mixed stage stopped at step 1 ("The current optimizer, AdamW, does
    not allow for gradient clipping because it performs unscaling of gradients internally"). 16-mixed on the CPU
    is turned into bf16-mixed by Lightning ("AMP with fp16 is not supported on CPU"); its scaler path is tested
    with an explicit CPU GradScaler in test_kgc_module.py::test_a_fused_adamw_clips_in_every_precision."""
    import kgc_kd.runtime.devices as devices

    monkeypatch.setattr(devices, "FUSED_ADAMW_DEVICE_TYPES", {"cuda", "cpu"})
    result = fit.main(_argv(tmp_path, plm4, f"trainer.precision={precision}", "trainer.limit_train_batches=2",
                            "trainer.limit_val_batches=2", "stages=[{name: g2, layers: 2, mask_rate: 0.2}]"))
    assert result["precision"] == precision
    for row in result["stages"]:
        assert row["steps"] == 2 and 0 < row["test"]["mrr"] <= 1
        last = tmp_path / "chain" / "stages" / row["name"] / "checkpoints" / "last.ckpt"
        saved = torch.load(last, weights_only=True)
        groups = saved["optimizer_states"][0]["param_groups"]
        assert groups and all(g["fused"] is True for g in groups)


# ---- the current teacher: the driver's, handed from one stage to the next ------------------------------------
def _tiny_net(seed: int = 0) -> BiEncoder:
    from conftest import make_tiny_bert

    return BiEncoder(make_tiny_bert(num_layers=1, seed=seed))


def test_hand_over_gives_the_next_stage_a_frozen_copy():
    from kgc_kd.chain.driver import CurrentTeacher

    current = CurrentTeacher()
    assert current.net is None
    net = _tiny_net().train()
    current.hand_over(net)
    teacher = current.net
    assert teacher is not net and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in net.query_encoder.parameters()) and net.training  # the stage's own net
    key = "query_encoder.embeddings.word_embeddings.weight"
    before = teacher.state_dict()[key].clone()
    with torch.no_grad():
        net.state_dict()[key].add_(1.0)  # training on does not move the teacher
    assert torch.equal(teacher.state_dict()[key], before)


def test_a_reused_stage_teaches_from_its_export(tmp_path):
    """A done stage is not trained again: it joins the run (its row, from the store) and its export is the next
    stage's frozen teacher."""
    from kgc_kd.chain.driver import CurrentTeacher, _reuse_if_done
    from kgc_kd.chain.store import ChainStore
    from kgc_kd.data.synthetic import synthetic_kg

    keys = {"teacher": "k0"}
    first = ChainStore(tmp_path / "a", keys=keys, store_root=tmp_path)
    first.open_stage("teacher")
    net = _tiny_net(seed=4)
    first.export("teacher", net, synthetic_kg(num_entities=12, num_relations=2, num_triples=40), max_length=24,
                 link_graph=False)
    first.record("teacher", {"name": "teacher"})
    second, current = ChainStore(tmp_path / "b", keys=keys, store_root=tmp_path), CurrentTeacher()
    assert _reuse_if_done(second, "pmd9", current) is False and current.net is None  # not done: trained
    assert _reuse_if_done(second, "teacher", current) is True
    assert second.rows() == [{"name": "teacher", "reused_from_store": True}]
    assert not current.net.training and not any(p.requires_grad for p in current.net.parameters())
    for (k, a), (_, b) in zip(net.state_dict().items(), current.net.state_dict().items()):
        assert torch.equal(a, b), k


# ---- content-keyed stages: the KG's content decides reuse; a changed test split is evaluated again ------------
def _kgbert_nations(directory: pathlib.Path) -> pathlib.Path:
    """Nations (1592/199/201 triples) written in the KG-BERT layout, as a user brings a KG directory."""
    from kgc_kd.data.builtin import load_builtin

    kg = load_builtin("nations")
    directory.mkdir(parents=True)
    (directory / "entity2text.txt").write_text("".join(f"{e}\t{n}\n" for e, n in zip(kg.entity_ids, kg.entity_names)))
    (directory / "relation2text.txt").write_text(
        "".join(f"{r}\t{t}\n" for r, t in zip(kg.relation_ids, kg.relation_texts)))
    for split, file in (("train", "train.tsv"), ("valid", "dev.tsv"), ("test", "test.tsv")):
        (directory / file).write_text("".join(f"{kg.entity_ids[h]}\t{kg.relation_ids[r]}\t{kg.entity_ids[t]}\n"
                                              for h, r, t in kg.split(split).tolist()))
    return directory


def _keep_lines(path: pathlib.Path, n: int) -> None:
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:n]))


def test_a_cut_test_split_is_evaluated_again_and_a_cut_train_split_trains_again(tmp_path, tiny_plm_dir, monkeypatch,
                                                                                   capsys):
    """Issue 28, case 1, on a KG directory changed in place between runs of one command. Cutting test.tsv keeps
    every stage (the key leaves the test split out) but evaluates each again: the rows, report, predictions and
    export KG are the new split's, equal to a run trained from scratch on it. Cutting train.tsv trains again."""
    fits = []
    for cls in (KGCModule, DistillModule):
        monkeypatch.setattr(cls, "on_fit_start", lambda self, o=cls.on_fit_start: (fits.append(type(self)), o(self))[1])
    kg_dir = _kgbert_nations(tmp_path / "nations")
    argv = ["model.plm=" + str(tiny_plm_dir), "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            "data.batch_size=8", "data.max_length=24", "teacher.epochs=1", "trainer.max_epochs=1",
            "trainer.limit_train_batches=2", "run.name=chain", "stages=[{name: g1, layers: 1}]"]
    run = lambda root, data: fit.main([*argv, f"data={data}", f"run.root={root}"])  # noqa: E731
    first = run(tmp_path / "runs", kg_dir)
    assert len(fits) == 2 and [r["test_data"]["triples"] for r in first["stages"]] == [201, 201]

    _keep_lines(kg_dir / "test.tsv", 40)
    capsys.readouterr()
    second = run(tmp_path / "runs", kg_dir)
    out = capsys.readouterr().out
    assert len(fits) == 2  # nothing trained
    for name in ("teacher", "g1"):
        assert f"[chain] {name}: tested before on another test split" in out and "(40 triples" in out
    store = tmp_path / "runs" / "stage-store"
    assert sorted(p.name.split("-")[0] for p in store.iterdir() if p.is_dir()) == ["g1", "teacher"]  # same keys
    rows = {r["name"]: r for r in second["stages"]}
    for name, before in zip(("teacher", "g1"), first["stages"]):
        row = rows[name]
        assert row["test_data"]["triples"] == 40 and row["test_data"]["sha256"] != before["test_data"]["sha256"]
        assert row["test"]["mrr"] != before["test"]["mrr"] and row["steps"] == before["steps"] == 2
        stage = tmp_path / "runs" / "chain" / "stages" / name
        assert len((stage / "predictions_test.jsonl").read_text().splitlines()) == 80  # 40 triples, both directions
        assert json.loads((stage / "export" / "kg.json").read_text())["num_triples"] == {"train": 1592, "valid": 199,
                                                                                          "test": 40}
        assert json.loads((stage / "stage.json").read_text())["row"]["test"] == row["test"]
    report = json.loads((tmp_path / "runs" / "chain" / "report.json").read_text())
    assert [r["test"] for r in report["stages"]] == [rows["teacher"]["test"], rows["g1"]["test"]]
    md = (tmp_path / "runs" / "chain" / "report.md").read_text()
    assert "1,592 / 199 / 40 train/valid/test" in md and f"{rows['teacher']['test']['mrr']:.4f}" in md
    assert f"{first['stages'][0]['test']['mrr']:.4f}" not in md

    # the reference: a run trained from scratch on the cut KG gives the re-evaluated figures
    fresh = run(tmp_path / "fresh", shutil.copytree(kg_dir, tmp_path / "fresh-data" / "nations"))
    assert len(fits) == 4
    for got, want in zip(second["stages"], fresh["stages"]):
        assert got["test"] == pytest.approx(want["test"], abs=1e-6), got["name"]
    assert second["untrained_test"] == pytest.approx(fresh["untrained_test"], abs=1e-6)

    third = run(tmp_path / "runs", kg_dir)  # unchanged inputs: reused as they are
    assert len(fits) == 4 and "tested before" not in capsys.readouterr().out
    assert [r["test"] for r in third["stages"]] == [r["test"] for r in second["stages"]]
    _keep_lines(kg_dir / "train.tsv", 300)
    cut = run(tmp_path / "runs", kg_dir)
    assert len(fits) == 6  # another training set: both stages trained again under new keys
    assert [r["test_data"]["triples"] for r in cut["stages"]] == [40, 40]
    assert len([p for p in store.iterdir() if p.name.startswith("teacher-") and p.is_dir()]) == 2


def test_a_run_directory_reused_by_another_chain_reports_only_its_own_stages(tmp_path, tiny_plm_dir):
    """run.name=chain again with the teacher alone: the teacher is reused, and the report holds no row of the
    student an earlier configuration left in the same run directory."""
    argv = _argv(tmp_path, tiny_plm_dir, "trainer.limit_train_batches=2")
    fit.main([*argv, "stages=[{name: g1, layers: 1}]"])
    alone = fit.main([*argv, "stages=[{name: g1, layers: 1}]", "teacher.only=true"])
    assert [r["name"] for r in alone["stages"]] == ["teacher"]
    assert [r["name"] for r in json.loads((tmp_path / "chain" / "report.json").read_text())["stages"]] == ["teacher"]
