"""Shared fixtures: a tiny random BERT and a word-level tokenizer built in code (no downloads, fast)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = (
    "red green blue small large old new fast slow bright dark warm cold soft hard thing number plus inverse "
    "entity relation of is a the and to in"
).split()


def tiny_vocab() -> dict[str, int]:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", ",", ".", "-"]
    tokens += WORDS + [str(d) for d in range(10)] + [f"##{d}" for d in range(10)]
    tokens += [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def make_tokenizer():
    from transformers import BertTokenizer

    # transformers 5: the constructor takes `vocab=`; `vocab_file=` would be silently ignored.
    return BertTokenizer(vocab=tiny_vocab(), do_lower_case=True)


def make_tiny_bert(num_layers: int = 2, hidden: int = 32, heads: int = 4, seed: int = 0, dropout: float = 0.1):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tiny_vocab()), hidden_size=hidden, num_hidden_layers=num_layers,
                     num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=64,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertModel(cfg, add_pooling_layer=False)


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def tiny_bert():
    return make_tiny_bert()


def save_tiny_plm(directory, num_layers: int = 2):
    """A tiny model + tokenizer saved as a Hugging Face directory, usable as model.plm=<dir>."""
    make_tiny_bert(num_layers=num_layers).save_pretrained(directory)
    make_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture
def tiny_plm_dir(tmp_path):
    return save_tiny_plm(tmp_path / "tiny-bert")


@pytest.fixture
def plm4(tmp_path):
    """A 4-layer tiny PLM: deep enough for a chain of shrinking students."""
    return save_tiny_plm(tmp_path / "plm4", num_layers=4)


# ---- per-example references for the vectorised batch builders (test_tokens, test_batching) -------------
def pad_reference(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The original per-row padding loop, kept as the reference."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def hr_reference(cache, h: torch.Tensor, r: torch.Tensor) -> dict[str, torch.Tensor]:
    pairs = [cache.hr_ids(a, b) for a, b in zip(h.tolist(), r.tolist())]
    ids, mask = pad_reference([p[0] for p in pairs], cache.pad_id)
    types, _ = pad_reference([p[1] for p in pairs], 0)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def entity_reference(cache, e: torch.Tensor) -> dict[str, torch.Tensor]:
    ids, mask = pad_reference([cache.entity_ids(x) for x in e.tolist()], cache.pad_id)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
