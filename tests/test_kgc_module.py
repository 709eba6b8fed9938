import lightning as L
import pytest
import torch

from conftest import make_tiny_bert, make_tokenizer
from kgc_kd.data.datamodule import KGDataModule
from kgc_kd.lit.base import NonFiniteLossError
from kgc_kd.lit.kgc_module import KGCModule
from kgc_kd.models.contrastive import contrastive_logits, infonce_loss

MODEL = {"plm": "unused", "shared_encoder": False, "pooling": "mean", "temperature": 0.05, "learn_temperature": True,
         "margin": 0.02, "self_negative": True, "pre_batch": 0, "pre_batch_weight": 0.5}
OPTIM = {"lr": 3e-3, "weight_decay": 1e-4, "no_decay_norm_bias": False, "warmup_steps": 0,
         "betas": [0.9, 0.999], "eps": 1e-8}
EVAL = {"chunk_size": 7, "rerank_weight": 0.0, "rerank_hops": 0, "topk": 3}


def _dm(batch_size=8):
    return KGDataModule("synthetic", batch_size=batch_size, eval_batch_size=16, max_length=24,
                        tokenizer=make_tokenizer(), synthetic={"num_entities": 20, "num_relations": 2,
                                                               "num_triples": 40, "seed": 1})


def _trainer(**kw):
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0)
    return L.Trainer(**{**args, **kw})


def _eval_loss(module, batch) -> float:
    """The training objective on a fixed batch, without dropout."""
    module.eval()
    with torch.no_grad():
        v = module.net(batch)
        logits = contrastive_logits(v["hr"], v["tail"], module.net.inv_t, margin=0.02, fn_mask=batch["fn_mask"],
                                    head=v["head"], self_mask=batch["self_mask"])
    module.train()
    return float(infonce_loss(logits))


def test_training_reduces_loss_and_moves_both_encoders():
    torch.manual_seed(0)
    dm = _dm()
    module = KGCModule(MODEL, OPTIM, EVAL, batch_size=8, encoder=make_tiny_bert(dropout=0.0))
    before = {n: p.detach().clone() for n, p in module.net.named_parameters()}
    batch = dm.train_dataloader().collate_fn([dm.train_examples[i] for i in range(8)])
    loss0 = _eval_loss(module, batch)
    _trainer(max_epochs=8, limit_val_batches=0).fit(module, datamodule=dm)
    assert _eval_loss(module, batch) < 0.7 * loss0
    moved = {n.split(".")[0] for n, p in module.net.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"query_encoder", "entity_encoder", "log_inv_t"}


def test_validation_and_test_report_filtered_metrics():
    dm = _dm()
    module = KGCModule(MODEL, OPTIM, EVAL, batch_size=8, encoder=make_tiny_bert())
    trainer = _trainer(max_epochs=1, limit_train_batches=2)
    trainer.fit(module, datamodule=dm)
    assert "val/mrr" in trainer.callback_metrics and "val/tail/hits@10" in trainer.callback_metrics
    trainer.test(module, datamodule=dm, verbose=False)
    ev = module.last_eval["test"]
    n_queries = 2 * len(dm.kg.test)
    assert len(ev["triples"]) == n_queries and ev["output"].topk_ids.shape == (n_queries, 3)
    m = ev["metrics"]
    assert 0 < m["mrr"] <= 1 and 1 <= m["mr"] <= dm.kg.num_entities
    assert abs(m["mrr"] - (m["tail/mrr"] + m["head/mrr"]) / 2) < 1e-6


def test_pre_batch_negatives_run_and_fill_the_buffer():
    dm = _dm()
    module = KGCModule({**MODEL, "pre_batch": 2}, OPTIM, EVAL, batch_size=8, encoder=make_tiny_bert())
    _trainer(max_steps=3, limit_val_batches=0).fit(module, datamodule=dm)
    assert module.prebatch.filled.all()


