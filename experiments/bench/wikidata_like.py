"""Graphs shaped like Wikidata5M at any fraction of its size, for the scale benchmark (scale.py).

`wikidata_like_triples` / `wikidata_like_kg`: ~4.49 triples per entity, Zipf degrees, one hub holding 6%
of the triples as their tail (its inverse query has ~1.2M answers at full scale) and 200 mid-size hubs
holding 4%, Zipf relation frequencies, and texts of real vocabulary words with SimKGC's Wikidata5M length
caps. What costs time at Wikidata5M's scale (hub queries in the false-negative mask, tokenising 4.6M texts,
the filter index) then costs it here too, so the host code can be measured on a CPU and extrapolated.
Everything is vectorised numpy (no Python loop over triples or entities) and deterministic by seed. torch
and the package are imported where a graph is built: the benchmark's `--help` reads the constants only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

    from kgc_kd.data.kg import KG

# Wikidata5M, transductive split (KEPLER's release; SimKGC's largest benchmark)
WIKIDATA5M = {"entities": 4_594_485, "relations": 822, "train": 20_614_279, "valid": 5_163, "test": 5_133}
TRIPLES_PER_ENTITY = WIKIDATA5M["train"] / WIKIDATA5M["entities"]  # ~4.49
# SimKGC's preprocessing cuts Wikidata5M descriptions at 30 words (names and relation aliases at 10)
DESC_WORDS_MAX = 30


def _power_ranks(rng: np.random.Generator, size: int, n: int, exponent: float) -> np.ndarray:
    """`size` ranks in [0, n) with P(rank <= k) = ((k + 1) / n) ** (1 - exponent): the continuous Zipf law, so
    the entity of rank k is drawn ~ (k + 1) ** -exponent times as often as a uniform draw would have it."""
    u = rng.random(size)
    return np.minimum((n * u ** (1.0 / (1.0 - exponent))).astype(np.int64), n - 1)


def _zipf_choice(rng: np.random.Generator, size: int, n: int, exponent: float) -> np.ndarray:
    """`size` draws from the discrete Zipf law P(k) ~ (k + 1) ** -exponent over [0, n) (n small: a CDF table)."""
    cdf = np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** -exponent)
    return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right"), n - 1)


def _distinct(rng: np.random.Generator, draw, count: int) -> np.ndarray:
    """`count` distinct int64 keys (sorted) from repeated `draw(size)` calls; extras are dropped at random."""
    keys = np.empty(0, dtype=np.int64)
    for _ in range(64):
        if len(keys) >= count:
            break
        need = count - len(keys)
        keys = np.concatenate([keys, draw(need + need // 8 + 16)])
        keys.sort()  # sort + neighbour test: numpy's unique/union1d hash 20M keys far slower than this
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
    else:
        raise ValueError(f"cannot draw {count:,} distinct triples: the graph is too small for its triple count")
    if len(keys) > count:
        keep = np.ones(len(keys), dtype=bool)
        keep[rng.choice(len(keys), len(keys) - count, replace=False)] = False
        keys = keys[keep]
    return keys


def _entity_order(num_entities: int, seed: int) -> np.ndarray:
    """Entities in the roles `wikidata_like_triples` gives them: [hub, mid hubs..., the rest by popularity]."""
    return np.random.default_rng([seed, 0]).permutation(num_entities)


def wikidata_like_hubs(num_entities: int, *, mid_hubs: int = 200, seed: int = 0) -> tuple[int, Tensor]:
    """The hub and the mid-size hubs (entity ids) of `wikidata_like_triples(num_entities, seed=seed, ...)`."""
    import torch

    order = _entity_order(num_entities, seed)
    return int(order[0]), torch.from_numpy(order[1:1 + mid_hubs].copy())


def wikidata_like_triples(num_entities: int, *, num_triples: int | None = None,
                          num_relations: int = WIKIDATA5M["relations"], hub_share: float = 0.06,
                          mid_hubs: int = 200, mid_hub_share: float = 0.04, zipf: float = 0.5,
                          relation_zipf: float = 1.0, seed: int = 0) -> Tensor:
    """(N, 3) int64 distinct (h, r, t) triples in random order, shaped like Wikidata5M's training graph.

    - `hub_share` of the triples have one hub entity as tail under the most frequent relation, each from a
      different head (Wikidata's "instance of: human"): at full scale its inverse query has ~1.2M answers.
    - `mid_hub_share` go to `mid_hubs` mid-size hubs as tails (countries, occupations: ~4k triples each at
      full scale), heads and relations drawn as below.
    - The rest join the other entities, head and tail each drawn with a Zipf law of exponent `zipf` over a
      random popularity order (rank k ~ (k + 1) ** -zipf: with 0.5 the most popular reach mid-hub sizes),
      and relations from a discrete Zipf law of exponent `relation_zipf` over their own random order.
    `num_triples` defaults to Wikidata5M's ratio (~4.49 per entity). Vectorised numpy; deterministic by
    `seed`; 20.6M triples (full scale) take well under a minute.
    """
    import torch

    n, r = num_entities, num_relations
    if num_triples is None:
        num_triples = round(TRIPLES_PER_ENTITY * n)
    if not (0 <= hub_share and 0 <= mid_hub_share and hub_share + mid_hub_share < 1 and 0 <= zipf < 1):
        raise ValueError("wikidata_like_triples needs hub shares >= 0 summing below 1 and 0 <= zipf < 1")
    if n < mid_hubs + 3 or r < 1 or num_triples < 1:
        raise ValueError(f"wikidata_like_triples needs > mid_hubs + 2 = {mid_hubs + 2} entities, relations and triples")
    n_hub = round(hub_share * num_triples)
    n_mid = round(mid_hub_share * num_triples) if mid_hubs else 0
    if n_hub > n - 1:
        raise ValueError(f"hub_share={hub_share} of {num_triples:,} triples needs more than {n:,} entities (distinct heads)")
    order = _entity_order(n, seed)
    hub, mids, rest = order[0], order[1:1 + mid_hubs], order[1 + mid_hubs:]
    rng = np.random.default_rng([seed, 1])
    rel_order = rng.permutation(r)

    def key(h: np.ndarray, rel: np.ndarray, t: np.ndarray) -> np.ndarray:
        return (h * r + rel) * n + t

    def relations(size: int) -> np.ndarray:
        return rel_order[_zipf_choice(rng, size, r, relation_zipf)]

    def popular(size: int) -> np.ndarray:  # entities of the rest, by the Zipf law over their popularity
        return rest[_power_ranks(rng, size, len(rest), zipf)]

    hub_heads = np.delete(order, 0)[rng.choice(n - 1, n_hub, replace=False)]  # distinct: distinct triples
    parts = [key(hub_heads, np.full(n_hub, rel_order[0]), np.full(n_hub, hub))]
    parts.append(_distinct(rng, lambda s: key(popular(s), relations(s), mids[rng.integers(0, mid_hubs, s)]), n_mid))
    parts.append(_distinct(rng, lambda s: key(popular(s), relations(s), popular(s)), num_triples - n_hub - n_mid))
    keys = np.concatenate(parts)  # the three parts have disjoint tails: distinct as a whole
    del parts
    keys = keys[rng.permutation(len(keys))]
    hr, t = np.divmod(keys, n)
    del keys
    h, rel = np.divmod(hr, r)
    return torch.from_numpy(np.stack([h, rel, t], axis=1))


def vocabulary_words(tokenizer) -> list[str]:
    """The whole words of a word-piece vocabulary (letters only: no '##' continuations, special tokens,
    digits or punctuation), sorted: texts made of them tokenise into real, mostly single, word pieces."""
    return sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 1)


def _lengths(rng: np.random.Generator, size: int, words: int | tuple[int, int]) -> np.ndarray:
    lo, hi = (words, words) if isinstance(words, int) else words
    if not 1 <= lo <= hi:
        raise ValueError(f"a text length range needs 1 <= low <= high, got {words!r}")
    return rng.integers(lo, hi + 1, size)


def _texts(rng: np.random.Generator, count: int, vocab: Sequence[str], words: int | tuple[int, int],
           chunk: int = 20_000) -> list[str]:
    """`count` texts of words drawn uniformly from `vocab`, lengths uniform in `words` (an int or an inclusive
    range). A chunk of texts at a time is gathered byte-wise from the vocabulary's "word " bytes, its
    text ends turned into newlines, and decoded and split once: no Python loop over texts or words."""
    encoded = [(w + " ").encode() for w in vocab]
    table = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    size = np.array([len(e) for e in encoded], dtype=np.int64)
    offset = np.cumsum(size) - size
    out: list[str] = []
    for begin in range(0, count, chunk):
        lengths = _lengths(rng, min(chunk, count - begin), words)
        ids = rng.integers(0, len(vocab), int(lengths.sum()))
        n_bytes = size[ids]
        ends = np.cumsum(n_bytes)
        index = np.repeat(offset[ids] - (ends - n_bytes), n_bytes) + np.arange(ends[-1])
        text = table[index]
        text[ends[np.cumsum(lengths) - 1] - 1] = ord("\n")  # the space after a text's last word
        out += text.tobytes().decode().split("\n")[:-1]
    return out


def wikidata_like_kg(num_entities: int, *, words: Sequence[str], name_words: int | tuple[int, int] = (1, 4),
                     desc_words: int | tuple[int, int] = (20, DESC_WORDS_MAX),
                     relation_words: int | tuple[int, int] = (1, 3), num_triples: int | None = None,
                     num_valid: int | None = None, num_test: int | None = None, seed: int = 0,
                     **shape) -> KG:
    """A Wikidata5M-shaped KG: `wikidata_like_triples` (its `shape` keywords: num_relations, hub shares,
    zipf) split into train (`num_triples`, default ~4.49 per entity) and valid/test (default: Wikidata5M's
    counts scaled by num_entities, at least 1), with texts of words drawn from `words` (a real word-piece
    vocabulary's words, see `vocabulary_words`, so that tokenising them costs what real text does).
    Text lengths in words are an int or an inclusive (low, high) range: Wikidata5M's names are short
    aliases and its descriptions Wikipedia abstracts, which SimKGC cuts to 10 and 30 words. Ids are
    Wikidata-style ("Q<i>", "P<k>")."""
    from kgc_kd.data.kg import KG

    if not words:
        raise ValueError("wikidata_like_kg needs a non-empty word list")
    scale = num_entities / WIKIDATA5M["entities"]
    n_train = round(TRIPLES_PER_ENTITY * num_entities) if num_triples is None else num_triples
    n_valid = max(1, round(scale * WIKIDATA5M["valid"])) if num_valid is None else num_valid
    n_test = max(1, round(scale * WIKIDATA5M["test"])) if num_test is None else num_test
    triples = wikidata_like_triples(num_entities, num_triples=n_train + n_valid + n_test, seed=seed, **shape)
    num_relations = shape.get("num_relations", WIKIDATA5M["relations"])
    rng = np.random.default_rng([seed, 2])  # texts from their own stream: the triples do not depend on them
    return KG(
        name=f"wikidata-like-{num_entities}-{seed}",
        entity_ids=[f"Q{i}" for i in range(num_entities)],
        entity_names=_texts(rng, num_entities, words, name_words),
        entity_descs=_texts(rng, num_entities, words, desc_words),
        relation_ids=[f"P{k}" for k in range(num_relations)],
        relation_texts=_texts(rng, num_relations, words, relation_words),
        valid=triples[:n_valid],
        test=triples[n_valid:n_valid + n_test],
        train=triples[n_valid + n_test:],
        source=f"wikidata-like:{seed}",
    )
