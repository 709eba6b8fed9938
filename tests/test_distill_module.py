import copy

import lightning as L
import pytest
import torch

from conftest import make_tiny_bert, make_tokenizer
from kgc_kd.chain.stage_spec import objective_terms
from kgc_kd.config import OBJECTIVE_KEYS
from kgc_kd.data.datamodule import KGDataModule
from kgc_kd.lit.distill_module import DistillModule
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.student import build_student

MODEL = {"plm": "unused", "shared_encoder": False, "pooling": "mean", "temperature": 0.05, "learn_temperature": True,
         "margin": 0.0, "self_negative": True, "pre_batch": 0, "pre_batch_weight": 0.5}
OPTIM = {"lr": 1e-3, "weight_decay": 1e-4, "no_decay_norm_bias": False, "warmup_steps": 0, "betas": [0.9, 0.999],
         "eps": 1e-8}
EVAL = {"chunk_size": 64, "rerank_weight": 0.0, "rerank_hops": 0, "topk": 0}


def _dm(dedup=True):
    return KGDataModule("synthetic", batch_size=8, eval_batch_size=32, max_length=24, tokenizer=make_tokenizer(),
                        dedup_entities=dedup,
                        synthetic={"num_entities": 20, "num_relations": 2, "num_triples": 40, "seed": 1})


def resolved(stage):
    """A stage dict with its objective keys (alpha/beta/...) resolved into terms, as the run plan gives them."""
    return {"name": "s", **stage, "terms": objective_terms({k: stage.get(k) for k in OBJECTIVE_KEYS})}


def _teacher(dropout=0.0, layers=2):
    return BiEncoder(make_tiny_bert(num_layers=layers, dropout=dropout))


def _module(stage, teacher=None, student=None):
    teacher = teacher if teacher is not None else _teacher()
    if student is None:
        student, _ = build_student(teacher, stage.get("layers", 2))
    m = DistillModule(MODEL, OPTIM, EVAL, resolved(stage), 8, student=student, teacher=teacher)
    m.mask_id = make_tokenizer().mask_token_id
    return m


def _batch(dm):
    return dm.train_dataloader().collate_fn([dm.train_examples[i] for i in range(8)])


@pytest.mark.parametrize("dedup", [True, False])
def test_student_equal_to_teacher_gives_zero_score_and_mgfd(dedup):
    teacher = _teacher()
    m = _module({"alpha": 0.3, "beta": 0.3, "mask_rate": 0.3}, teacher=teacher, student=copy.deepcopy(teacher))
    m.eval()  # no dropout; margin 0 in MODEL
    terms = m.distill_terms(_batch(_dm(dedup)))
    assert float(terms["score"]) == pytest.approx(0.0, abs=1e-10)
    assert float(terms["mgfd"]) == pytest.approx(0.0, abs=1e-10)


def test_mask_rate_zero_gives_exactly_zero_mgfd_for_a_different_student():
    m = _module({"alpha": 0.1, "beta": 0.5, "mask_rate": 0.0, "layers": 1})
    terms = m.distill_terms(_batch(_dm()))
    assert float(terms["mgfd"]) == 0.0
    assert float(terms["score"]) > 0.0


def test_teacher_and_student_see_the_same_masked_input():
    m = _module({"alpha": 0.1, "beta": 0.1, "mask_rate": 0.5})
    batch = _batch(_dm())
    torch.manual_seed(0)
    views = m._views(batch, 0.5)
    ids = views["hr"]["inputs"]["input_ids"]
    assert (ids == m.mask_id).any() and (ids[:, 0] != m.mask_id).all()
    # one masked view is computed per step and both models read it (the same tensors)
    s_out, t_out = m._run(m.net, views, False, None), m._run(m.teacher, views, False, None)
    assert s_out["hr"]["hidden"].shape == t_out["hr"]["hidden"].shape


@pytest.mark.parametrize("stage", [
    {"alpha": 0.1, "beta": 0.1, "mask_rate": 0.2, "mgfd": "pmd"},
    {"alpha": 0.1, "beta": 0.2, "mask_rate": 0.3, "mgfd": "generation"},
    {"alpha": 0.3, "beta": 0.0, "pkd": 0.2, "score_loss": "kl", "kd_temperature": 2.0},
])
def test_gradients_reach_only_student_and_generator(stage):
    m = _module({**stage, "layers": 1})
    terms = m.distill_terms(_batch(_dm()))
    loss = sum(v for k, v in terms.items() if k != "acc@1")
    loss.backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert all(p.grad is not None for p in m.net.query_encoder.encoder.parameters())
    assert all(p.grad is not None for p in m.net.entity_encoder.encoder.parameters())
    assert all(p.grad is not None for p in m.objective.parameters())  # the MGD generators, when there


def test_a_stage_keeps_the_teacher_frozen_in_eval_and_out_of_checkpoints(tmp_path):
    teacher = _teacher(dropout=0.1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    m = _module({"alpha": 0.1, "beta": 0.1, "mask_rate": 0.2, "layers": 1}, teacher=teacher)
    modes = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append((pl_module.teacher.training, pl_module.net.training))

    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[Probe()])
    trainer.fit(m, datamodule=_dm())
    assert modes and all(mode == (False, True) for mode in modes)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in teacher.parameters())
    params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not params & {id(p) for p in teacher.parameters()}
    path = tmp_path / "x.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path)  # default weights_only=True
    assert ckpt["state_dict"] and not any(k.startswith("teacher.") for k in ckpt["state_dict"])


