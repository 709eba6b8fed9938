import json
import math

import pytest
import torch
from transformers import AutoModel

from conftest import make_tiny_bert
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.student import (
    build_student,
    encoder_layers,
    num_layers,
    resolve_layer_map,
    shrink_encoder,
    uniform_layer_map,
)


def _inputs(ids):
    ids = torch.tensor(ids)
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}


X = _inputs([[2, 9, 24, 3, 10, 3], [2, 12, 3, 0, 0, 0]])


def _layer_state(encoder, i):
    return encoder_layers(encoder)[i].state_dict()


def _assert_layer_equal(student, k, source, i):
    s, t = _layer_state(student, k), _layer_state(source, i)
    assert s.keys() == t.keys() and len(s) > 0
    for name in s:
        assert torch.equal(s[name], t[name]), (k, i, name)


def _perturb(module, seed=123):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


# ---- layer maps ------------------------------------------------------------------------------------------
def test_uniform_layer_map_matches_pmd_12_to_6():
    assert uniform_layer_map(12, 6) == [1, 3, 5, 7, 9, 11]


@pytest.mark.parametrize("n", [1, 3, 6, 12])
def test_uniform_layer_map_same_size_is_identity(n):
    assert uniform_layer_map(n, n) == list(range(n))


@pytest.mark.parametrize("n", [1, 2, 6, 12])
def test_uniform_layer_map_to_one_layer_keeps_the_last(n):
    assert uniform_layer_map(n, 1) == [n - 1]


@pytest.mark.parametrize("source,student", [(12, 9), (12, 4), (7, 3), (24, 6)])
def test_uniform_layer_map_is_increasing_in_range_and_ends_at_last(source, student):
    m = uniform_layer_map(source, student)
    assert len(m) == student and m[-1] == source - 1
    assert all(0 <= i < source for i in m) and all(a < b for a, b in zip(m, m[1:]))


@pytest.mark.parametrize("student", [0, 13, -1])
def test_uniform_layer_map_rejects_bad_sizes(student):
    with pytest.raises(ValueError):
        uniform_layer_map(12, student)


def test_resolve_layer_map_defaults_to_uniform():
    assert resolve_layer_map(12, 6, None) == [1, 3, 5, 7, 9, 11]


@pytest.mark.parametrize("layers,layer_map", [(9, [0, 2, 3, 5, 6, 7, 9, 10, 11]), (3, [2, 6, 10]),
                                              (6, [1, 3, 5, 7, 9, 11])])
def test_resolve_layer_map_accepts_pmd_maps(layers, layer_map):
    assert resolve_layer_map(12, layers, layer_map) == layer_map


def test_resolve_layer_map_converts_to_int():
    out = resolve_layer_map(12, 3, [2.0, 6, 10])
    assert out == [2, 6, 10] and all(type(i) is int for i in out)


@pytest.mark.parametrize("layers,layer_map", [(3, [2, 6]), (3, [2, 6, 10, 11]), (3, [2, 6, 12]), (3, [-1, 6, 10])])
def test_resolve_layer_map_rejects_bad_maps(layers, layer_map):
    with pytest.raises(ValueError):
        resolve_layer_map(12, layers, layer_map)


