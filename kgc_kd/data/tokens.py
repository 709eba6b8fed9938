"""Tokenise every entity and relation text once, then build model inputs by concatenating token ids.

A training step needs thousands of (head text, relation text) pairs; re-running the tokenizer on each
is wasted work, and the same cache serves every stage of a distillation chain that shares a tokenizer.
Pair truncation reproduces Hugging Face's `longest_first` (tests compare against the tokenizer itself).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from kgc_kd.data.kg import KG
from kgc_kd.data.text import entity_texts, relation_texts


def tokenizer_fingerprint(tokenizer) -> str:
    """Same vocabulary and special tokens -> same cached ids, whatever object or path they came from."""
    h = hashlib.sha1()
    for tok, idx in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        h.update(f"{idx}:{tok}\n".encode())
    h.update(repr((tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id,
                   getattr(tokenizer, "do_lower_case", None))).encode())
    return h.hexdigest()[:16]


@dataclass
class TokenCache:
    entity: list[list[int]]  # word-piece ids without special tokens, per entity id (cut at max_length)
    relation: list[list[int]]  # per relation id in [0, 2R)
    entity_len: list[int]  # untruncated lengths: longest_first compares the full lengths
    relation_len: list[int]
    max_length: int
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int

    @classmethod
    def build(cls, kg: KG, tokenizer, max_length: int) -> TokenCache:
        if max_length < 5:
            raise ValueError(f"data.max_length={max_length} is too short for [CLS] entity [SEP] relation [SEP]")
        if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs [CLS], [SEP] and [PAD] tokens (a BERT-style tokenizer)")

        def ids(texts: list[str]) -> tuple[list[list[int]], list[int]]:
            full = tokenizer(texts, add_special_tokens=False)["input_ids"]
            return [x[:max_length] for x in full], [len(x) for x in full]

        mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
        (ent, ent_len), (rel, rel_len) = ids(entity_texts(kg)), ids(relation_texts(kg))
        return cls(ent, rel, ent_len, rel_len, max_length, tokenizer.cls_token_id, tokenizer.sep_token_id,
                   tokenizer.pad_token_id, mask_id)

    def hr_ids(self, h: int, r: int) -> tuple[list[int], list[int]]:
        """[CLS] text(h) [SEP] text(r) [SEP] with token types 0/1, truncated longest-first."""
        a, b = self.entity[h], self.relation[r]
        na, nb = truncate_longest_first(self.entity_len[h], self.relation_len[r], self.max_length - 3)
        ids = [self.cls_id, *a[:na], self.sep_id, *b[:nb], self.sep_id]
        return ids, [0] * (na + 2) + [1] * (nb + 1)

    def entity_ids(self, e: int) -> list[int]:
        """[CLS] text(e) [SEP]: how tails, self-negative heads and every ranking candidate are encoded."""
        return [self.cls_id, *self.entity[e][: self.max_length - 2], self.sep_id]


def truncate_longest_first(na: int, nb: int, budget: int) -> tuple[int, int]:
    """Kept lengths of a text pair under Hugging Face's `longest_first` rule (as the Rust tokenizers
    apply it): a side that fits in half the budget stays whole; otherwise the longer side keeps
    ceil(budget / 2), the second side on a tie."""
    if na + nb <= budget:
        return na, nb
    half = budget // 2
    if na > nb:
        nb_keep = min(nb, max(budget - na, half))
        return budget - nb_keep, nb_keep
    na_keep = min(na, max(budget - nb, half))
    return na_keep, budget - na_keep


def pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad to the longest sequence in the batch (dynamic padding)."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask
