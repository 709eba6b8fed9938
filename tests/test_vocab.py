"""Vocabulary pruning (kgc_kd.models.vocab): pruned tokenizer + encoder reproduce the originals exactly on
texts whose word-pieces are kept, survive save/reload, and fail loudly on ids that were dropped."""

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from conftest import make_tiny_bert, make_tokenizer
from kgc_kd.models.vocab import DROPPED, id_map, prune_embeddings, prune_tokenizer, remap_ids, used_token_ids

# The vocabulary is built from these; the probes below reuse only their words (in other orders/pairs).
CORPUS = ["red thing", "the large blue number", "inverse of green", "slow entity 42", "a-b, c.d: cold"]
PROBES = ["thing red", "blue number of the large thing", "green: a-b, c.d", "42 slow", "cold inverse entity"]
PAIRS = [("red thing", "inverse of green"), ("42", "the large blue number number"), ("c.d", "slow")]


def _remap_batch(enc, mapping):
    return {k: (remap_ids(v, mapping) if k == "input_ids" else v) for k, v in enc.items()}


def _kept(tok, order: str):
    kept = used_token_ids(tok(CORPUS, add_special_tokens=False)["input_ids"], tok)
    if order == "shuffled":  # any order is allowed: new id i = old id kept[i] ([PAD] no longer 0)
        kept = kept[torch.randperm(kept.numel(), generator=torch.Generator().manual_seed(0))]
    return kept


# --- 1. tiny BERT + conftest tokenizer --------------------------------------------------------------------

