"""SimKGC's bi-encoder: a query encoder for "head + relation", an entity encoder for candidates, cosine scores.

The two encoders start as copies of one PLM and are trained separately (SimKGC); `shared=True` ties
them. The temperature is learnt as log(1/tau) so it stays positive and moves on a log scale.

A bi-encoder may have a pruned vocabulary (`prune_vocabulary`: only the word-pieces its KG's texts use).
It still accepts ids of the tokenizer it was pruned from, mapping them through `input_map`, so inside a
chain every stage reads the same batches; its export carries the pruned tokenizer for standalone use.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from kgc_kd.models.pooling import pool


class BiEncoder(nn.Module):
    def __init__(self, query_encoder: nn.Module, entity_encoder: nn.Module | None = None, *, shared: bool = False,
                 pooling: str = "mean", temperature: float = 0.05, learn_temperature: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"model.temperature must be > 0, got {temperature}")
        self.query_encoder = query_encoder
        self.shared = shared
        if shared:
            self.entity_encoder = query_encoder
        else:
            self.entity_encoder = entity_encoder if entity_encoder is not None else copy.deepcopy(query_encoder)
        self.pooling = pooling
        self.log_inv_t = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)
        self.kept_ids: list[int] | None = None  # source-tokenizer ids kept by vocabulary pruning, in new-id order
        self.source_vocab_size: int | None = None
        self.register_buffer("input_map", None, persistent=False)  # source id -> pruned id (or -1)

    def prune_vocabulary(self, kept: Tensor, source_vocab_size: int) -> None:
        """Keep only the embedding rows `kept` (ids of the source tokenizer); see models/vocab.py."""
        from kgc_kd.models.vocab import prune_embeddings

        if self.kept_ids is not None:
            raise ValueError("this bi-encoder's vocabulary is already pruned")
        kept = torch.as_tensor(kept, dtype=torch.long)
        encoders = [self.query_encoder] if self.shared else [self.query_encoder, self.entity_encoder]
        for enc in encoders:
            prune_embeddings(enc, kept)
        self._set_vocab(kept.tolist(), source_vocab_size)

    def _set_vocab(self, kept: list[int], source_vocab_size: int) -> None:
        from kgc_kd.models.vocab import id_map

        self.kept_ids, self.source_vocab_size = list(kept), int(source_vocab_size)
        device = self.log_inv_t.device
        self.input_map = id_map(torch.tensor(kept, dtype=torch.long), source_vocab_size).to(device)

    def check_vocab(self, token_ids) -> None:
        """Refuse, naming a dropped id, inputs this pruned bi-encoder cannot read: done once where a pruned
        model meets a KG (e.g. a pruned stage loaded as teacher), not on every forward. `token_ids`: a tensor
        of ids (a TokenCache's `used_ids()`) or an iterable of id sequences."""
        if self.input_map is not None:
            from kgc_kd.models.vocab import remap_ids

            ids = token_ids if isinstance(token_ids, Tensor) else [list(t) for t in token_ids]
            remap_ids(ids, self.input_map.cpu())

    def _ids(self, inputs: dict[str, Tensor]) -> Tensor:
        ids = inputs["input_ids"]
        if self.input_map is None:
            return ids
        mapped = self.input_map[ids]
        # On CPU the check is free; on an accelerator it would synchronise every step, so there the ids are
        # validated once up front (check_vocab) and a dropped id fails in the embedding lookup.
        if not mapped.is_cuda and bool((mapped < 0).any()):
            from kgc_kd.models.vocab import remap_ids

            remap_ids(ids, self.input_map)  # raises, naming the dropped ids
        return mapped

    @property
    def inv_t(self) -> Tensor:
        return self.log_inv_t.exp()

    def _encode(self, encoder: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
        out = encoder(input_ids=self._ids(inputs), attention_mask=inputs["attention_mask"],
                      token_type_ids=inputs.get("token_type_ids"))
        return pool(out.last_hidden_state, inputs["attention_mask"], self.pooling)

    def encode_with_states(self, side: str, inputs: dict[str, Tensor], all_layers: bool = False):
        """(vector, last-layer token states, all hidden states or None): what distillation losses read."""
        encoder = self.query_encoder if side == "query" else self.entity_encoder
        out = encoder(input_ids=self._ids(inputs), attention_mask=inputs["attention_mask"],
                      token_type_ids=inputs.get("token_type_ids"), output_hidden_states=all_layers)
        vec = pool(out.last_hidden_state, inputs["attention_mask"], self.pooling)
        return vec, out.last_hidden_state, out.hidden_states if all_layers else None

    def encode_query(self, inputs: dict[str, Tensor]) -> Tensor:
        return self._encode(self.query_encoder, inputs)

    def encode_entity(self, inputs: dict[str, Tensor]) -> Tensor:
        return self._encode(self.entity_encoder, inputs)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """hr, tail and (for self-negatives) head-only vectors of a training batch."""
        out = {"hr": self.encode_query(batch["hr"])}
        if "entities" in batch:  # each distinct entity encoded once (see TrainCollator)
            ents = self.encode_entity(batch["entities"])
            out["tail"], out["head"] = ents[batch["tail_index"]], ents[batch["head_index"]]
            return out
        out["tail"] = self.encode_entity(batch["tail"])
        if "head" in batch:
            out["head"] = self.encode_entity(batch["head"])
        return out

    def save_pretrained(self, directory: str | Path, tokenizer=None) -> None:
        """Two Hugging Face directories (query/, entity/) that AutoModel loads, plus the temperature.
        `tokenizer` is the source tokenizer; a pruned bi-encoder saves its pruned version."""
        d = Path(directory)
        meta = {"temperature": float(1.0 / self.inv_t.detach()), "pooling": self.pooling, "shared": self.shared,
                "learn_temperature": bool(self.log_inv_t.requires_grad)}
        if tokenizer is not None:  # of the tokenizer whose ids the model reads in a chain: checked on teacher.load
            from kgc_kd.data.tokens import tokenizer_fingerprint

            meta["tokenizer"] = {"fingerprint": tokenizer_fingerprint(tokenizer), "size": len(tokenizer)}
        if tokenizer is not None and self.kept_ids is not None:
            from kgc_kd.models.vocab import prune_tokenizer

            tokenizer = prune_tokenizer(tokenizer, torch.tensor(self.kept_ids))
        for name, enc in (("query", self.query_encoder), ("entity", self.entity_encoder)):
            enc.save_pretrained(d / name)
            if tokenizer is not None:
                tokenizer.save_pretrained(d / name)
        if self.kept_ids is not None:
            meta["vocab"] = {"source_vocab_size": self.source_vocab_size, "kept_ids": self.kept_ids}
        (d / "biencoder.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, source_ids: bool = False) -> BiEncoder:
        """Load what save_pretrained wrote (an exported stage), locally only. A pruned export reads ids of
        its own (pruned) tokenizer; with `source_ids` it reads the source tokenizer's ids instead (a chain
        resuming, or a pruned stage loaded as teacher)."""
        from kgc_kd.models.plm import load_encoder  # no pooler: an exported encoder was saved without one

        d = Path(directory)
        meta_path = d / "biencoder.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{d}: not an exported bi-encoder (no biencoder.json next to query/ and entity/)")
        meta = json.loads(meta_path.read_text())
        query = load_encoder(str(d / "query"))
        entity = None if meta["shared"] else load_encoder(str(d / "entity"))
        net = cls(query, entity, shared=meta["shared"], pooling=meta["pooling"], temperature=meta["temperature"],
                  learn_temperature=meta.get("learn_temperature", True))
        vocab = meta.get("vocab")
        if vocab:
            net.kept_ids, net.source_vocab_size = list(vocab["kept_ids"]), int(vocab["source_vocab_size"])
            if source_ids:
                net._set_vocab(net.kept_ids, net.source_vocab_size)
        return net.eval()


def build_biencoder(model: dict, encoder: nn.Module | None = None) -> BiEncoder:
    """A new bi-encoder from the `model` config section (a plain dict: `plm`, `shared_encoder`, `pooling`,
    `temperature`, `learn_temperature`); `encoder` replaces loading `model["plm"]` (tests pass a tiny BERT)."""
    from kgc_kd.models.plm import load_encoder

    enc = encoder if encoder is not None else load_encoder(model["plm"])
    return BiEncoder(enc, shared=model.get("shared_encoder", False), pooling=model.get("pooling", "mean"),
                     temperature=model.get("temperature", 0.05), learn_temperature=model.get("learn_temperature", True))