def test_a_stage_runs_in_bf16_mixed_on_cpu(tmp_path):
    m = _module({"alpha": 0.1, "beta": 0.1, "mask_rate": 0.2, "layers": 1})
    trainer = L.Trainer(accelerator="cpu", max_steps=2, precision="bf16-mixed", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(m, datamodule=_dm())
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])


def test_weights_above_one_are_rejected():
    with pytest.raises(ValueError, match=r"distill\.alpha \+ distill\.beta \+ distill\.pkd = 0\.6 \+ 0\.5 \+ 0 > 1"):
        _module({"alpha": 0.6, "beta": 0.5})


def test_ce_only_stage_never_runs_the_teacher(monkeypatch):
    m = _module({"alpha": 0.0, "beta": 0.0, "pkd": 0.0, "mask_rate": 0.2, "layers": 1})

    def boom(*args, **kwargs):
        raise AssertionError("the teacher ran")

    monkeypatch.setattr(m.teacher, "encode_with_states", boom)
    terms = m.distill_terms(_batch(_dm()))
    assert set(terms) == {"ce", "acc@1"}


@pytest.mark.parametrize("dedup", [True, False])
def test_the_teacher_encodes_each_input_of_a_step_once(dedup):
    """One forward per input tensor of the batch (hr + distinct entities, or hr + tails + heads), however many
    terms read the teacher's outputs: score, mgfd and pkd share them."""
    m = _module({"alpha": 0.2, "beta": 0.2, "pkd": 0.1, "mask_rate": 0.2, "layers": 1})
    rows_seen = []
    for enc in {id(e): e for e in (m.teacher.query_encoder, m.teacher.entity_encoder)}.values():
        enc.register_forward_hook(lambda mod, args, kwargs, out: rows_seen.append(kwargs["input_ids"].shape[0]),
                                  with_kwargs=True)
    batch = _batch(_dm(dedup))
    m.distill_terms(batch)
    if dedup:
        assert rows_seen == [8, batch["entities"]["input_ids"].shape[0]]
    else:
        assert rows_seen == [8, 8, 8]


class _Attached:
    """What `prebatch_mask` reads from a trainer: the datamodule's known train triples, one process."""

    def __init__(self, dm):
        self.datamodule, self.world_size = dm, 1


def test_pre_batch_columns_hold_the_student_and_the_teacher_vectors_of_the_last_batch():
    teacher = _teacher()
    dm = _dm()
    model = {**MODEL, "pre_batch": 1, "pre_batch_weight": 1.0}
    m = DistillModule(model, OPTIM, EVAL, resolved({"alpha": 0.3, "beta": 0.0}), 8,
                      student=copy.deepcopy(teacher), teacher=teacher)
    m.mask_id = make_tokenizer().mask_token_id
    m._trainer = _Attached(dm)
    m.eval()
    loader = iter(dm.train_dataloader())
    first, second = next(loader), next(loader)
    assert m.prebatch.empty and m.teacher_prebatch.empty
    m.distill_terms(first)
    tails = m.net.encode_entity(first["entities"])[first["tail_index"]]
    assert torch.allclose(m.prebatch.vectors, tails) and torch.allclose(m.teacher_prebatch.vectors, tails)
    assert torch.equal(m.prebatch.triples, first["triples"])
    terms = m.distill_terms(second)
    # a student equal to its teacher scores every column alike, pre-batch columns included
    assert float(terms["score"]) == pytest.approx(0.0, abs=1e-10)
    # CE over in-batch + pre-batch + self columns, rebuilt from the spec's formulas
    from kgc_kd.data.negatives import false_negative_mask
    from kgc_kd.models.contrastive import contrastive_logits, infonce_loss

    hr = m.net.encode_query(second["hr"])
    ent = m.net.encode_entity(second["entities"])
    t, h = ent[second["tail_index"]], ent[second["head_index"]]
    tr = second["triples"]
    pb_mask = false_negative_mask(tr[:, :2], tr[:, 2], first["triples"][:, 2], dm.known_train)
    logits = contrastive_logits(hr, t, m.net.inv_t, fn_mask=second["fn_mask"], head=h, self_mask=second["self_mask"],
                                prebatch=tails, prebatch_mask=pb_mask, prebatch_weight=1.0)
    assert logits.shape == (8, 8 + 8 + 1)
    assert float(terms["ce"]) == pytest.approx(float(infonce_loss(logits)), abs=1e-5)


def test_without_score_distillation_there_is_no_teacher_buffer():
    m = DistillModule({**MODEL, "pre_batch": 2}, OPTIM, EVAL, resolved({"alpha": 0.0, "beta": 0.2}), 8,
                      student=build_student(_teacher(), 1)[0], teacher=_teacher())
    assert m.prebatch is not None and m.teacher_prebatch is None


def test_unresolved_objective_settings_are_refused():
    with pytest.raises(ValueError, match="takes resolved terms"):
        DistillModule(MODEL, OPTIM, EVAL, {"name": "s", "alpha": 0.3, "beta": 0.0}, 8,
                      student=build_student(_teacher(), 1)[0], teacher=_teacher())
