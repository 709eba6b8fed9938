"""Students: a bi-encoder with fewer transformer layers, cut out of a bigger one by a layer map.

A layer map lists, for each student layer, the index of the source layer whose weights it starts from
(PMD's maps for 12 layers: 9 -> [0,2,3,5,6,7,9,10,11], 6 -> [1,3,5,7,9,11], 3 -> [2,6,10]). The source
is the stage's teacher (its fine-tuned weights, our default) or the original PLM (what PMD's code
does). Embeddings always come from the source; both encoders shrink the same way.
"""

from __future__ import annotations

import copy
import math

from torch import nn

from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.plm import load_encoder

INITS = ("teacher", "plm")


def uniform_layer_map(num_source: int, num_student: int) -> list[int]:
    """Evenly spaced source layers, always ending with the last one (12 -> 6 gives PMD's [1,3,5,7,9,11])."""
    if not 1 <= num_student <= num_source:
        raise ValueError(f"a student needs 1..{num_source} layers, got {num_student}")
    return [math.floor((i + 1) * num_source / num_student) - 1 for i in range(num_student)]


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of a BERT-like Hugging Face encoder."""
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(encoder).__name__} has no encoder.layer stack; students need a BERT-like encoder")
    return layers


def num_layers(encoder: nn.Module) -> int:
    return len(encoder_layers(encoder))


def resolve_layer_map(num_source: int, layers: int, layer_map: list[int] | None) -> list[int]:
    if layer_map is None:
        return uniform_layer_map(num_source, layers)
    layer_map = [int(i) for i in layer_map]
    if len(layer_map) != layers:
        raise ValueError(f"layer_map {layer_map} has {len(layer_map)} entries for a {layers}-layer student")
    if any(not 0 <= i < num_source for i in layer_map):
        raise ValueError(f"layer_map {layer_map} indexes outside the source's {num_source} layers")
    return layer_map


def shrink_encoder(encoder: nn.Module, layer_map: list[int]) -> nn.Module:
    """A copy of `encoder` keeping only the mapped layers (in map order); the source is untouched."""
    src = encoder_layers(encoder)
    student = copy.deepcopy(encoder)
    kept = nn.ModuleList([copy.deepcopy(src[i]) for i in layer_map])
    for new_idx, layer in enumerate(kept):  # attention modules carry their index for KV caches
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_idx
    student.encoder.layer = kept
    student.config.num_hidden_layers = len(layer_map)
    student.requires_grad_(True)  # the source may be a frozen teacher
    return student.train()


def build_student(teacher: BiEncoder, layers: int, *, layer_map: list[int] | None = None, init: str = "teacher",
                  plm: str | None = None, learn_temperature: bool = True,
                  shared: bool | None = None) -> tuple[BiEncoder, list[int]]:
    """The student bi-encoder and the layer map used (indices into the init source's layers).

    `shared=True` gives the student one encoder for queries and entities (half the parameters of two),
    started from the source's query encoder; None keeps the teacher's choice. A teacher with a pruned
    vocabulary passes it on (init teacher)."""
    if init not in INITS:
        raise ValueError(f"init={init!r}; expected one of {INITS}")
    if init == "teacher":
        q_src, e_src = teacher.query_encoder, teacher.entity_encoder
        temperature = float(1.0 / teacher.inv_t.detach())
    else:
        if plm is None:
            raise ValueError("init='plm' needs the PLM path (model.plm)")
        q_src = load_encoder(plm)
        e_src = q_src
        temperature = None
    shared = teacher.shared if shared is None else shared
    layer_map = resolve_layer_map(num_layers(q_src), layers, layer_map)
    query = shrink_encoder(q_src, layer_map)
    entity = None if shared else shrink_encoder(e_src, layer_map)
    kwargs = {"temperature": temperature} if temperature is not None else {}
    student = BiEncoder(query, entity, shared=shared, pooling=teacher.pooling,
                        learn_temperature=learn_temperature, **kwargs)  # the teacher's flag is off: it is frozen
    if init == "teacher" and teacher.kept_ids is not None:
        student._set_vocab(teacher.kept_ids, teacher.source_vocab_size)
    return student.train(), layer_map
