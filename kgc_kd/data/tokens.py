"""Tokenise every entity and relation text once, then build model inputs by concatenating token ids.

A training step needs thousands of (head text, relation text) pairs; re-running the tokenizer on each
is wasted work, and the same cache serves every stage of a distillation chain that shares a tokenizer.
Pair truncation reproduces Hugging Face's `longest_first` (tests compare against the tokenizer itself).
The per-example `hr_ids`/`entity_ids` are the readable reference; collate functions call `hr_batch` and
`entity_batch`, which build the same padded batch from the id tables with tensor ops only (no Python
loop over the examples of a batch).

Host memory is proportional to the data: the ids are one (E, W) int32 table, right-padded, W <= max_length,
plus the untruncated (E,) lengths (longest_first needs them), and the same for the 2R relation texts; no
per-text Python list is kept (at Wikidata5M's 4.6M entities, lists of ints took ~30 GB, the table ~1 GB).
Texts are tokenised CHUNK_TEXTS at a time into the preallocated table, so the peak is the table plus one
chunk's lists. A text is cut to TEXT_CHARS_PER_TOKEN x max_length characters before it is tokenised (at a
space, so its first max_length word pieces are those of the whole text; `word_pieces`), so one 10 MB
description costs what a normal one does. `TokenCache.load_or_build` keeps the tables on disk under the run root (`token_store`,
keyed by the tokenizer fingerprint, max length and a fingerprint of every text) and maps them: the
ranks of a DDP run, later stages and later runs read one copy through the page cache, and a second run
does not tokenise at all. A pickled cache (a spawned data-loader worker) carries the entry's path.

With `link_graph` (SimKGC's neighbour text, see `kgc_kd.data.link_graph`), an entity's text depends on the
example (the training partner is left out of its neighbour list), so it is not cached whole: `LinkedTokens`
keeps each entity's text up to its neighbour names and each entity's name (one more (2E, W) table, built
in memory on top of the plain tables), and a batch's texts are assembled from those pieces (at most 11 per
text) by the same kind of gathers. WordPiece splits at whitespace, so the pieces of "text name1 name2" are
those of "text", "name1" and "name2" in turn; `build` checks this on the real texts and tokenizer.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kgc_kd.data import token_store
from kgc_kd.data.io import warn as data_warning
from kgc_kd.data.kg import KG
from kgc_kd.data.link_graph import LinkGraph
from kgc_kd.data.text import entity_text, linked_text, linked_texts, prefix_mismatch, relation_texts

CHUNK_TEXTS = 16_384  # texts per tokenizer call: the peak is the table plus one chunk (its Rust encodings and Python
# lists; at 1/10 of Wikidata5M, 65,536 texts per call peaked at twice the growth of 16,384, at the same speed)
# characters of a text tokenised per token kept (a text is cut to this x max_length first, `word_pieces`): a
# word piece of English or code text averages 3-6 characters, so the cut text still fills max_length
TEXT_CHARS_PER_TOKEN = 20
RETRY_CUT = 16  # a cut with fewer than max_length pieces is tokenised once more this many times longer
ROWS_PER_STEP = 1 << 18  # training triples or table rows per step of `count_truncated` and `used_ids`
TABLES = ("entity_table", "entity_lengths", "relation_table", "relation_lengths")  # a cache entry's arrays


def tokenizer_fingerprint(tokenizer) -> str:
    """Same vocabulary and special tokens -> same cached ids, whatever object or path they came from."""
    h = hashlib.sha1()
    for tok, idx in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        h.update(f"{idx}:{tok}\n".encode())
    h.update(repr((tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id,
                   getattr(tokenizer, "do_lower_case", None))).encode())
    return h.hexdigest()[:16]


def text_fingerprint(kg: KG) -> str:
    """Every entity text and relation text (forward then inverse) in order: the data part of a cache entry's
    key. Hashed a chunk at a time (lengths and bytes apart, so the digest does not depend on the chunking)."""
    lengths, data = hashlib.sha1(), hashlib.sha1()
    for texts in itertools.chain(entity_text_chunks(kg), [relation_texts(kg)]):
        encoded = [t.encode() for t in texts]
        lengths.update(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)).tobytes())
        data.update(b"".join(encoded))
    head = f"{kg.num_entities} {2 * kg.num_relations}\n".encode()
    return hashlib.sha1(head + lengths.digest() + data.digest()).hexdigest()[:16]


def _chunks(seq: Sequence) -> Iterator[Sequence]:
    for start in range(0, len(seq), CHUNK_TEXTS):
        yield seq[start:start + CHUNK_TEXTS]


def entity_text_chunks(kg: KG) -> Iterator[list[str]]:
    """`text.entity_texts`, CHUNK_TEXTS at a time: the list of every entity's text is never held."""
    for names, descs in zip(_chunks(kg.entity_names), _chunks(kg.entity_descs)):
        yield [entity_text(n, d) for n, d in zip(names, descs)]


