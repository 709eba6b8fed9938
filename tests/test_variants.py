"""kgc_kd/serve/variants.py: which variants this hardware serves, and the bytes each takes on disk."""

import json

import pytest
import torch

from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.serve import variants
from kgc_kd.serve.variants import (UnsupportedVariant, check_variants, load_variant, tower_dirs,
                                   unsupported_reason, weight_bytes)
from conftest import make_tiny_bert, make_tokenizer


@pytest.fixture
def export(tmp_path):
    d = tmp_path / "export"
    BiEncoder(make_tiny_bert().eval()).save_pretrained(d, make_tokenizer())
    return d


def test_bf16_needs_the_cpu_flag_and_unknown_variants_are_named():
    assert unsupported_reason("bf16", "cpu", flags={"avx2"}).startswith("this CPU has no native bf16")
    assert unsupported_reason("bf16", "cpu", flags={"avx512_bf16"}) is None
    assert unsupported_reason("bf16", "cpu", flags={"amx_bf16"}) is None
    assert unsupported_reason("fp32", "cpu") is None
    with pytest.raises(ValueError, match="unknown variant 'int4'; choose from fp32, bf16, onnx-fp32, onnx-int8"):
        unsupported_reason("int4")


def test_onnx_variants_are_cpu_only():
    assert "CPU" in unsupported_reason("onnx-int8", "cuda")


def test_named_unsupported_variant_is_refused_unnamed_is_skipped_with_its_reason(monkeypatch):
    monkeypatch.setattr(variants, "cpu_flags", lambda: {"avx2"})
    with pytest.raises(UnsupportedVariant, match="variant bf16 cannot be served on cpu here: this CPU has no native"):
        check_variants(["fp32", "bf16"])
    chosen, skipped = check_variants(None)
    assert "bf16" not in chosen and "fp32" in chosen and "avx512_bf16" in skipped["bf16"]
    monkeypatch.setattr(variants, "cpu_flags", lambda: {"avx512_bf16"})
    assert check_variants(["bf16", "fp32", "bf16"]) == (["bf16", "fp32"], {})


def test_bytes_count_weights_and_config_of_each_served_tower(export, tmp_path):
    expected = sum((export / t / f).stat().st_size for t in ("query", "entity")
                   for f in ("model.safetensors", "config.json"))
    assert sum(weight_bytes(d) for d in tower_dirs(export)) == expected
    shared = tmp_path / "shared"
    BiEncoder(make_tiny_bert().eval(), shared=True).save_pretrained(shared, make_tokenizer())
    assert tower_dirs(shared) == [shared / "query"]


def test_bf16_is_the_same_model_at_half_the_weight_bytes(export, monkeypatch):
    monkeypatch.setattr(variants, "cpu_flags", lambda: {"avx512_bf16"})
    fp32, bf16 = load_variant(export, "fp32"), load_variant(export, "bf16")
    tensors = sum(p.numel() for p in BiEncoder.from_pretrained(export).query_encoder.state_dict().values())
    assert fp32.bytes_on_disk - bf16.bytes_on_disk == pytest.approx(2 * 2 * tensors, rel=0.02)  # 2 towers x 2 B
    ids = torch.tensor([[2, 5, 6, 3, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
    a, b = fp32.encode_query(batch), bf16.encode_query(batch)
    assert a.dtype == b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99
    assert json.loads((export / "biencoder.json").read_text())["shared"] is False
