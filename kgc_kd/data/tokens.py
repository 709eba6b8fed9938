"""Tokenise every entity and relation text once, then build model inputs by concatenating token ids.

A training step needs thousands of (head text, relation text) pairs; re-running the tokenizer on each
is wasted work, and the same cache serves every stage of a distillation chain that shares a tokenizer.
Pair truncation reproduces Hugging Face's `longest_first` (tests compare against the tokenizer itself).
The per-example `hr_ids`/`entity_ids` are the readable reference; collate functions call `hr_batch` and
`entity_batch`, which build the same padded batch from padded id tables with tensor ops only (no Python
loop over the examples of a batch).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field

import torch
from torch import Tensor

from kgc_kd.data.io import warn as data_warning
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
    # how many inputs max_length cuts: "entity_texts" ([CLS] text [SEP]) and "train_queries" ([CLS] head [SEP]
    # relation [SEP] over the training triples and their inverses); set by `build`
    truncated: dict[str, int] = field(default_factory=dict, compare=False)
    # the same ids and lengths as tensors, for the vectorised batch builders (derived in __post_init__)
    entity_table: Tensor = field(init=False, repr=False, compare=False)  # (E, Lmax) long, right-padded
    relation_table: Tensor = field(init=False, repr=False, compare=False)  # (2R, Lmax) long
    entity_lengths: Tensor = field(init=False, repr=False, compare=False)  # (E,) untruncated, like entity_len
    relation_lengths: Tensor = field(init=False, repr=False, compare=False)  # (2R,)

    def __post_init__(self) -> None:
        self.entity_table, self.relation_table = _table(self.entity, self.pad_id), _table(self.relation, self.pad_id)
        self.entity_lengths = torch.tensor(self.entity_len, dtype=torch.long)
        self.relation_lengths = torch.tensor(self.relation_len, dtype=torch.long)

    @classmethod
    def build(cls, kg: KG, tokenizer, max_length: int, *, warn: bool = True) -> TokenCache:
        """Tokenise every text of `kg`; counts what max_length truncates (`truncated`) and, with `warn`,
        reports it in one `DataWarning`."""
        if max_length < 5:
            raise ValueError(f"data.max_length={max_length} is too short for [CLS] entity [SEP] relation [SEP]")
        if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs [CLS], [SEP] and [PAD] tokens (a BERT-style tokenizer)")

        def ids(texts: list[str]) -> tuple[list[list[int]], list[int]]:
            full = tokenizer(texts, add_special_tokens=False)["input_ids"]
            return [x[:max_length] for x in full], [len(x) for x in full]

        mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
        (ent, ent_len), (rel, rel_len) = ids(entity_texts(kg)), ids(relation_texts(kg))
        cache = cls(ent, rel, ent_len, rel_len, max_length, tokenizer.cls_token_id, tokenizer.sep_token_id,
                    tokenizer.pad_token_id, mask_id)
        cache.truncated = cache.count_truncated(kg.with_inverse(kg.train))
        n_ent, n_query = cache.truncated["entity_texts"], cache.truncated["train_queries"]
        if warn and (n_ent or n_query):
            data_warning(f"data.max_length={max_length}: {n_ent:,} of {len(ent):,} entity texts and {n_query:,} of "
                         f"{2 * len(kg.train):,} training queries are truncated (word pieces past the limit are cut; "
                         "a larger data.max_length keeps them)")
        return cache

    def count_truncated(self, queries: Tensor) -> dict[str, int]:
        """Entity texts longer than [CLS] text [SEP] allows, and rows (h, r, ...) of `queries` whose
        [CLS] text(h) [SEP] text(r) [SEP] is longer than max_length."""
        entities = int((self.entity_lengths > self.max_length - 2).sum())
        h, r = queries[:, 0], queries[:, 1]
        long = self.entity_lengths[h] + self.relation_lengths[r] + 3 > self.max_length
        return {"entity_texts": entities, "train_queries": int(long.sum())}

    def hr_ids(self, h: int, r: int) -> tuple[list[int], list[int]]:
        """[CLS] text(h) [SEP] text(r) [SEP] with token types 0/1, truncated longest-first."""
        a, b = self.entity[h], self.relation[r]
        na, nb = truncate_longest_first(self.entity_len[h], self.relation_len[r], self.max_length - 3)
        ids = [self.cls_id, *a[:na], self.sep_id, *b[:nb], self.sep_id]
        return ids, [0] * (na + 2) + [1] * (nb + 1)

    def entity_ids(self, e: int) -> list[int]:
        """[CLS] text(e) [SEP]: how tails, self-negative heads and every ranking candidate are encoded."""
        return [self.cls_id, *self.entity[e][: self.max_length - 2], self.sep_id]

    def hr_batch(self, h: Tensor, r: Tensor) -> dict[str, Tensor]:
        """`hr_ids` for every (h[i], r[i]), right-padded to the longest row: the batched model input."""
        na, nb = truncate_longest_first_batch(self.entity_lengths[h], self.relation_lengths[r], self.max_length - 3)
        pos, length = _positions(na + nb + 3)
        na, nb = na.unsqueeze(1), nb.unsqueeze(1)
        a = _gather(self.entity_table[h], pos - 1)
        b = _gather(self.relation_table[r], pos - na - 2)
        # [CLS] a [SEP] b [SEP]: a at 1..na, b at na+2..length-2, [SEP] at na+1 and length-1 ([CLS] in _finish)
        ids = torch.where(pos <= na, a, torch.where((pos > na + 1) & (pos < length - 1), b, self.sep_id))
        return _finish(ids, pos, length, token_types=(pos >= na + 2).long(), cls_id=self.cls_id, pad_id=self.pad_id)

    def entity_batch(self, e: Tensor) -> dict[str, Tensor]:
        """`entity_ids` for every e[i], right-padded to the longest row; token types are all 0."""
        n = self.entity_lengths[e].clamp(max=self.max_length - 2)
        pos, length = _positions(n + 2)
        ids = torch.where(pos < length - 1, _gather(self.entity_table[e], pos - 1), self.sep_id)
        return _finish(ids, pos, length, token_types=torch.zeros_like(ids), cls_id=self.cls_id, pad_id=self.pad_id)


def _table(seqs: list[list[int]], pad_id: int) -> Tensor:
    """(N, max(1, longest)) right-padded ids; the extra column keeps gathers valid when every text is empty."""
    return pad([[pad_id], *seqs], pad_id)[0][1:]


def _positions(length: Tensor) -> tuple[Tensor, Tensor]:
    """Column positions (1, W) and lengths (B, 1) of a batch padded to its longest row W."""
    width = int(length.max()) if length.numel() else 0
    return torch.arange(width).unsqueeze(0), length.unsqueeze(1)


def _gather(table_rows: Tensor, index: Tensor) -> Tensor:
    """table_rows[i, index[i, j]] with the index clamped into range (out-of-range slots are overwritten)."""
    index = index.expand(len(table_rows), -1).clamp(0, table_rows.shape[1] - 1)
    return table_rows.gather(1, index)


def _finish(ids: Tensor, pos: Tensor, length: Tensor, *, token_types: Tensor, cls_id: int,
            pad_id: int) -> dict[str, Tensor]:
    """Put [CLS] in front and padding (id pad_id, mask 0, type 0) after each row's length."""
    valid = pos < length
    ids = torch.where(pos == 0, cls_id, ids).masked_fill(~valid, pad_id)
    return {"input_ids": ids, "attention_mask": valid.long(), "token_type_ids": token_types.masked_fill(~valid, 0)}


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


def truncate_longest_first_batch(na: Tensor, nb: Tensor, budget: int) -> tuple[Tensor, Tensor]:
    """`truncate_longest_first` element-wise over tensors of pair lengths."""
    half = budget // 2
    nb_keep = torch.minimum(nb, (budget - na).clamp(min=half))  # used where a is the longer side
    na_keep = torch.minimum(na, (budget - nb).clamp(min=half))  # where b is longer or on a tie
    fits, a_longer = na + nb <= budget, na > nb
    keep_a = torch.where(fits, na, torch.where(a_longer, budget - nb_keep, na_keep))
    keep_b = torch.where(fits, nb, torch.where(a_longer, nb_keep, budget - na_keep))
    return keep_a, keep_b


def pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad to the longest sequence in the batch (dynamic padding)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    mask = (torch.arange(int(lengths.max()) if seqs else 0) < lengths.unsqueeze(1)).long()
    ids = torch.full(mask.shape, pad_id, dtype=torch.long)
    ids[mask.bool()] = torch.tensor(list(itertools.chain.from_iterable(seqs)), dtype=torch.long)
    return ids, mask