def tokenise_table(tokenizer, text_chunks: Iterable[list[str]], n: int, max_length: int,
                   pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The word pieces of n texts (given chunk by chunk) as an (n, W) int32 table, cut at max_length and
    right-padded with pad_id (W: the longest kept row, at least 1, so gathers stay valid when every text is
    empty), and their (n,) int32 untruncated lengths (of a text cut before tokenising, `word_pieces`: those of
    its cut, at least max_length). Each chunk is written into one preallocated table."""
    table = np.full((n, max_length), pad_id, dtype=np.int32)
    lengths = np.zeros(n, dtype=np.int32)
    columns = np.arange(max_length)
    start = 0
    for texts in text_chunks:
        pieces = word_pieces(tokenizer, texts, max_length)
        stop = start + len(pieces)
        full = np.fromiter(map(len, pieces), dtype=np.int32, count=len(pieces))
        kept = np.minimum(full, max_length)
        flat = np.fromiter(itertools.chain.from_iterable(x[:max_length] for x in pieces), dtype=np.int32,
                           count=int(kept.sum()))
        table[start:stop][columns < kept[:, None]] = flat  # row by row, in order
        lengths[start:stop] = full
        start = stop
    if start != n:
        raise ValueError(f"{start} texts were tokenised, expected {n}")
    width = max(1, min(int(lengths.max(initial=0)), max_length))
    return (table if width == max_length else np.ascontiguousarray(table[:, :width])), lengths


@dataclass(eq=False)
class TokenCache:
    entity_table: Tensor  # (E, W) int32: word pieces without special tokens, cut at max_length, right-padded
    entity_lengths: Tensor  # (E,) int32 untruncated lengths: longest_first compares the full lengths
    relation_table: Tensor  # (2R, W') int32, per relation id in [0, 2R)
    relation_lengths: Tensor  # (2R,) int32
    max_length: int
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    link: LinkedTokens | None = None  # data.link_graph: the pieces of SimKGC's neighbour text
    # how many inputs max_length cuts: "entity_texts" ([CLS] text [SEP]) and "train_queries" ([CLS] head [SEP]
    # relation [SEP] over the training triples and their inverses); not part of equality
    truncated: dict[str, int] = field(default_factory=dict)
    cache_path: Path | None = None  # the token_store entry the four tables are mapped from (None: in memory)

    @classmethod
    def build(cls, kg: KG, tokenizer, max_length: int, *, warn: bool = True, link_graph: bool = False) -> TokenCache:
        """Tokenise every text of `kg` in memory; counts what max_length truncates (`truncated`) and, with
        `warn`, reports it in one `DataWarning`. `link_graph`: entity texts get SimKGC's neighbour names."""
        special = _special_ids(tokenizer, max_length)
        tables = {k: torch.from_numpy(v) for k, v in _tokenise(kg, tokenizer, max_length, special["pad_id"]).items()}
        return cls._assemble(kg, tokenizer, max_length, tables, special, link_graph=link_graph, warn=warn)

    @classmethod
    def load_or_build(cls, kg: KG, tokenizer, max_length: int, *, cache_dir: Path | None, link_graph: bool = False,
                      warn: bool = True) -> TokenCache:
        """`build`, with the four tables read from (or, the first time, written to) the `token_store` entry
        of this tokenizer, max length and these texts under `cache_dir` and memory-mapped from there
        (`cache_path`). `cache_dir=None`: `build`. The truncation counts are computed again on a hit (the
        training triples are not part of the key) and warned about as on a build; the link-graph pieces
        are built in memory each time."""
        if cache_dir is None:
            return cls.build(kg, tokenizer, max_length, warn=warn, link_graph=link_graph)
        special = _special_ids(tokenizer, max_length)
        key = {"format": token_store.FORMAT, "tokenizer": tokenizer_fingerprint(tokenizer),
               "max_length": int(max_length), "texts": text_fingerprint(kg)}
        entry = Path(cache_dir) / token_store.entry_name(key)
        seen = entry.exists()
        expect = {f"{side}_{part}": ("int32", (rows, None) if part == "table" else (rows,))  # what _assemble reads
                  for side, rows in (("entity", kg.num_entities), ("relation", 2 * kg.num_relations))
                  for part in ("table", "lengths")}
        found = token_store.read(entry, key, expect=expect)  # no lock: an entry is whole or absent
        if found is None and not token_store.writable(entry.parent):
            return cls.build(kg, tokenizer, max_length, warn=warn, link_graph=link_graph)  # read-only: in memory
        if found is None:
            with token_store.building(entry):
                # another builder may have written it while this one waited for the lock: look again (what
                # was wrong with an entry seen above has been said)
                unusable = entry.exists()
                found = token_store.read(entry, key, expect=expect, warn=not seen)
                if found is None:
                    arrays = _tokenise(kg, tokenizer, max_length, special["pad_id"])
                    counts = {"entities": kg.num_entities, "relations": 2 * kg.num_relations,
                              "truncated_entity_texts": int((arrays["entity_lengths"] > max_length - 2).sum())}
                    token_store.write(entry, arrays, {"key": key, "special_ids": special, **counts},
                                      replace=unusable)
                    del arrays  # the mapped file replaces the in-memory copy
                    found = token_store.open_arrays(entry), None
        return cls._assemble(kg, tokenizer, max_length, found[0], special, link_graph=link_graph, warn=warn,
                             cache_path=entry)

    @classmethod
    def _assemble(cls, kg: KG, tokenizer, max_length: int, tables: dict[str, Tensor], special: dict[str, int], *,
                  link_graph: bool, warn: bool, cache_path: Path | None = None) -> TokenCache:
        cache = cls(**{k: tables[k] for k in TABLES}, max_length=max_length, **special, cache_path=cache_path)
        if cache.num_entities != kg.num_entities or len(cache.relation_lengths) != 2 * kg.num_relations:
            raise ValueError(f"token tables of {cache.num_entities} entities and {len(cache.relation_lengths)} "
                             f"relations for a KG of {kg.num_entities} and {2 * kg.num_relations}")
        if link_graph:
            cache.link = LinkedTokens.build(kg, tokenizer, cache, warn=warn)
        cache.truncated = cache.count_truncated(kg.train, kg.num_relations)
        n_ent, n_query = cache.truncated["entity_texts"], cache.truncated["train_queries"]
        if warn and (n_ent or n_query):
            what = "entity texts (with neighbour names)" if link_graph else "entity texts"
            data_warning(f"data.max_length={max_length}: {n_ent:,} of {kg.num_entities:,} {what} and {n_query:,} of "
                         f"{2 * len(kg.train):,} training queries are truncated (word pieces past the limit are cut; "
                         "a larger data.max_length keeps them)")
        if cache.link is not None:
            cache.link.check_assembly(kg, tokenizer, cache)
        return cache

    @property
    def num_entities(self) -> int:
        return self.entity_table.shape[0]

    def __eq__(self, other: object) -> bool:
        """The same ids, lengths, special ids and link pieces (not `truncated` or where the tables live)."""
        if not isinstance(other, TokenCache):
            return NotImplemented
        scalars = ("max_length", "cls_id", "sep_id", "pad_id", "mask_id")
        return (all(getattr(self, k) == getattr(other, k) for k in scalars)
                and all(torch.equal(getattr(self, k), getattr(other, k)) for k in TABLES) and self.link == other.link)

    def __getstate__(self) -> dict:
        """Pickled for a spawned data-loader worker: mapped tables travel as their entry's path (the worker
        maps the file again) instead of as a copy of the table."""
        state = dict(self.__dict__)
        if self.cache_path is not None:
            state.update(dict.fromkeys(TABLES))
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.cache_path is not None:
            tables = token_store.open_arrays(self.cache_path)
            for k in TABLES:
                setattr(self, k, tables[k])

    def count_truncated(self, train: Tensor, num_relations: int) -> dict[str, int]:
        """Entity texts longer than [CLS] text [SEP] allows, and training queries (every (h, r, t) of `train`
        and its inverse (t, r + num_relations, h)) whose [CLS] text(h) [SEP] text(r) [SEP] is longer than
        max_length (with link_graph: entity texts as ranking candidates, i.e. with all their neighbours;
        query heads as in training, without the partner). Counted ROWS_PER_STEP triples at a time."""
        entities = int((self.text_lengths(torch.arange(self.num_entities)) > self.max_length - 2).sum())
        queries = 0
        for rows in train.split(ROWS_PER_STEP):
            h, r, t = rows.unbind(1)
            for head, rel, partner in ((h, r, t), (t, r + num_relations, h)):
                length = self.text_lengths(head, partner) + self.relation_lengths[rel].long() + 3
                queries += int((length > self.max_length).sum())
        return {"entity_texts": entities, "train_queries": queries}

    def used_ids(self) -> Tensor:
        """Sorted unique word-piece ids that inputs are built from: every table's ids within each row's
        length, link-graph pieces included (for vocabulary checks and pruning; `vocab.used_token_ids` adds the
        special tokens). Read ROWS_PER_STEP rows at a time."""
        tables = [(self.entity_table, self.entity_lengths), (self.relation_table, self.relation_lengths)]
        if self.link is not None:
            tables.append((self.link.table, self.link.lengths))
        found = [torch.zeros(0, dtype=torch.long)]
        for table, lengths in tables:
            columns = torch.arange(table.shape[1])
            for rows, n in zip(table.split(ROWS_PER_STEP), lengths.split(ROWS_PER_STEP)):
                found.append(torch.unique(rows[columns < n.unsqueeze(1)]).long())
        return torch.unique(torch.cat(found))

    # ---- an entity's text (without special tokens); `exclude`: the training partner (data.link_graph) -----
    def text_ids(self, e: int, exclude: int | None = None) -> tuple[list[int], int]:
        """Word pieces of entity e's text, cut at max_length, and its untruncated length."""
        if self.link is None:
            return _row(self.entity_table, self.entity_lengths, e, self.max_length)
        return self.link.text_ids(e, exclude, self.max_length)

    def text_batch(self, e: Tensor, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`text_ids` for every e[i] (exclude[i] = -1: none): (B, W) int32 ids, right-padded with junk past each
        row's length and holding at least its first max_length pieces, and (B,) long untruncated lengths."""
        if self.link is None:
            return self.entity_table[e], self.entity_lengths[e].long()
        return self.link.text_batch(e, exclude, self.max_length)

    def text_lengths(self, e: Tensor, exclude: Tensor | None = None) -> Tensor:
        if self.link is None:
            return self.entity_lengths[e].long()
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
        (a, a_len), (b, b_len) = self.text_ids(h, exclude), _row(self.relation_table, self.relation_lengths, r,
                                                                 self.max_length)
        na, nb = truncate_longest_first(a_len, b_len, self.max_length - 3)
        ids = [self.cls_id, *a[:na], self.sep_id, *b[:nb], self.sep_id]
        return ids, [0] * (na + 2) + [1] * (nb + 1)

    def entity_ids(self, e: int, exclude: int | None = None) -> list[int]:
        """[CLS] text(e) [SEP]: how tails, self-negative heads and every ranking candidate are encoded."""
        return [self.cls_id, *self.text_ids(e, exclude)[0][: self.max_length - 2], self.sep_id]

    def hr_batch(self, h: Tensor, r: Tensor, exclude: Tensor | None = None) -> dict[str, Tensor]:
        """`hr_ids` for every (h[i], r[i], exclude[i]), right-padded to the longest row: the batched model input."""
        a_rows, a_len = self.text_batch(h, exclude)
        na, nb = truncate_longest_first_batch(a_len, self.relation_lengths[r].long(), self.max_length - 3)
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
        return _finish(ids, pos, length, token_types=torch.zeros_like(ids, dtype=torch.long), cls_id=self.cls_id,
                       pad_id=self.pad_id)


def _row(table: Tensor, lengths: Tensor, i: int, max_length: int) -> tuple[list[int], int]:
    """Row i's kept ids (its first min(length, max_length) columns) and its untruncated length."""
    n = int(lengths[i])
    return table[i, :min(n, max_length)].tolist(), n


def _special_ids(tokenizer, max_length: int) -> dict[str, int]:
    if max_length < 5:
        raise ValueError(f"data.max_length={max_length} is too short for [CLS] entity [SEP] relation [SEP]")
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs [CLS], [SEP] and [PAD] tokens (a BERT-style tokenizer)")
    mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id
    return {"cls_id": int(tokenizer.cls_token_id), "sep_id": int(tokenizer.sep_token_id),
            "pad_id": int(tokenizer.pad_token_id), "mask_id": int(mask_id)}


def _tokenise(kg: KG, tokenizer, max_length: int, pad_id: int) -> dict[str, np.ndarray]:
    """The four tables (`TABLES`) of `kg`'s entity and relation texts."""
    ent, ent_len = tokenise_table(tokenizer, entity_text_chunks(kg), kg.num_entities, max_length, pad_id)
    rel, rel_len = tokenise_table(tokenizer, [relation_texts(kg)], 2 * kg.num_relations, max_length, pad_id)
    return {"entity_table": ent, "entity_lengths": ent_len, "relation_table": rel, "relation_lengths": rel_len}


@dataclass(eq=False)
class LinkedTokens:
    """The pieces of SimKGC's neighbour text (data.link_graph): an entity's text is its "head" (for an entity
    with a short description, the text up to its neighbour names, `text.linked_prefix`; otherwise its plain
    text) followed by the names of the neighbours it shows (`LinkGraph.shown`)."""

    graph: LinkGraph
    table: Tensor  # (2E, W) int32: rows 0..E-1 each entity's head, E..2E-1 its name as a neighbour list shows it
    lengths: Tensor  # (2E,) int32 untruncated lengths of those rows
    bare: Tensor  # (E,) int32: length of the head when no name follows (SimKGC's "name" instead of "name:")
    # entities whose text differs from SimKGC's for some neighbour list (`text.prefix_mismatch`; warned about)
    mismatched: list[int] = field(default_factory=list)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LinkedTokens):
            return NotImplemented
        return (torch.equal(self.table, other.table) and torch.equal(self.lengths, other.lengths)
                and torch.equal(self.bare, other.bare) and self.mismatched == other.mismatched)

    @classmethod
    def build(cls, kg: KG, tokenizer, plain: TokenCache, *, warn: bool = True) -> LinkedTokens:
        """`plain`: the cache without neighbours; its entity rows are the heads wherever the head is the
        plain text. Per-entity lists here (the link graph is not the path the scale targets are set for)."""
        graph = LinkGraph.of(kg)
        n, max_length, pad_id = kg.num_entities, plain.max_length, plain.pad_id
        parts = linked_texts(kg)
        heads = np.full((n, max_length), pad_id, dtype=np.int32)
        heads[:, :plain.entity_table.shape[1]] = plain.entity_table.numpy()
        head_len = plain.entity_lengths.numpy().copy()
        bare = head_len.copy()
        # most heads are the plain text ("name: desc"); entities without description read "name:"
        new = [e for e, a in enumerate(graph.augmented.tolist())
               if a and parts[e][0] != entity_text(kg.entity_names[e], kg.entity_descs[e])]
        new_ids = word_pieces(tokenizer, [parts[e][0] for e in new], max_length)
        for e, ids in zip(new, new_ids):
            heads[e] = pad_id
            heads[e, :min(len(ids), max_length)] = ids[:max_length]
            head_len[e] = bare[e] = len(ids)
        # SimKGC reads "name" (no ":") when the description is only the name and no neighbour follows
        differ = [(e, ids) for e, ids in zip(new, new_ids) if parts[e][1] != parts[e][0]]
        for (e, head), ids in zip(differ, word_pieces(tokenizer, [parts[e][1] for e, _ in differ], max_length)):
            if head[:min(len(ids), max_length)] != ids[:max_length]:
                raise ValueError(f"data.link_graph: the word pieces of {parts[e][1]!r} are not a prefix of those of "
                                 f"{parts[e][0]!r} (entity {kg.entity_ids[e]}); neighbour text needs a tokenizer "
                                 "that splits words and punctuation apart, like BERT's")
            bare[e] = len(ids)
        names, name_len = tokenise_table(tokenizer, _chunks(kg.entity_names), n, max_length, pad_id)
        width = max(names.shape[1], 1, min(int(head_len.max(initial=0)), max_length))
        table = np.full((2 * n, width), pad_id, dtype=np.int32)
        table[:n] = heads[:, :width]
        table[n:, :names.shape[1]] = names
        hits = _prefix_mismatches(kg, graph)
        if warn and hits:
            data_warning(f"data.link_graph: {len(hits)} entities have a name that continues their description into "
                         f"their neighbours' names (e.g. {kg.entity_ids[hits[0]]}: {kg.entity_names[hits[0]]!r}); "
                         "SimKGC would strip the name from such a text, here it is kept")
        return cls(graph, torch.from_numpy(table), torch.from_numpy(np.concatenate([head_len, name_len])),
                   torch.from_numpy(bare), hits)

    def text_ids(self, e: int, exclude: int | None, max_length: int) -> tuple[list[int], int]:
        """Readable reference of `text_batch` for one entity."""
        shown = self.graph.neighbour_ids(e, exclude)
        if not shown:
            return _row(self.table, self.bare, e, max_length)
        rows = [e, *(self.graph.num_entities + x for x in shown)]
        ids = [i for row in rows for i in _row(self.table, self.lengths, row, max_length)[0]]
        return ids[:max_length], sum(int(self.lengths[row]) for row in rows)

    def segments(self, e: Tensor, exclude: Tensor | None) -> tuple[Tensor, Tensor]:
        """(B, 1 + K) table rows and untruncated lengths (long) of the pieces of each text (0: not shown)."""
        n = self.graph.num_entities
        nb = self.graph.neighbours[e]
        shown = self.graph.shown(e, exclude)
        rows = torch.cat([e.unsqueeze(1), n + nb.clamp(min=0)], dim=1)
        head = torch.where(shown.any(1), self.lengths[e], self.bare[e])
        lens = torch.cat([head.unsqueeze(1), torch.where(shown, self.lengths[n + nb.clamp(min=0)], 0)], dim=1)
        return rows, lens.long()

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
        for e, ids in zip(ents, word_pieces(tokenizer, texts, cache.max_length)):
            got, n = cache.text_ids(e)
            # lengths of texts cut before tokenising (`word_pieces`) are lower bounds past max_length
            if got != ids[:cache.max_length] or (n != len(ids) and min(n, len(ids)) < cache.max_length):
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


def word_pieces(tokenizer, texts: list[str], max_length: int | None = None) -> list[list[int]]:
    """Token ids of each text without special tokens (only the ids are asked for: faster on big lists).

    With `max_length`, a text longer than TEXT_CHARS_PER_TOKEN x max_length characters is cut first
    (`cut_text`: at a space, so the pieces of the cut are the first pieces of the whole text, for a tokenizer
    that splits words at whitespace, as BERT's does) and its ids are those of the cut: at least max_length
    of them where the cut holds that many, the first max_length exact, so what a caller keeps of the text
    (max_length pieces) and whether it is truncated are as for the whole text. A cut with fewer pieces
    (long words, runs of spaces) is tokenised once more, RETRY_CUT times longer, and then taken as it is: a
    text whose first RETRY_CUT x TEXT_CHARS_PER_TOKEN x max_length characters hold fewer than max_length
    word pieces is read as those characters. So one 10 MB text costs what a text of 1,000 characters (or,
    at worst, 16,000) does, not seconds and a gigabyte."""
    if not texts:
        return []
    limit = TEXT_CHARS_PER_TOKEN * max_length if max_length is not None else None
    cut = [] if limit is None else [i for i, t in enumerate(texts) if len(t) > limit]
    if not cut:
        return _ids(tokenizer, texts)
    whole = {i: texts[i] for i in cut}
    texts = [cut_text(t, limit) for t in texts]
    pieces = _ids(tokenizer, texts)
    again = [i for i in cut if len(pieces[i]) < max_length]
    if again:
        for i, ids in zip(again, _ids(tokenizer, [cut_text(whole[i], RETRY_CUT * limit) for i in again])):
            pieces[i] = ids
    return pieces


def cut_text(text: str, limit: int) -> str:
    """`text` if it has at most `limit` characters, else its first `limit` at most: up to its last whitespace
    in the second half of them (no word is cut), or exactly `limit` where that half has none."""
    if len(text) <= limit:
        return text
    for i in range(limit, limit // 2, -1):  # text[limit] too: a cut just before a space cuts no word
        if text[i].isspace():
            return text[:i]
    return text[:limit]


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                     return_token_type_ids=False)["input_ids"]


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
    ids = torch.where(pos == 0, cls_id, ids).masked_fill(~valid, pad_id).long()
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
