import math

import pytest

import torch
from transformers import AutoModel

from conftest import make_tiny_bert
from kgc_kd.models.biencoder import BiEncoder, build_biencoder


def _inputs(ids):
    ids = torch.tensor(ids)
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}


def test_separate_encoders_start_equal_but_are_not_shared():
    net = BiEncoder(make_tiny_bert())
    assert net.query_encoder is not net.entity_encoder
    q = dict(net.query_encoder.named_parameters())
    for name, p in net.entity_encoder.named_parameters():
        assert torch.equal(p, q[name]) and p.data_ptr() != q[name].data_ptr()


def test_shared_encoder_is_one_module():
    net = BiEncoder(make_tiny_bert(), shared=True)
    assert net.entity_encoder is net.query_encoder


def test_temperature_parameterisation():
    net = BiEncoder(make_tiny_bert(), temperature=0.05)
    assert math.isclose(float(net.log_inv_t), math.log(20.0), rel_tol=1e-6)
    assert math.isclose(float(net.inv_t), 20.0, rel_tol=1e-5)
    frozen = BiEncoder(make_tiny_bert(), learn_temperature=False)
    assert not frozen.log_inv_t.requires_grad


def test_vectors_are_unit_norm_and_padding_invariant():
    net = BiEncoder(make_tiny_bert()).eval()
    a = net.encode_entity(_inputs([[2, 9, 24, 3]]))
    b = net.encode_entity(_inputs([[2, 9, 24, 3, 0, 0]]))
    assert torch.allclose(a.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert torch.allclose(a, b, atol=1e-5)


def test_dedup_forward_equals_per_row_forward_in_eval():
    net = BiEncoder(make_tiny_bert()).eval()
    ents = _inputs([[2, 9, 3, 0], [2, 10, 11, 3], [2, 12, 3, 0]])
    hr = _inputs([[2, 9, 3, 27, 3], [2, 12, 3, 27, 3]])
    tail_index, head_index = torch.tensor([1, 0]), torch.tensor([0, 2])
    dedup = net({"hr": hr, "entities": ents, "tail_index": tail_index, "head_index": head_index})
    rows = lambda idx: {k: v[idx] for k, v in ents.items()}  # noqa: E731
    plain = net({"hr": hr, "tail": rows(tail_index), "head": rows(head_index)})
    for key in ("hr", "tail", "head"):
        assert torch.allclose(dedup[key], plain[key], atol=1e-6)


def test_save_pretrained_loads_back_with_transformers(tmp_path, tokenizer):
    net = BiEncoder(make_tiny_bert(), temperature=0.07).eval()
    net.save_pretrained(tmp_path / "export", tokenizer)
    x = _inputs([[2, 9, 24, 3]])
    for name, enc in (("query", net.query_encoder), ("entity", net.entity_encoder)):
        loaded = AutoModel.from_pretrained(tmp_path / "export" / name).eval()
        assert torch.allclose(loaded(**x).last_hidden_state, enc(**x).last_hidden_state, atol=1e-6)
    meta = (tmp_path / "export" / "biencoder.json").read_text()
    assert '"temperature": 0.07' in meta


def _tiny_pair():
    from conftest import make_tokenizer

    tok = make_tokenizer()
    texts = ["red thing", "blue small number", "old entity of the relation"]
    return tok, texts, tok(texts, padding=True, return_tensors="pt")


def test_pruned_vocabulary_gives_identical_vectors_on_source_ids():
    from kgc_kd.models.vocab import used_token_ids

    tok, texts, batch = _tiny_pair()
    net = BiEncoder(make_tiny_bert()).eval()
    pruned = BiEncoder(make_tiny_bert()).eval()
    kept = used_token_ids(tok(texts, add_special_tokens=False)["input_ids"], tok)
    pruned.prune_vocabulary(kept, tok.vocab_size)
    inputs = dict(batch)
    with torch.no_grad():
        assert torch.equal(net.encode_query(inputs), pruned.encode_query(inputs))
        assert torch.equal(net.encode_entity(inputs), pruned.encode_entity(inputs))
    rows = pruned.query_encoder.get_input_embeddings().weight.shape[0]
    assert rows == len(kept) < tok.vocab_size
    unseen = tok(["fast"], return_tensors="pt")  # a word-piece outside the kept ones
    with pytest.raises(ValueError, match="dropped by vocabulary pruning"):
        pruned.encode_query(dict(unseen))


def test_pruned_export_reads_its_own_tokenizer_or_the_source_one(tmp_path):
    from transformers import AutoTokenizer

    from kgc_kd.models.vocab import used_token_ids

    tok, texts, batch = _tiny_pair()
    net = BiEncoder(make_tiny_bert(), shared=True).eval()
    net.prune_vocabulary(used_token_ids(tok(texts, add_special_tokens=False)["input_ids"], tok), tok.vocab_size)
    net.save_pretrained(tmp_path / "x", tok)
    with torch.no_grad():
        want = net.encode_query(dict(batch))
        own_tok = AutoTokenizer.from_pretrained(tmp_path / "x" / "query", local_files_only=True)
        standalone = BiEncoder.from_pretrained(tmp_path / "x")
        got = standalone.encode_query(dict(own_tok(texts, padding=True, return_tensors="pt")))
        assert torch.equal(got, want)
        in_chain = BiEncoder.from_pretrained(tmp_path / "x", source_ids=True)
        assert torch.equal(in_chain.encode_query(dict(batch)), want)
    assert standalone.shared and standalone.kept_ids == net.kept_ids


def test_prune_twice_is_refused():
    tok, texts, _ = _tiny_pair()
    net = BiEncoder(make_tiny_bert())
    net.prune_vocabulary(torch.arange(10), tok.vocab_size)
    with pytest.raises(ValueError, match="already pruned"):
        net.prune_vocabulary(torch.arange(5), tok.vocab_size)


def test_check_vocab_refuses_text_a_pruned_model_cannot_read():
    tok, texts, _ = _tiny_pair()
    net = BiEncoder(make_tiny_bert())
    from kgc_kd.models.vocab import used_token_ids

    net.prune_vocabulary(used_token_ids(tok(texts, add_special_tokens=False)["input_ids"], tok), tok.vocab_size)
    net.check_vocab(tok(texts, add_special_tokens=False)["input_ids"])  # its own KG's texts: fine
    with pytest.raises(ValueError, match="dropped by vocabulary pruning"):
        net.check_vocab(tok(["fast cold"], add_special_tokens=False)["input_ids"])


def test_build_biencoder_reads_the_model_section_and_its_defaults(tiny_plm_dir):
    net = build_biencoder({"plm": str(tiny_plm_dir), "shared_encoder": True, "pooling": "cls", "temperature": 0.1,
                           "learn_temperature": False})
    assert net.shared and net.pooling == "cls" and not net.log_inv_t.requires_grad
    assert float(net.inv_t) == pytest.approx(10.0)
    assert net.query_encoder.config.num_hidden_layers == 2  # tiny_plm_dir's encoder, loaded from model["plm"]
    enc = make_tiny_bert()
    default = build_biencoder({}, encoder=enc)  # an encoder given: model["plm"] is not needed
    assert default.query_encoder is enc and not default.shared and default.pooling == "mean"
    assert default.log_inv_t.requires_grad and float(default.inv_t) == pytest.approx(20.0)
