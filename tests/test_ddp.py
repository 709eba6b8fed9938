"""Data-parallel equivalence on CPU (gloo, 2 processes): a global-batch loss, its gradients and the
evaluation metrics equal those of one process that sees the whole batch."""

import copy

import lightning as L
import pytest
import torch

from conftest import make_tiny_bert, make_tokenizer
from kgc_kd.chain.stage_spec import objective_terms
from kgc_kd.data.datamodule import KGDataModule
from kgc_kd.lit.distill_module import DistillModule
from kgc_kd.lit.kgc_module import KGCModule
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.student import build_student

pytestmark = pytest.mark.slow

MODEL = {"plm": "unused", "shared_encoder": False, "pooling": "mean", "temperature": 0.05, "learn_temperature": True,
         "margin": 0.02, "self_negative": True, "pre_batch": 0, "pre_batch_weight": 0.5}
OPTIM = {"lr": 1e-3, "weight_decay": 0.0, "no_decay_norm_bias": False, "warmup_steps": 0, "betas": [0.9, 0.999],
         "eps": 1e-8}
EVAL = {"chunk_size": 64, "rerank_weight": 0.0, "rerank_hops": 0, "topk": 0}


class ShardedDM(KGDataModule):
    """Rank r trains on rows r, r + W, ... in order, so the two ranks' first batches together are exactly
    the single process's first batch (Lightning's own sampler would reshuffle)."""

    @property
    def train_examples(self):
        rows = super().train_examples
        t = self.trainer
        return rows if t is None or t.world_size == 1 else rows[t.global_rank::t.world_size]


def _dm(batch_size):
    return ShardedDM("synthetic", batch_size=batch_size, eval_batch_size=7, max_length=24, shuffle=False,
                        tokenizer=make_tokenizer(),
                        synthetic={"num_entities": 20, "num_relations": 2, "num_triples": 40, "seed": 1})


class Record(L.Callback):
    """Rank 0 writes step `step`'s loss and (already all-reduced) gradients to a file."""

    def __init__(self, path, step=0):
        self.path, self.step = str(path), step

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.step and trainer.is_global_zero:
            grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            torch.save({"loss": float(trainer.callback_metrics.get("train/loss", torch.nan)), "grads": grads},
                       self.path)


def _run(module, dm, devices, path, step=0, **kw):
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                        max_steps=step + 1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, limit_val_batches=0, callbacks=[Record(path, step)],
                        use_distributed_sampler=False, **kw)
    trainer.fit(module, datamodule=dm)
    return torch.load(path, weights_only=True)


def _compare(single, multi):
    assert set(single["grads"]) == set(multi["grads"])
    for name, g in single["grads"].items():
        assert torch.allclose(g, multi["grads"][name], atol=1e-5, rtol=1e-4), name


def test_teacher_step_on_two_processes_equals_one_process_on_the_global_batch(tmp_path):
    enc = make_tiny_bert(dropout=0.0)
    single = _run(KGCModule(MODEL, OPTIM, EVAL, 8, encoder=copy.deepcopy(enc)), _dm(8), 1, tmp_path / "one.pt")
    multi = _run(KGCModule(MODEL, OPTIM, EVAL, 4, encoder=copy.deepcopy(enc)), _dm(4), 2, tmp_path / "two.pt")
    assert multi["loss"] == pytest.approx(single["loss"], abs=1e-5)
    _compare(single, multi)


def test_distillation_step_on_two_processes_equals_one_process(tmp_path):
    teacher = BiEncoder(make_tiny_bert(num_layers=2, dropout=0.0))
    stage = {"name": "s", "mask_rate": 0.0, "terms": objective_terms({"alpha": 0.2, "beta": 0.0})}

    def module(bs):
        student, _ = build_student(teacher, 1)
        return DistillModule(MODEL, OPTIM, EVAL, stage, bs, student=student, teacher=teacher)

    torch.manual_seed(0)
    single = _run(module(8), _dm(8), 1, tmp_path / "one.pt")
    multi = _run(module(4), _dm(4), 2, tmp_path / "two.pt")
    _compare(single, multi)


# lr 0: the second step sees the first step's weights in both runs, and its pre-batch columns hold the first
# global batch's entity vectors (the first step has none), so the comparison isolates the pre-batch path.
FROZEN = {**OPTIM, "lr": 0.0}
PRE_BATCH = {**MODEL, "pre_batch": 1, "pre_batch_weight": 1.0}  # weight 1: the columns weigh as in-batch ones