# ---- shrink_encoder --------------------------------------------------------------------------------------
def test_shrink_keeps_exactly_the_mapped_layers_and_embeddings():
    src = make_tiny_bert(num_layers=4, dropout=0.0, seed=1)
    before = {k: v.clone() for k, v in src.state_dict().items()}
    student = shrink_encoder(src, [3, 1])
    assert num_layers(student) == 2 and student.config.num_hidden_layers == 2
    assert num_layers(src) == 4 and src.config.num_hidden_layers == 4
    _assert_layer_equal(student, 0, src, 3)
    _assert_layer_equal(student, 1, src, 1)
    s_emb, t_emb = student.embeddings.state_dict(), src.embeddings.state_dict()
    assert s_emb.keys() == t_emb.keys()
    for name in s_emb:
        assert torch.equal(s_emb[name], t_emb[name])
    # the whole student state: embeddings + the two layers, nothing else
    expected = {k for k in src.state_dict() if not k.startswith("encoder.layer.")}
    expected |= {f"encoder.layer.{k}.{n}" for k in range(2) for n in _layer_state(src, 0)}
    assert set(student.state_dict()) == expected
    # no shared storage: modifying the student leaves the source untouched
    src_ptrs = {p.data_ptr() for p in src.parameters()}
    assert all(p.data_ptr() not in src_ptrs for p in student.parameters())
    _perturb(student)
    for k, v in src.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_shrink_output_equals_manual_forward_through_selected_layers():
    src = make_tiny_bert(num_layers=4, dropout=0.0, seed=2).eval()
    student = shrink_encoder(src, [3, 1]).eval()
    with torch.no_grad():
        out = student(**X).last_hidden_state
        h = src.embeddings(input_ids=X["input_ids"], token_type_ids=X["token_type_ids"])
        ext = (1.0 - X["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
        for i in (3, 1):
            h = src.encoder.layer[i](h, attention_mask=ext)
            h = h[0] if isinstance(h, tuple) else h
        # control: the full source differs from the two-layer student
        full = src(**X).last_hidden_state
    real = X["attention_mask"].bool()
    assert torch.allclose(out[real], h[real], atol=1e-5)
    assert not torch.allclose(out[real], full[real], atol=1e-3)


def test_shrink_of_frozen_source_is_trainable_and_source_stays_frozen():
    src = make_tiny_bert(num_layers=3).requires_grad_(False).eval()
    student = shrink_encoder(src, [0, 2])
    assert all(p.requires_grad for p in student.parameters())
    assert student.training
    assert not any(p.requires_grad for p in src.parameters())
    assert not src.training


def test_shrink_renumbers_attention_layer_idx():
    src = make_tiny_bert(num_layers=4)
    student = shrink_encoder(src, [3, 1])
    for k, layer in enumerate(encoder_layers(student)):
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                assert m.layer_idx == k


# ---- build_student ---------------------------------------------------------------------------------------
def _teacher(layers=4, shared=False, temperature=0.07, pooling="mean"):
    q = make_tiny_bert(num_layers=layers, dropout=0.0, seed=3)
    net = BiEncoder(q, shared=shared, temperature=temperature, pooling=pooling)
    if not shared:
        _perturb(net.entity_encoder, seed=7)  # the entity encoder differs from the query encoder
    return net


def test_build_student_from_teacher_copies_both_encoders_and_temperature():
    teacher = _teacher(temperature=0.07, pooling="cls")
    student, layer_map = build_student(teacher, 2, layer_map=[3, 1])
    assert layer_map == [3, 1]
    assert not student.shared and student.query_encoder is not student.entity_encoder
    assert student.pooling == "cls"
    assert math.isclose(float(1.0 / student.inv_t.detach()), 0.07, rel_tol=1e-5)
    for k, i in enumerate(layer_map):
        _assert_layer_equal(student.query_encoder, k, teacher.query_encoder, i)
        _assert_layer_equal(student.entity_encoder, k, teacher.entity_encoder, i)
    # the perturbation really made the encoders differ, so the check above tells them apart
    q0, e0 = _layer_state(student.query_encoder, 0), _layer_state(student.entity_encoder, 0)
    assert any(not torch.equal(q0[n], e0[n]) for n in q0)
    assert torch.equal(student.entity_encoder.embeddings.word_embeddings.weight,
                       teacher.entity_encoder.embeddings.word_embeddings.weight)
    assert student.training


def test_build_student_default_map_is_uniform():
    teacher = _teacher(layers=4)
    student, layer_map = build_student(teacher, 2)
    assert layer_map == uniform_layer_map(4, 2) == [1, 3]
    assert num_layers(student.query_encoder) == num_layers(student.entity_encoder) == 2


def test_build_student_shared_teacher_gives_shared_student():
    teacher = _teacher(shared=True)
    student, _ = build_student(teacher, 2, layer_map=[0, 3])
    assert student.shared and student.entity_encoder is student.query_encoder
    _assert_layer_equal(student.query_encoder, 1, teacher.query_encoder, 3)


def test_build_student_rejects_unknown_init():
    with pytest.raises(ValueError):
        build_student(_teacher(), 2, init="random")


def test_build_student_plm_init_needs_a_path():
    with pytest.raises(ValueError):
        build_student(_teacher(), 2, init="plm")


def test_build_student_plm_init_loads_from_plm_not_teacher(tiny_plm_dir):
    plm = make_tiny_bert()  # the same weights the fixture saved (seed 0, 2 layers)
    teacher = _teacher(layers=4)
    student, layer_map = build_student(teacher, 1, layer_map=[1], init="plm", plm=str(tiny_plm_dir))
    assert layer_map == [1]
    for enc in (student.query_encoder, student.entity_encoder):
        _assert_layer_equal(enc, 0, plm, 1)
        assert torch.equal(enc.embeddings.word_embeddings.weight, plm.embeddings.word_embeddings.weight)
        assert not torch.equal(enc.embeddings.word_embeddings.weight,
                               teacher.query_encoder.embeddings.word_embeddings.weight)
        assert getattr(enc, "pooler", None) is None
    assert student.query_encoder is not student.entity_encoder
    ptrs = {p.data_ptr() for p in student.query_encoder.parameters()}
    assert all(p.data_ptr() not in ptrs for p in student.entity_encoder.parameters())


def test_build_student_plm_init_validates_map_against_plm_depth(tiny_plm_dir):
    with pytest.raises(ValueError):  # the PLM has 2 layers, the teacher 4
        build_student(_teacher(layers=4), 1, layer_map=[3], init="plm", plm=str(tiny_plm_dir))


def test_build_student_from_frozen_teacher_has_trainable_temperature():
    teacher = _teacher()  # learn_temperature=True
    teacher.requires_grad_(False).eval()  # what the chain does (chain/store.py freeze)
    student, _ = build_student(teacher, 2)
    assert all(p.requires_grad for p in student.query_encoder.parameters())
    assert student.log_inv_t.requires_grad


def test_student_round_trips_through_save_and_load(tmp_path, tokenizer):
    student, _ = build_student(_teacher(layers=4), 2, layer_map=[3, 1])
    student.eval()
    student.save_pretrained(tmp_path / "export", tokenizer)
    for side in ("query", "entity"):
        cfg = json.loads((tmp_path / "export" / side / "config.json").read_text())
        assert cfg["num_hidden_layers"] == 2
        hf = AutoModel.from_pretrained(tmp_path / "export" / side, local_files_only=True)
        assert num_layers(hf) == 2
    loaded = BiEncoder.from_pretrained(tmp_path / "export")
    assert math.isclose(float(loaded.inv_t), float(student.inv_t), rel_tol=1e-6)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_query(X), student.encode_query(X), atol=1e-6)
        assert torch.allclose(loaded.encode_entity(X), student.encode_entity(X), atol=1e-6)
        assert not torch.allclose(student.encode_query(X), student.encode_entity(X), atol=1e-4)