@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_tiny_pruned_tokenizer_and_encoder_reproduce_the_originals(order):
    tok, bert = make_tokenizer(), make_tiny_bert().eval()
    kept = _kept(tok, order)
    assert set(tok.all_special_ids) <= set(kept.tolist())
    assert kept.numel() < len(tok) // 2
    mapping = id_map(kept, len(tok))

    pruned_bert = make_tiny_bert().eval()
    prune_embeddings(pruned_bert, kept)
    ptok = prune_tokenizer(tok, kept)
    assert type(ptok) is type(tok) and len(ptok) == kept.numel()
    assert ptok.do_lower_case and ptok.model_max_length == tok.model_max_length
    for name in ("cls_token_id", "sep_token_id", "pad_token_id", "mask_token_id", "unk_token_id"):
        assert getattr(ptok, name) == int(mapping[getattr(tok, name)]), name
    assert ptok.convert_ids_to_tokens(list(range(len(kept)))) == tok.convert_ids_to_tokens(kept.tolist())
    assert pruned_bert.config.vocab_size == kept.numel()
    assert pruned_bert.get_input_embeddings().padding_idx == int(mapping[tok.pad_token_id])
    assert pruned_bert.config.pad_token_id == int(mapping[tok.pad_token_id])

    batches = [
        (tok(PROBES, padding=True, return_tensors="pt"), ptok(PROBES, padding=True, return_tensors="pt")),
        (tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt"),
         ptok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")),
    ]
    for text in PROBES:  # unbatched, with and without special tokens
        for special in (True, False):
            assert ptok(text, add_special_tokens=special)["input_ids"] == \
                remap_ids(tok(text, add_special_tokens=special)["input_ids"], mapping)
    for orig, new in batches:
        assert (orig["input_ids"] == tok.unk_token_id).sum() == 0
        assert torch.equal(new["input_ids"], remap_ids(orig["input_ids"], mapping))
        assert torch.equal(new["token_type_ids"], orig["token_type_ids"])
        assert torch.equal(new["attention_mask"], orig["attention_mask"])
        assert (new["input_ids"] == ptok.pad_token_id).any()  # padding was exercised, with the new [PAD] id
        with torch.no_grad():
            a = bert(**orig).last_hidden_state
            b = pruned_bert(**new).last_hidden_state
        assert torch.equal(a, b)  # bit-for-bit: the same rows are looked up, nothing else changed
    assert ptok.decode(batches[0][1]["input_ids"][1], skip_special_tokens=True) == PROBES[1]


def test_used_token_ids_of_a_tensor_equals_that_of_lists():
    tok = make_tokenizer()
    lists = tok(CORPUS, add_special_tokens=False)["input_ids"]
    flat = torch.tensor([i for ids in lists for i in ids], dtype=torch.int32).reshape(-1, 1)  # any shape, dtype
    kept = used_token_ids(flat, tok)
    assert kept.dtype == torch.long and torch.equal(kept, used_token_ids(lists, tok))
    assert kept.tolist() == sorted({*flat.flatten().tolist(), *tok.all_special_ids})
    with pytest.raises(ValueError, match=f"token id {len(tok)} is outside"):
        used_token_ids(torch.tensor([len(tok)]), tok)


def test_tiny_text_with_dropped_pieces_tokenises_differently():
    """The guarantee covers only texts whose full-vocabulary pieces are kept."""
    tok = make_tokenizer()
    kept = used_token_ids(tok(["red", "b r i g h t"], add_special_tokens=False)["input_ids"], tok)
    ptok = prune_tokenizer(tok, kept)
    assert tok.tokenize("bright") == ["bright"]
    assert ptok.tokenize("bright") == ["[UNK]"]  # 'b' matches, but '##r...' has no kept piece
    extra = torch.tensor(tok.convert_tokens_to_ids(["##r", "##i", "##g", "##h", "##t"]))
    ptok2 = prune_tokenizer(tok, torch.cat([kept, extra]))
    assert "##r" in ptok2.get_vocab() and "bright" not in ptok2.get_vocab()
    assert ptok2.tokenize("Bright red") == ["b", "##r", "##i", "##g", "##h", "##t", "red"]


# --- 2. real packaged MiniLM on the builtin UMLS ----------------------------------------------------------

@pytest.fixture(scope="module")
def umls_minilm():
    from kgc_kd.data.sources import load_kg
    from kgc_kd.data.text import entity_texts, relation_texts
    from kgc_kd.models.plm import load_tokenizer

    kg = load_kg("umls")
    return kg, entity_texts(kg), relation_texts(kg), load_tokenizer("minilm")


def test_umls_minilm_tokenizer_pruning(umls_minilm):
    from kgc_kd.data.tokens import TokenCache

    kg, ents, rels, tok = umls_minilm
    full = tok(ents + rels, add_special_tokens=False)["input_ids"]
    cache = TokenCache.build(kg, tok, max_length=32)
    kept = used_token_ids([cache.used_ids(), *full], tok)
    assert torch.equal(kept, used_token_ids(torch.cat([cache.used_ids(), *map(torch.tensor, full)]), tok))
    print(f"UMLS: {kept.numel()} of {len(tok)} MiniLM word-pieces kept")
    assert 100 < kept.numel() < 5000 and len(tok) == 30522
    mapping = id_map(kept, len(tok))
    ptok = prune_tokenizer(tok, kept)
    assert len(ptok) == kept.numel() and ptok.model_max_length == tok.model_max_length == 512

    for texts in (ents, rels):
        orig = tok(texts)["input_ids"]
        assert ptok(texts)["input_ids"] == remap_ids(orig, mapping)
    pairs_o = tok(ents[:50], rels[:50], padding=True, return_tensors="pt")
    pairs_n = ptok(ents[:50], rels[:50], padding=True, return_tensors="pt")
    assert torch.equal(pairs_n["input_ids"], remap_ids(pairs_o["input_ids"], mapping))
    assert torch.equal(pairs_n["token_type_ids"], pairs_o["token_type_ids"])
    # the training cache built with the pruned tokenizer is the remapped original cache
    pcache = TokenCache.build(kg, ptok, max_length=32)
    for table, lengths in (("entity_table", "entity_lengths"), ("relation_table", "relation_lengths")):
        kept_cols = torch.arange(getattr(cache, table).shape[1]) < getattr(cache, lengths).clamp(max=32).unsqueeze(1)
        assert torch.equal(getattr(pcache, lengths), getattr(cache, lengths))
        assert torch.equal(getattr(pcache, table)[kept_cols], remap_ids(getattr(cache, table)[kept_cols], mapping))
    assert (pcache.cls_id, pcache.sep_id, pcache.pad_id, pcache.mask_id) == \
        tuple(int(mapping[i]) for i in (cache.cls_id, cache.sep_id, cache.pad_id, cache.mask_id))


def test_umls_minilm_encoder_pruning(umls_minilm):
    from kgc_kd.models.plm import load_encoder

    kg, ents, rels, tok = umls_minilm
    enc = load_encoder("minilm").eval()
    before = sum(p.numel() for p in enc.parameters())
    hidden = enc.config.hidden_size
    texts = ents[:8]
    orig_in = tok(texts, rels[:8], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = enc(**orig_in).last_hidden_state

    kept = used_token_ids(tok(ents + rels, add_special_tokens=False)["input_ids"], tok)
    ptok = prune_tokenizer(tok, kept)
    prune_embeddings(enc, kept)
    after = sum(p.numel() for p in enc.parameters())
    print(f"MiniLM parameters: {before:,} -> {after:,} ({kept.numel()} tokens kept)")
    assert before - after == (30522 - kept.numel()) * hidden
    assert after < before / 2
    with torch.no_grad():
        out = enc(**ptok(texts, rels[:8], padding=True, return_tensors="pt")).last_hidden_state
    assert torch.equal(out, ref)


# --- 3. save_pretrained / from_pretrained round trip ------------------------------------------------------

def test_round_trip_of_pruned_encoder_and_tokenizer(tmp_path):
    tok, bert = make_tokenizer(), make_tiny_bert().eval()
    kept = _kept(tok, "shuffled")
    ptok = prune_tokenizer(tok, kept)
    prune_embeddings(bert, kept)
    bert.save_pretrained(tmp_path)
    ptok.save_pretrained(tmp_path)

    rtok = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    rbert = AutoModel.from_pretrained(str(tmp_path), local_files_only=True, add_pooling_layer=False).eval()
    assert type(rtok) is type(ptok) and rtok.get_vocab() == ptok.get_vocab()
    assert rtok.do_lower_case and rtok.model_max_length == ptok.model_max_length
    assert rtok.backend_tokenizer.to_str() == ptok.backend_tokenizer.to_str()
    assert rbert.config.vocab_size == kept.numel()
    assert rbert.get_input_embeddings().padding_idx == ptok.pad_token_id
    for batch_args in ((PROBES,), ([a for a, _ in PAIRS], [b for _, b in PAIRS])):
        x = ptok(*batch_args, padding=True, return_tensors="pt")
        y = rtok(*batch_args, padding=True, return_tensors="pt")
        assert all(torch.equal(x[k], y[k]) for k in x)
        with torch.no_grad():
            assert torch.equal(bert(**x).last_hidden_state, rbert(**y).last_hidden_state)


# --- 4. id maps, errors, parameter count ------------------------------------------------------------------

def test_id_map_and_remap_ids():
    kept = torch.tensor([0, 7, 3, 5])
    m = id_map(kept, 9)
    assert m.tolist() == [0, DROPPED, DROPPED, 2, DROPPED, 3, DROPPED, 1, DROPPED]
    assert torch.equal(remap_ids(torch.tensor([[7, 3], [0, 5]]), m), torch.tensor([[1, 2], [0, 3]]))
    assert remap_ids([[7], [], [3, 5, 0]], m) == [[1], [], [2, 3, 0]]
    with pytest.raises(ValueError, match=r"2 token ids \(1 distinct\) were dropped.*e\.g\. old id 4"):
        remap_ids([[7, 4], [4, 3]], m)
    with pytest.raises(ValueError, match=r"dropped.*old id 6"):
        remap_ids(torch.tensor([0, 6]), m)
    with pytest.raises(ValueError, match="outside the original vocabulary"):
        remap_ids([9], m)
    with pytest.raises(ValueError, match="duplicate"):
        id_map(torch.tensor([1, 1]), 9)


def test_used_token_ids_adds_special_tokens_and_accepts_tensors():
    tok = make_tokenizer()
    kept = used_token_ids([[30, 12], torch.tensor([12, 40]), []], tok)
    assert kept.dtype == torch.long
    assert kept.tolist() == sorted({30, 12, 40, *tok.all_special_ids})


def test_parameter_count_drops_by_dropped_rows():
    tok, bert = make_tokenizer(), make_tiny_bert()
    before = sum(p.numel() for p in bert.parameters())
    pos = bert.embeddings.position_embeddings.weight.clone()
    kept = _kept(tok, "sorted")
    prune_embeddings(bert, kept)
    V, k, hidden = len(tok), kept.numel(), bert.config.hidden_size
    assert before - sum(p.numel() for p in bert.parameters()) == (V - k) * hidden
    assert torch.equal(bert.embeddings.position_embeddings.weight, pos)
    assert bert.get_input_embeddings().weight.requires_grad


def test_refusals():
    from transformers import BertForMaskedLM

    tok = make_tokenizer()
    no_pad = torch.tensor([1, 2, 3, 4, 20])  # [PAD] (0) missing
    with pytest.raises(ValueError, match=r"\[PAD\]"):
        prune_tokenizer(tok, no_pad)
    with pytest.raises(ValueError, match="padding_idx 0"):
        prune_embeddings(make_tiny_bert(), no_pad)
    mlm = BertForMaskedLM(make_tiny_bert().config)
    with pytest.raises(ValueError, match="output embedding"):
        prune_embeddings(mlm, torch.arange(10))