def test_teacher_pre_batch_step_on_two_processes_equals_one_process(tmp_path):
    enc = make_tiny_bert(dropout=0.0)
    single = _run(KGCModule(PRE_BATCH, FROZEN, EVAL, 8, encoder=copy.deepcopy(enc)), _dm(8), 1, tmp_path / "one.pt",
                  step=1)
    multi = _run(KGCModule(PRE_BATCH, FROZEN, EVAL, 4, encoder=copy.deepcopy(enc)), _dm(4), 2, tmp_path / "two.pt",
                 step=1)
    no_pb = _run(KGCModule(MODEL, FROZEN, EVAL, 8, encoder=copy.deepcopy(enc)), _dm(8), 1, tmp_path / "none.pt",
                 step=1)
    assert multi["loss"] == pytest.approx(single["loss"], abs=1e-5)
    assert single["loss"] > no_pb["loss"] + 1e-3  # the pre-batch columns took part (more negatives, higher CE)
    _compare(single, multi)


def test_distillation_pre_batch_step_on_two_processes_equals_one_process(tmp_path):
    teacher = BiEncoder(make_tiny_bert(num_layers=2, dropout=0.0))
    stage = {"name": "s", "mask_rate": 0.0, "terms": objective_terms({"alpha": 0.2, "beta": 0.0})}

    def module(bs, model=PRE_BATCH):
        student, _ = build_student(teacher, 1)
        return DistillModule(model, FROZEN, EVAL, stage, bs, student=student, teacher=teacher)

    single = _run(module(8), _dm(8), 1, tmp_path / "one.pt", step=1)
    multi = _run(module(4), _dm(4), 2, tmp_path / "two.pt", step=1)
    no_pb = _run(module(8, MODEL), _dm(8), 1, tmp_path / "none.pt", step=1)
    assert multi["loss"] == pytest.approx(single["loss"], abs=1e-5)
    assert abs(single["loss"] - no_pb["loss"]) > 1e-3
    _compare(single, multi)


def test_evaluation_on_two_processes_reports_the_single_process_metrics(tmp_path):
    net = BiEncoder(make_tiny_bert(dropout=0.0))
    metrics = {}
    for devices in (1, 2):
        module = KGCModule(MODEL, OPTIM, EVAL, 8, net=net)
        trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                            logger=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.test(module, datamodule=_dm(8), verbose=False)
        metrics[devices] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert metrics[1]["test/mrr"] > 0
    for key in ("test/mrr", "test/mr", "test/hits@1", "test/hits@10", "test/tail/mrr", "test/head/mrr"):
        assert metrics[2][key] == pytest.approx(metrics[1][key], abs=1e-6), key


class SaveEvaluation(L.Callback):
    """Rank 0 writes the module's last evaluation (ranks, top-k, triples, metrics) to a file."""

    def __init__(self, path):
        self.path = str(path)

    def _save(self, trainer, pl_module):
        if trainer.is_global_zero:
            torch.save(pl_module.last_eval, self.path)

    on_validation_end = on_test_end = _save


def test_sharded_evaluation_with_padding_budget_and_rerank_equals_one_process(tmp_path):
    """21 entities and 3 validation queries on 2 ranks: the sampler pads both loaders with a repeat. Each
    rank keeps only its own query vectors and ranks them against the whole entity matrix (all-gathered
    batch by batch) in one-query chunks (a 1-byte budget), with re-ranking; the ranks, top-k and metrics,
    padding dropped, equal one process's."""
    net = BiEncoder(make_tiny_bert(dropout=0.0))
    ev = {"chunk_size": 64, "rerank_weight": 0.05, "rerank_hops": 1, "topk": 3, "memory_budget_gb": 1e-9}
    runs = {}
    for devices in (1, 2):
        dm = KGDataModule("synthetic", batch_size=4, eval_batch_size=4, max_length=24, shuffle=False,
                          tokenizer=make_tokenizer(), val_max_queries=3,
                          synthetic={"num_entities": 21, "num_relations": 2, "num_triples": 40, "seed": 1})
        path = tmp_path / f"eval{devices}.pt"
        trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                            logger=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[SaveEvaluation(path)])
        module = KGCModule(MODEL, OPTIM, ev, 4, net=net)
        trainer.validate(module, datamodule=dm, verbose=False)
        val = torch.load(path, weights_only=False)["val"]
        trainer.test(module, datamodule=dm, verbose=False)
        runs[devices] = {"val": val, "test": torch.load(path, weights_only=False)["test"]}
    assert len(runs[1]["val"]["triples"]) == 3 and runs[2]["val"]["memory_plan"]["chunk_rows"] == 1
    assert runs[2]["val"]["memory_plan"]["queries_per_rank"] == 2  # its own share, padded: not all 3
    for split in ("val", "test"):
        one, two = runs[1][split], runs[2][split]
        assert torch.equal(one["triples"], two["triples"]), split
        for name in ("optimistic", "pessimistic", "realistic"):
            assert torch.equal(getattr(one["output"].ranks, name), getattr(two["output"].ranks, name)), (split, name)
        assert one["metrics"] == pytest.approx(two["metrics"], abs=1e-6)
    assert torch.equal(runs[1]["test"]["output"].topk_ids, runs[2]["test"]["output"].topk_ids)
    assert torch.allclose(runs[1]["test"]["output"].topk_scores, runs[2]["test"]["output"].topk_scores, atol=1e-6)
