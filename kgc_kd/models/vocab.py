"""Vocabulary pruning: keep only the word-pieces a knowledge graph's texts actually use.

MiniLM-L6 holds 11.7M of its 22.6M parameters in a 30522 x 384 word-embedding table, yet the texts of
a small KG (entity names/descriptions, relation texts) use a few hundred to a few thousand distinct
word-pieces. Dropping the unused rows shrinks a compressed student by half without changing any output
on the KG's own texts: an embedding lookup of a kept row returns exactly the same vector, and every
other weight (position / token-type embeddings, LayerNorm, the transformer layers) is untouched.

Pruning renumbers the vocabulary (new id i = old id ``kept[i]``), so the tokenizer has to be pruned the
same way (:func:`prune_tokenizer`), and ids cached with the old tokenizer have to be remapped
(:func:`id_map`, :func:`remap_ids`). `BiEncoder.prune_vocabulary` prunes a bi-encoder's embeddings and its
export saves the pruned tokenizer.

This module works on plain ``transformers`` models and tokenizers and has no Lightning imports: it is
a model-surgery utility that can run before a model is wrapped in a LightningModule, in an export
script, or in a notebook, without pulling in the training stack.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["DROPPED", "used_token_ids", "prune_embeddings", "id_map", "remap_ids", "prune_tokenizer"]

DROPPED = -1  # value of `id_map` for an old id that is not in the pruned vocabulary

# Init kwargs that describe where the original tokenizer came from or carry old ids: not passed on.
_DROP_INIT_KWARGS = ("name_or_path", "vocab_file", "tokenizer_file", "merges_file", "added_tokens_decoder",
                     "vocab", "merges", "is_local", "local_files_only", "tokenizer_object", "special_tokens_map_file")


def used_token_ids(token_ids: Tensor | Iterable[Sequence[int]], tokenizer) -> torch.LongTensor:
    """Sorted unique ids that occur in ``token_ids`` plus every special token id of ``tokenizer``.

    ``token_ids``: a tensor of ids (any shape), e.g. a TokenCache's ``used_ids()``, or any iterable of id
    sequences (lists or tensors), e.g. ``tokenizer(texts, add_special_tokens=False)["input_ids"]``. A
    TokenCache's ids are cut at ``max_length``, so also pass the untruncated ids of its texts if longer
    inputs will ever be built. Sorting keeps the relative order of the old ids (BERT's [PAD] = 0 stays 0).
    """
    if isinstance(token_ids, Tensor):
        parts = [token_ids.reshape(-1).long()]
    else:
        parts = [ids.reshape(-1).long() if isinstance(ids, Tensor) else torch.tensor(list(ids), dtype=torch.long)
                 for ids in token_ids]
    parts.append(torch.tensor(list(tokenizer.all_special_ids), dtype=torch.long))
    kept = torch.unique(torch.cat(parts))  # sorted
    if not kept.numel():
        return kept
    n = len(tokenizer)
    if int(kept[0]) < 0 or int(kept[-1]) >= n:
        bad = int(kept[0]) if int(kept[0]) < 0 else int(kept[-1])
        raise ValueError(f"token id {bad} is outside the tokenizer's vocabulary of {n} ids")
    return kept


def _check_kept(kept: Tensor, vocab_size: int) -> Tensor:
    kept = torch.as_tensor(kept, dtype=torch.long).reshape(-1)
    if kept.numel() == 0:
        raise ValueError("kept is empty: a pruned vocabulary needs at least the special tokens")
    if int(kept.min()) < 0 or int(kept.max()) >= vocab_size:
        raise ValueError(f"kept ids must lie in [0, {vocab_size}); got min {int(kept.min())}, max {int(kept.max())}")
    if torch.unique(kept).numel() != kept.numel():
        raise ValueError("kept contains duplicate ids")
    return kept


def id_map(kept: Tensor, vocab_size: int) -> torch.LongTensor:
    """Old id -> new id as a LongTensor of length ``vocab_size``; ``DROPPED`` (-1) for dropped ids."""
    kept = _check_kept(kept, vocab_size)
    m = torch.full((vocab_size,), DROPPED, dtype=torch.long)
    m[kept] = torch.arange(kept.numel(), dtype=torch.long)
    return m


def remap_ids(ids: Any, mapping: Tensor):
    """Translate old token ids to new ones with an :func:`id_map` table.

    ``ids``: a tensor (any shape; a LongTensor of the same shape comes back) or a (possibly nested,
    ragged) list of ints (the same nesting comes back).
    Raises ValueError if any id was dropped by pruning or lies outside the old vocabulary.
    """
    if isinstance(ids, Tensor):
        flat = ids.reshape(-1).long()
        _check_mapped(flat, mapping)
        return mapping[flat].reshape(ids.shape)
    flat_list: list[int] = []

    def collect(x):
        if isinstance(x, (list, tuple)):
            for y in x:
                collect(y)
        else:
            flat_list.append(int(x))

    collect(ids)
    flat = torch.tensor(flat_list, dtype=torch.long)
    _check_mapped(flat, mapping)
    new = iter(mapping[flat].tolist())

    def rebuild(x):
        if isinstance(x, (list, tuple)):
            return [rebuild(y) for y in x]
        return next(new)

    return rebuild(ids)


def _check_mapped(flat: Tensor, mapping: Tensor) -> None:
    if flat.numel() == 0:
        return
    outside = (flat < 0) | (flat >= mapping.numel())
    if bool(outside.any()):
        raise ValueError(f"{int(outside.sum())} token ids lie outside the original vocabulary of {mapping.numel()} "
                         f"ids (e.g. id {int(flat[outside][0])})")
    dropped = mapping[flat] < 0
    if bool(dropped.any()):
        bad = flat[dropped]
        raise ValueError(
            f"{int(dropped.sum())} token ids ({torch.unique(bad).numel()} distinct) were dropped by vocabulary "
            f"pruning (e.g. old id {int(bad[0])}); re-prune with these texts included (used_token_ids) or "
            "re-tokenise them with the pruned tokenizer"
        )


def prune_embeddings(encoder, kept: Tensor) -> None:
    """Replace ``encoder``'s input word embedding by one holding only rows ``kept``, in place.

    New id i is old id ``kept[i]``; ``config.vocab_size`` becomes ``len(kept)``, the embedding's
    ``padding_idx`` and ``config.pad_token_id`` (if set) are remapped. Position / token-type embeddings
    and LayerNorm are not touched, so on kept ids the pruned encoder's outputs equal the original's.
    Models with an output embedding (an LM head, usually tied to the input one) are refused: prune the
    bare encoder (``AutoModel``), which is what the KGC models use.
    """
    old = encoder.get_input_embeddings()
    if not isinstance(old, nn.Embedding):
        raise TypeError(f"expected an nn.Embedding as input embedding, got {type(old).__name__}")
    get_out = getattr(encoder, "get_output_embeddings", None)
    if get_out is not None and get_out() is not None:
        raise ValueError("the model has an output embedding (LM head); prune the bare encoder instead")
    kept = _check_kept(kept, old.num_embeddings)
    mapping = id_map(kept, old.num_embeddings)

    def remapped(old_id: int | None, what: str) -> int | None:
        if old_id is None:
            return None
        new_id = int(mapping[old_id]) if 0 <= old_id < old.num_embeddings else DROPPED
        if new_id == DROPPED:
            raise ValueError(f"{what} {old_id} is not among the kept ids")
        return new_id

    padding_idx = remapped(old.padding_idx, "the embedding's padding_idx")
    cfg = encoder.config
    pad_token_id = remapped(getattr(cfg, "pad_token_id", None), "config.pad_token_id")

    w = old.weight
    new = nn.Embedding(kept.numel(), old.embedding_dim, padding_idx=padding_idx, max_norm=old.max_norm,
                       norm_type=old.norm_type, scale_grad_by_freq=old.scale_grad_by_freq, sparse=old.sparse,
                       device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w[kept.to(w.device)])
    new.weight.requires_grad_(w.requires_grad)
    new.train(old.training)
    encoder.set_input_embeddings(new)
    cfg.vocab_size = kept.numel()
    if pad_token_id is not None:
        cfg.pad_token_id = pad_token_id


def _fix_post_processor(pp: dict | None, new_id: dict[str, int]) -> None:
    """Rewrite the special-token ids inside a serialised post-processor (tokenizer.json), in place."""
    if pp is None:
        return

    def lookup(tok: str) -> int:
        if tok not in new_id:
            raise ValueError(f"the post-processor's special token {tok!r} is not among the kept tokens")
        return new_id[tok]

    kind = pp.get("type")
    if kind == "Sequence":
        for sub in pp.get("processors", []):
            _fix_post_processor(sub, new_id)
    elif kind == "TemplateProcessing":
        for spec in pp.get("special_tokens", {}).values():
            spec["ids"] = [lookup(t) for t in spec["tokens"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("cls", "sep"):
            if key in pp:
                pp[key] = [pp[key][0], lookup(pp[key][0])]
    elif kind not in ("ByteLevel",):
        raise ValueError(f"unsupported post-processor type {kind!r}")


def prune_tokenizer(tokenizer, kept: Tensor):
    """A new fast tokenizer whose WordPiece vocabulary is only the ``kept`` tokens, renumbered 0..k-1
    in ``kept`` order (new id i = old id ``kept[i]``).

    Normalisation, pre-tokenisation, decoder, truncation/padding settings, special tokens (with their
    new ids) and the [CLS]/[SEP] post-processor are carried over; the result is an instance of the same
    class (in transformers 5 ``BertTokenizer`` is itself the tokenizers-backed class) and round-trips
    through ``save_pretrained`` + ``AutoTokenizer.from_pretrained``.

    What is guaranteed. WordPiece is greedy longest-match-first: inside a word it repeatedly takes the
    longest vocabulary entry that is a prefix of the rest. Let a word's full-vocabulary pieces be
    p1..pn, all kept. At each step the full vocabulary had no entry longer than p_i matching there, so
    neither has the (smaller) pruned one, and p_i itself is kept: the pruned tokenizer picks p_i too.
    Hence any text whose pieces under the full vocabulary are all kept tokenises to exactly
    ``id_map(kept)[original ids]`` (special tokens, pairs and token types included).
    What is not: a word with a dropped piece may split differently (into shorter kept pieces) or
    become [UNK]; and a word the full vocabulary could not split at all (emitted as a whole-word [UNK])
    may, rarely, split into kept pieces under the pruned vocabulary, since greedy search can take a
    different path once the longer entries are gone. Words turned into [UNK] for exceeding
    ``max_input_chars_per_word`` stay [UNK].
    """
    backend = tokenizer.backend_tokenizer
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "WordPiece":
        raise ValueError(f"prune_tokenizer supports WordPiece tokenizers only, not {model.get('type')!r}")
    n_old = backend.get_vocab_size(with_added_tokens=True)
    kept = _check_kept(kept, n_old)
    kept_set = set(kept.tolist())
    missing = [t for t, i in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids) if i not in kept_set]
    if missing:
        raise ValueError(f"special tokens {missing} are not among the kept ids (use used_token_ids)")

    tokens = [backend.id_to_token(int(i)) for i in kept]
    new_id = {t: i for i, t in enumerate(tokens)}
    if len(new_id) != len(tokens):
        raise ValueError("kept ids map to duplicate token strings")
    unk = model.get("unk_token")
    if unk is not None and unk not in new_id:
        raise ValueError(f"the WordPiece unk_token {unk!r} is not among the kept tokens")

    model["vocab"] = new_id
    added = []
    for tok in spec.get("added_tokens") or []:
        if tok["content"] in new_id:
            added.append({**tok, "id": new_id[tok["content"]]})
        elif tok.get("special"):
            raise ValueError(f"special added token {tok['content']!r} is not among the kept tokens")
    spec["added_tokens"] = added
    _fix_post_processor(spec.get("post_processor"), new_id)
    if spec.get("padding"):
        pad_tok = spec["padding"].get("pad_token")
        if pad_tok not in new_id:
            raise ValueError(f"the padding token {pad_tok!r} is not among the kept tokens")
        spec["padding"]["pad_id"] = new_id[pad_tok]

    from tokenizers import Tokenizer

    new_backend = Tokenizer.from_str(json.dumps(spec))
    kwargs = {k: v for k, v in tokenizer.init_kwargs.items() if k not in _DROP_INIT_KWARGS}
    kwargs["model_max_length"] = tokenizer.model_max_length
    kwargs["tokenizer_object"] = new_backend
    pruned = type(tokenizer)(**kwargs)
    # Classes that rebuild their backend in __init__ (BertTokenizer does, also when reloading) must agree
    # with the tokenizer.json we wrote; a mismatch would only show up after save + reload.
    pruned_spec = json.loads(pruned.backend_tokenizer.to_str())
    for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        if pruned_spec.get(part) != spec.get(part):
            raise RuntimeError(f"prune_tokenizer: the {part} of the rebuilt {type(tokenizer).__name__} differs "
                               f"from the original's:\n{pruned_spec.get(part)}\n!=\n{spec.get(part)}")
    if pruned.get_vocab() != new_id:
        raise RuntimeError("prune_tokenizer: the rebuilt tokenizer's vocabulary differs from the kept tokens")
    return pruned
