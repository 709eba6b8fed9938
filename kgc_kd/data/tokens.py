"""Tokenise every entity and relation text once, then build model inputs by concatenating token ids.

A training step needs thousands of (head text, relation text) pairs; re-running the tokenizer on each
is wasted work, and the same cache serves every stage of a distillation chain that shares a tokenizer.
Pair truncation reproduces Hugging Face's `longest_first` (tests compare against the tokenizer itself).
The per-example `hr_ids`/`entity_ids` are the readable reference; collate functions call `hr_batch` and
`entity_batch`, which build the same padded batch from padded id tables with tensor ops only (no Python
loop over the examples of a batch).

With `link_graph` (SimKGC's neighbour text, see `kgc_kd.data.link_graph`), an entity's text depends on the
example (the training partner is left out of its neighbour list), so it is not cached whole: `LinkedTokens`
keeps each entity's text up to its neighbour names and each entity's name, and a batch's texts are
assembled from those pieces (at most 11 per text) by the same kind of gathers. WordPiece splits at
whitespace, so the pieces of "text name1 name2" are those of "text", "name1" and "name2" in turn; `build`
checks this on the real texts and tokenizer.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field

import torch
from torch import Tensor

from kgc_kd.data.io import warn as data_warning
from kgc_kd.data.kg import KG
from kgc_kd.data.link_graph import LinkGraph
from kgc_kd.data.text import entity_texts, linked_text, linked_texts, prefix_mismatch, relation_texts


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
    link: LinkedTokens | None = None  # data.link_graph: the pieces of SimKGC's neighbour text
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
    def build(cls, kg: KG, tokenizer, max_length: int, *, warn: bool = True, link_graph: bool = False) -> TokenCache:
        """Tokenise every text of `kg`; counts what max_length truncates (`truncated`) and, with `warn`,
        reports it in one `DataWarning`. `link_graph`: entity texts get SimKGC's neighbour names."""
        if max_length < 5:
            raise ValueError(f"data.max_length={max_length} is too short for [CLS] entity [SEP] relation [SEP]")
        if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs [CLS], [SEP] and [PAD] tokens (a BERT-style tokenizer)")

        def ids(texts: list[str]) -> tuple[list[list[int]], list[int]]:
            full = word_pieces(tokenizer, texts)
            return [x[:max_length] for x in full], [len(x) for x in full]

        mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
        texts = entity_texts(kg)
        (ent, ent_len), (rel, rel_len) = ids(texts), ids(relation_texts(kg))
        link = LinkedTokens.build(kg, tokenizer, max_length, texts, ent, ent_len, warn=warn) if link_graph else None
        cache = cls(ent, rel, ent_len, rel_len, max_length, tokenizer.cls_token_id, tokenizer.sep_token_id,
                    tokenizer.pad_token_id, mask_id, link)
        cache.truncated = cache.count_truncated(kg.with_inverse(kg.train))
        n_ent, n_query = cache.truncated["entity_texts"], cache.truncated["train_queries"]
        if warn and (n_ent or n_query):
            what = "entity texts (with neighbour names)" if link else "entity texts"
            data_warning(f"data.max_length={max_length}: {n_ent:,} of {len(ent):,} {what} and {n_query:,} of "
                         f"{2 * len(kg.train):,} training queries are truncated (word pieces past the limit are cut; "
                         "a larger data.max_length keeps them)")
        if link is not None:
            link.check_assembly(kg, tokenizer, cache)
        return cache

    def count_truncated(self, queries: Tensor) -> dict[str, int]:
        """Entity texts longer than [CLS] text [SEP] allows, and rows (h, r, t) of `queries` whose
        [CLS] text(h) [SEP] text(r) [SEP] is longer than max_length (with link_graph: entity texts as ranking
        candidates, i.e. with all their neighbours; query heads as in training, without t)."""
        all_entities = torch.arange(len(self.entity))
        entities = int((self.text_lengths(all_entities) > self.max_length - 2).sum())
        h, r = queries[:, 0], queries[:, 1]
        head_len = self.text_lengths(h, queries[:, 2]) if self.link is not None else self.entity_lengths[h]
        long = head_len + self.relation_lengths[r] + 3 > self.max_length
        return {"entity_texts": entities, "train_queries": int(long.sum())}

    def token_lists(self) -> list[list[int]]:
        """Every cached id sequence an input is built from (for vocabulary checks and pruning)."""
        extra = self.link.prefix + self.link.names if self.link is not None else []
        return self.entity + self.relation + extra

    # ---- an entity's text (without special tokens); `exclude`: the training partner (data.link_graph) -----
    def text_ids(self, e: int, exclude: int | None = None) -> tuple[list[int], int]:
        """Word pieces of entity e's text, cut at max_length, and its untruncated length."""
        if self.link is None:
            return self.entity[e], self.entity_len[e]
        return self.link.text_ids(e, exclude, self.max_length)

    def text_batch(self, e: Tensor, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`text_ids` for every e[i] (exclude[i] = -1: none): (B, W) ids, right-padded with junk past each
        row's length and holding at least its first max_length pieces, and (B,) untruncated lengths."""
        if self.link is None:
            return self.entity_table[e], self.entity_lengths[e]
        return self.link.text_batch(e, exclude, self.max_length)

    def text_lengths(self, e: Tensor, exclude: Tensor | None = None) -> Tensor:
        if self.link is None:
            return self.entity_lengths[e]
        return self.link.segments(e, exclude)[1].sum(1)

    def exclusion(self, e: Tensor, partner: Tensor) -> Tensor:
        """What `exclude` to pass for entity e[i] in an example with partner[i]: the partner where it is in
        e[i]'s neighbour list, else -1 (also always -1 without link_graph)."""
        if self.link is None:
            return torch.full_like(e, -1)
        return self.link.graph.effective_exclude(e, partner)

    # ---- model inputs -----------------------------------------------------------------------------------
    def hr_ids(self, h: int, r: int, exclude: int | None = None) -> tuple[list[int], list[int]]:
        """[CLS] text(h) [SEP] text(r) [SEP] with token types 0/1, truncated longest-first."""
        (a, a_len), b = self.text_ids(h, exclude), self.relation[r]
        na, nb = truncate_longest_first(a_len, self.relation_len[r], self.max_length - 3)
        ids = [self.cls_id, *a[:na], self.sep_id, *b[:nb], self.sep_id]
        return ids, [0] * (na + 2) + [1] * (nb + 1)

    def entity_ids(self, e: int, exclude: int | None = None) -> list[int]:
        """[CLS] text(e) [SEP]: how tails, self-negative heads and every ranking candidate are encoded."""
        return [self.cls_id, *self.text_ids(e, exclude)[0][: self.max_length - 2], self.sep_id]

    def hr_batch(self, h: Tensor, r: Tensor, exclude: Tensor | None = None) -> dict[str, Tensor]:
        """`hr_ids` for every (h[i], r[i], exclude[i]), right-padded to the longest row: the batched model input."""
        a_rows, a_len = self.text_batch(h, exclude)
        na, nb = truncate_longest_first_batch(a_len, self.relation_lengths[r], self.max_length - 3)
        pos, length = _positions(na + nb + 3)
        na, nb = na.unsqueeze(1), nb.unsqueeze(1)
        a = _gather(a_rows, pos - 1)
        b = _gather(self.relation_table[r], pos - na - 2)
        # [CLS] a [SEP] b [SEP]: a at 1..na, b at na+2..length-2, [SEP] at na+1 and length-1 ([CLS] in _finish)
        ids = torch.where(pos <= na, a, torch.where((pos > na + 1) & (pos < length - 1), b, self.sep_id))
        return _finish(ids, pos, length, token_types=(pos >= na + 2).long(), cls_id=self.cls_id, pad_id=self.pad_id)

    def entity_batch(self, e: Tensor, exclude: Tensor | None = None) -> dict[str, Tensor]:
        """`entity_ids` for every (e[i], exclude[i]), right-padded to the longest row; token types are all 0."""
        rows, n = self.text_batch(e, exclude)
        n = n.clamp(max=self.max_length - 2)
        pos, length = _positions(n + 2)
        ids = torch.where(pos < length - 1, _gather(rows, pos - 1), self.sep_id)
        return _finish(ids, pos, length, token_types=torch.zeros_like(ids), cls_id=self.cls_id, pad_id=self.pad_id)


@dataclass
class LinkedTokens:
    """The pieces of SimKGC's neighbour text (data.link_graph): an entity's text is its "head" (for an entity
    with a short description, the text up to its neighbour names, `text.linked_prefix`; otherwise its plain
    text) followed by the names of the neighbours it shows (`LinkGraph.shown`)."""

    graph: LinkGraph = field(compare=False)
    prefix: list[list[int]]  # per entity: the head's word pieces (cut at max_length)
    names: list[list[int]]  # per entity: its name's word pieces, as a neighbour list shows it (cut at max_length)
    prefix_len: list[int]  # untruncated
    bare_len: list[int]  # length of the head when no name follows (SimKGC's "name" instead of "name:")
    name_len: list[int]
    # entities whose text differs from SimKGC's for some neighbour list (`text.prefix_mismatch`; warned about)
    mismatched: list[int] = field(default_factory=list)
    # rows 0..E-1: heads, rows E..2E-1: names, right-padded; and their untruncated lengths (derived)
    table: Tensor = field(init=False, repr=False, compare=False)
    lengths: Tensor = field(init=False, repr=False, compare=False)
    bare: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.table = _table(self.prefix + self.names, 0)
        self.lengths = torch.tensor(self.prefix_len + self.name_len, dtype=torch.long)
        self.bare = torch.tensor(self.bare_len, dtype=torch.long)

    @classmethod
    def build(cls, kg: KG, tokenizer, max_length: int, plain_texts: list[str], plain: list[list[int]],
              plain_len: list[int], *, warn: bool = True) -> LinkedTokens:
        """`plain_texts`, `plain`, `plain_len`: the entities' texts without neighbours and their word pieces
        (`text.entity_texts`, TokenCache.entity / entity_len), reused where the head is the same text."""
        graph = LinkGraph.of(kg)
        parts = linked_texts(kg)
        prefix, prefix_len, bare_len = list(plain), list(plain_len), list(plain_len)
        # most heads are the plain text ("name: desc"); entities without description read "name:"
        new = [e for e, a in enumerate(graph.augmented.tolist()) if a and parts[e][0] != plain_texts[e]]
        for e, ids in zip(new, word_pieces(tokenizer, [parts[e][0] for e in new])):
            prefix[e], prefix_len[e], bare_len[e] = ids[:max_length], len(ids), len(ids)
        # SimKGC reads "name" (no ":") when the description is only the name and no neighbour follows
        differ = [e for e in new if parts[e][1] != parts[e][0]]
        for e, ids in zip(differ, word_pieces(tokenizer, [parts[e][1] for e in differ])):
            if prefix[e][:min(len(ids), max_length)] != ids[:max_length]:
                raise ValueError(f"data.link_graph: the word pieces of {parts[e][1]!r} are not a prefix of those of "
                                 f"{parts[e][0]!r} (entity {kg.entity_ids[e]}); neighbour text needs a tokenizer "
                                 "that splits words and punctuation apart, like BERT's")
            bare_len[e] = len(ids)
        names = word_pieces(tokenizer, list(kg.entity_names))
        hits = _prefix_mismatches(kg, graph)
        if warn and hits:
            data_warning(f"data.link_graph: {len(hits)} entities have a name that continues their description into "
                         f"their neighbours' names (e.g. {kg.entity_ids[hits[0]]}: {kg.entity_names[hits[0]]!r}); "
                         "SimKGC would strip the name from such a text, here it is kept")
        return cls(graph, prefix, [x[:max_length] for x in names], prefix_len, bare_len, [len(x) for x in names],
                   hits)

    def text_ids(self, e: int, exclude: int | None, max_length: int) -> tuple[list[int], int]:
        """Readable reference of `text_batch` for one entity."""
        shown = self.graph.neighbour_ids(e, exclude)
        if not shown:
            return self.prefix[e][: self.bare_len[e]], self.bare_len[e]
        ids = self.prefix[e] + [i for n in shown for i in self.names[n]]
        return ids[:max_length], self.prefix_len[e] + sum(self.name_len[n] for n in shown)

    def segments(self, e: Tensor, exclude: Tensor | None) -> tuple[Tensor, Tensor]:
        """(B, 1 + K) table rows and untruncated lengths of the pieces of each text (length 0: not shown)."""
        n = self.graph.num_entities
        nb = self.graph.neighbours[e]
        shown = self.graph.shown(e, exclude)
        rows = torch.cat([e.unsqueeze(1), n + nb.clamp(min=0)], dim=1)
        head = torch.where(shown.any(1), self.lengths[e], self.bare[e])
        lens = torch.cat([head.unsqueeze(1), torch.where(shown, self.lengths[n + nb.clamp(min=0)], 0)], dim=1)
        return rows, lens

    def text_batch(self, e: Tensor, exclude: Tensor | None, max_length: int) -> tuple[Tensor, Tensor]:
        """The first max_length pieces of each text (B, W) (junk past a row's length) and the full lengths."""
        rows, lens = self.segments(e, exclude)
        total = lens.sum(1)
        width = max(1, min(int(total.max()), max_length)) if len(e) else 1
        ends = lens.cumsum(1)
        pos = torch.arange(width).expand(len(e), -1).contiguous()
        seg = torch.searchsorted(ends, pos, right=True).clamp_(max=lens.shape[1] - 1)  # (B, W): which piece
        offset = (pos - (ends - lens).gather(1, seg)).clamp_(0, self.table.shape[1] - 1)
        return self.table.view(-1).take(rows.gather(1, seg) * self.table.shape[1] + offset), total

    def check_assembly(self, kg: KG, tokenizer, cache: TokenCache, sample: int = 256) -> None:
        """Tokenise SimKGC's own text (`text.linked_text`) for up to `sample` entities that show neighbours
        and compare with the assembled pieces: catches a tokenizer for which pieces do not concatenate."""
        shown = self.graph.shown(torch.arange(self.graph.num_entities)).any(1)
        shown[self.mismatched] = False  # known to differ (warned about)
        ents = torch.nonzero(shown).flatten()[:sample].tolist()
        texts = [linked_text(kg.entity_names[e], kg.entity_descs[e],
                             [kg.entity_names[n] for n in self.graph.neighbour_ids(e)]) for e in ents]
        for e, ids in zip(ents, word_pieces(tokenizer, texts)):
            got, n = cache.text_ids(e)
            if got != ids[:cache.max_length] or n != len(ids):
                raise ValueError(f"data.link_graph: entity {kg.entity_ids[e]}: the word pieces assembled from its text "
                                 "and its neighbours' names differ from those of the whole text; neighbour text needs "
                                 "a tokenizer that splits at whitespace, like BERT's WordPiece")


def _prefix_mismatches(kg: KG, graph: LinkGraph) -> list[int]:
    """Entities whose name extends their description (`text.prefix_mismatch`): for the neighbour lists where
    SimKGC then strips the name, its text differs from ours. None in WN18RR."""
    hits = []
    for e, (name, desc, short) in enumerate(zip(kg.entity_names, kg.entity_descs, graph.augmented.tolist())):
        if not short or not name.startswith(desc + " "):
            continue
        full = graph.neighbour_ids(e)  # every list a text of e can show: all, or all but one
        lists = [full] + [graph.neighbour_ids(e, x) for x in full]
        if any(prefix_mismatch(name, desc, [kg.entity_names[n] for n in ns]) for ns in lists):
            hits.append(e)
    return hits


def word_pieces(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text without special tokens (only the ids are asked for: faster on big lists)."""
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                     return_token_type_ids=False)["input_ids"]


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