def test_optimizer_groups_and_schedule():
    dm = _dm()
    module = KGCModule({**MODEL}, {**OPTIM, "no_decay_norm_bias": True, "warmup_steps": 2}, EVAL, batch_size=8,
                       encoder=make_tiny_bert())
    trainer = _trainer(max_steps=4, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    opt = trainer.optimizers[0]
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    # linear warmup (min(2, 4 // 10) = 0 steps) then linear decay to 0 at step 4
    assert opt.param_groups[0]["lr"] == 0.0


def test_encoders_train_with_dropout_even_when_loaded_in_eval_mode():
    enc = make_tiny_bert().eval()  # what from_pretrained returns
    module = KGCModule(MODEL, OPTIM, EVAL, batch_size=8, encoder=enc)
    seen = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(all(m.training for m in pl_module.net.modules()))

    _trainer(max_steps=2, limit_val_batches=0, callbacks=[Probe()]).fit(module, datamodule=_dm())
    assert seen == [True, True]


class GradNorms(L.Callback):
    """The total gradient norm seen before clipping (Lightning's hook) and the one the optimizer steps with
    (a step post-hook on the optimizer: the gradients it stepped with, clipped and unscaled; a pre-hook would run
    before Lightning's closure computes them)."""

    def __init__(self):
        self.before: list[float] = []
        self.stepped: list[float] = []

    @staticmethod
    def _norm(params) -> float:
        return float(sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None) ** 0.5)

    def on_train_start(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        opt.register_step_post_hook(
            lambda o, args, kwargs: self.stepped.append(self._norm(p for g in o.param_groups for p in g["params"])))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before.append(self._norm(pl_module.net.parameters()))


def test_gradient_norm_before_clipping_is_logged():
    ref = GradNorms()
    module = KGCModule(MODEL, OPTIM, EVAL, batch_size=8, encoder=make_tiny_bert())
    trainer = _trainer(max_steps=1, limit_val_batches=0, log_every_n_steps=1, gradient_clip_val=1e-3, callbacks=[ref])
    trainer.fit(module, datamodule=_dm())
    assert ref.before[0] > 1e-3  # so the clipping did act, after the norm was logged
    assert float(trainer.callback_metrics["train/grad_norm"]) == pytest.approx(ref.before[0], rel=1e-5)
    assert ref.stepped[0] == pytest.approx(1e-3, rel=1e-4)


def _precision(precision: str) -> dict:
    """Trainer arguments for `precision` on the CPU. Lightning turns `precision="16-mixed"` into bf16-mixed on the
    CPU ("AMP with fp16 is not supported on CPU"), so 16-mixed takes its plugin explicitly: fp16 autocast and a
    CPU GradScaler, the scaler logic a GPU's 16-mixed run executes."""
    if precision != "16-mixed":
        return {"precision": precision}
    from lightning.pytorch.plugins import MixedPrecision

    return {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_a_fused_adamw_clips_in_every_precision(precision, algorithm, monkeypatch):
    """The optimizer a CUDA run builds (fused AdamW: kgc_kd.runtime.devices' seam adds the CPU's fused kernel) with the
    default clipping, in each precision: Lightning's own clipping refused it under bf16-mixed and 16-mixed
    (RuntimeError at the first step). The step sees clipped TRUE gradients: under 16-mixed the scaler unscaled
    them first, so the logged norm is the fp32 run's (not 65,536 times it) and the stepped norm is the bound."""
    import kgc_kd.runtime.devices as devices

    monkeypatch.setattr(devices, "FUSED_ADAMW_DEVICE_TYPES", {"cuda", "cpu"})
    clip = 1e-3
    seen = {}
    for p in dict.fromkeys(["32-true", precision]):
        torch.manual_seed(0)
        ref = GradNorms()
        module = KGCModule(MODEL, OPTIM, EVAL, batch_size=8, encoder=make_tiny_bert(dropout=0.0))
        trainer = _trainer(max_steps=2, limit_val_batches=0, log_every_n_steps=1, gradient_clip_val=clip,
                           gradient_clip_algorithm=algorithm, callbacks=[ref], **_precision(p))
        trainer.fit(module, datamodule=_dm())
        opt = trainer.optimizers[0]
        assert opt.defaults["fused"] is True and opt._step_supports_amp_scaling
        assert (getattr(trainer.precision_plugin, "scaler", None) is not None) == (p == "16-mixed")
        assert len(ref.stepped) == 2 and trainer.global_step == 2
        seen[p] = (float(trainer.callback_metrics["train/grad_norm"]), ref.stepped)
    norm, stepped = seen[precision]
    assert norm == pytest.approx(seen["32-true"][0], rel=0.1)  # true gradients, whatever the precision
    if algorithm == "norm":
        assert stepped == pytest.approx([clip, clip], rel=1e-3)
    else:  # every element within +-clip: the norm is at most clip * sqrt(#elements)
        n = sum(p.numel() for p in module.net.parameters() if p.requires_grad)
        assert all(0 < s <= clip * n ** 0.5 * (1 + 1e-6) for s in stepped)
        assert all(float(p.grad.abs().max()) <= clip for p in module.net.parameters() if p.grad is not None)


def test_non_finite_loss_raises_naming_the_stage_step_and_term(monkeypatch):
    import kgc_kd.lit.kgc_module as kmod

    calls = []

    def nan_on_third_call(logits):
        calls.append(1)
        loss = infonce_loss(logits)
        return loss * float("inf") if len(calls) == 3 else loss

    monkeypatch.setattr(kmod, "infonce_loss", nan_on_third_call)
    module = KGCModule(MODEL, OPTIM, EVAL, batch_size=8, encoder=make_tiny_bert())
    before = {}

    class Snapshot(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            before.update({n: p.detach().clone() for n, p in pl_module.net.named_parameters()})

    with pytest.raises(NonFiniteLossError, match=r"stage teacher: loss is inf at step 2 \(epoch 0, batch 2\); "
                                                 r"non-finite term\(s\): ce=inf \(weight 1\)\. Training stopped"):
        _trainer(max_epochs=1, limit_val_batches=0, callbacks=[Snapshot()]).fit(module, datamodule=_dm())
    # the step that produced the inf loss never updated the weights
    assert all(torch.equal(p, before[n]) for n, p in module.net.named_parameters())


@pytest.mark.parametrize("accelerator", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def test_adamw_is_fused_exactly_when_the_parameters_live_on_cuda(accelerator):
    torch.manual_seed(0)
    module = KGCModule(MODEL, OPTIM, EVAL, 8, encoder=make_tiny_bert())
    trainer = _trainer(accelerator=accelerator, max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=_dm())
    assert bool(trainer.optimizers[0].defaults["fused"]) == (accelerator == "gpu")


class EntityMatrixSeen(L.Callback):
    """The evaluation's entity matrix (dtype, shape) after every test batch of the entity loader."""

    def __init__(self):
        self.seen = set()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        matrix = pl_module._eval_store.get("entity_matrix")
        if dataloader_idx == 0:
            self.seen.add((matrix.dtype, tuple(matrix.shape), matrix.data_ptr()))


@pytest.mark.parametrize("precision,dtype", [("32-true", torch.float32), ("bf16-mixed", torch.bfloat16)])
def test_entity_vectors_fill_one_matrix_in_the_runs_dtype(precision, dtype):
    dm = _dm()
    module = KGCModule(MODEL, OPTIM, {**EVAL, "memory_budget_gb": 8.0}, batch_size=8, encoder=make_tiny_bert())
    seen = EntityMatrixSeen()
    _trainer(precision=precision, callbacks=[seen]).test(module, datamodule=dm, verbose=False)
    # one matrix (one allocation) for every batch of the 20 entities (eval batches of 16)
    dim = module.net.entity_encoder.config.hidden_size
    assert [(d, s) for d, s, _ in seen.seen] == [(dtype, (dm.kg.num_entities, dim))]
    plan = module.last_eval["test"]["memory_plan"]
    assert plan["dtype_bytes"] == (2 if dtype == torch.bfloat16 else 4)
    assert plan["chunk_rows"] == min(EVAL["chunk_size"], 2 * len(dm.kg.test))
    assert 0 < module.last_eval["test"]["metrics"]["mrr"] <= 1


def test_a_budget_of_one_query_row_reports_the_same_evaluation():
    dm = _dm()
    encoder = make_tiny_bert(dropout=0.0)
    runs = {}
    for budget in (None, 1e-9):  # 1 byte: one query per chunk
        module = KGCModule(MODEL, OPTIM, {**EVAL, "memory_budget_gb": budget}, batch_size=8, encoder=encoder)
        _trainer().test(module, datamodule=dm, verbose=False)
        runs[budget] = module.last_eval["test"]
    assert runs[1e-9]["memory_plan"]["chunk_rows"] == 1
    assert runs[None]["memory_plan"]["chunk_rows"] == min(EVAL["chunk_size"], 2 * len(dm.kg.test)) > 1
    assert runs[1e-9]["metrics"] == runs[None]["metrics"]
    assert torch.equal(runs[1e-9]["output"].topk_ids, runs[None]["output"].topk_ids)
    assert torch.equal(runs[1e-9]["triples"], runs[None]["triples"])


# ---- the finite-loss check every N steps (what a CUDA run does, here on the CPU) ---------------------------------
def _inf_from_call(monkeypatch, bad: int):
    """infonce_loss returns inf on call `bad` (0-based) only; later losses are finite again."""
    import kgc_kd.lit.kgc_module as kmod

    calls = []

    def loss_fn(logits):
        calls.append(1)
        loss = infonce_loss(logits)
        return loss * float("inf") if len(calls) == bad + 1 else loss

    monkeypatch.setattr(kmod, "infonce_loss", loss_fn)


class Steps(L.Callback):
    """Weights after every finished batch, and the optimizer's step count."""

    def __init__(self):
        self.weights, self.batches = [], 0

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.batches += 1
        self.weights.append({n: p.detach().clone() for n, p in pl_module.net.named_parameters()})


def _fit_until_error(every, precision="32-true", *, max_epochs=1, batch_size=8, **kw):
    optim = {**OPTIM, "check_finite_every_n_steps": every}
    module = KGCModule(MODEL, optim, EVAL, batch_size=batch_size, encoder=make_tiny_bert(dropout=0.0))
    steps = Steps()
    with pytest.raises(NonFiniteLossError) as err:
        _trainer(max_epochs=max_epochs, limit_val_batches=0, callbacks=[steps], **_precision(precision), **kw).fit(
            module, datamodule=_dm(batch_size))
    return module, steps, str(err.value)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_checked_every_n_steps_the_weights_stay_those_before_the_first_bad_step(precision, monkeypatch):
    """Fused AdamW (a CUDA run's optimizer) gets the device flag as found_inf; under 16-mixed the scaler skips the
    poisoned steps. Either way: no update from the first inf loss on, and the error, raised at the N-step check,
    names that step."""
    import kgc_kd.runtime.devices as devices

    monkeypatch.setattr(devices, "FUSED_ADAMW_DEVICE_TYPES", {"cuda", "cpu"})
    _inf_from_call(monkeypatch, bad=2)
    module, steps, msg = _fit_until_error(4, precision, batch_size=4)
    assert steps.batches == 3  # batches 0-2 ran to their end; batch 3 ran the check and raised
    assert "loss is inf at step 2 (epoch 0, batch 2); non-finite term(s): ce=inf (weight 1)" in msg
    assert "check every 4 steps; the update of that step and of the 1 after it were skipped on the device" in msg
    before_bad = steps.weights[1]
    assert any(not torch.equal(steps.weights[0][n], before_bad[n]) for n in before_bad)  # updates did run before
    assert all(torch.equal(p.detach(), before_bad[n]) for n, p in module.net.named_parameters())
    opt = module.trainer.optimizers[0]
    state_steps = {int(s["step"]) for s in opt.state.values()}
    assert state_steps == {2}  # the fused kernel reverted its step count on the skipped steps
    assert all(torch.isfinite(s["exp_avg"]).all() and torch.isfinite(s["exp_avg_sq"]).all() for s in opt.state.values())


def test_checked_every_n_steps_without_a_device_skip_checks_every_step(monkeypatch):
    """A non-fused optimizer without a scaler cannot skip an update on the device: the check runs every step."""
    _inf_from_call(monkeypatch, bad=2)
    module, steps, msg = _fit_until_error(4)
    assert steps.batches == 2 and module._finite_every[1] == 1
    assert "at step 2 (epoch 0, batch 2)" in msg and "Training stopped before the update" in msg
    assert all(torch.equal(p.detach(), steps.weights[1][n]) for n, p in module.net.named_parameters())


def test_a_bad_step_near_the_epoch_end_is_reported_at_the_epoch_end(monkeypatch):
    import kgc_kd.runtime.devices as devices

    monkeypatch.setattr(devices, "FUSED_ADAMW_DEVICE_TYPES", {"cuda", "cpu"})
    _inf_from_call(monkeypatch, bad=1)
    module, steps, msg = _fit_until_error(1000, max_epochs=3)
    n = len(module.trainer.train_dataloader)
    assert n > 2 and steps.batches == n  # the whole first epoch ran, its end read the flag
    assert "at step 1 (epoch 0, batch 1)" in msg and f"of the {n - 2} after it were skipped" in msg
    assert all(torch.equal(p.detach(), steps.weights[0][n_]) for n_, p in module.net.named_parameters())


def test_the_check_interval_defaults_to_every_step_on_the_cpu_and_the_log_interval_on_cuda(monkeypatch):
    import kgc_kd.runtime.devices as devices

    monkeypatch.setattr(devices, "FUSED_ADAMW_DEVICE_TYPES", {"cuda", "cpu"})
    module = KGCModule(MODEL, OPTIM, EVAL, batch_size=8, encoder=make_tiny_bert())
    _trainer(max_steps=2, limit_val_batches=0, log_every_n_steps=7).fit(module, datamodule=_dm())
    assert module._finite_every[1] == 1 and module._finite_state is None  # no key in optim: unset, CPU
    from types import SimpleNamespace

    class OnCuda(KGCModule):  # what the resolution sees on a CUDA device (nothing runs there)
        device = torch.device("cuda", 0)

    probe = OnCuda(MODEL, OPTIM, EVAL, batch_size=8, encoder=make_tiny_bert())
    fused = SimpleNamespace(defaults={"fused": True})
    probe._trainer = SimpleNamespace(log_every_n_steps=7, optimizers=[fused], precision_plugin=None)
    monkeypatch.setattr(torch, "zeros", lambda *a, **k: torch.empty(0))  # no CUDA allocation on this machine
    monkeypatch.setattr(torch, "full", lambda *a, **k: torch.empty(0))
    assert probe._finite_interval() == 7 and probe._finite_state["skip"] == "found_inf"
    assert fused.found_inf is probe._finite_state["flag"]
