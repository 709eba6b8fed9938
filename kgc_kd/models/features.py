"""Capture what happens inside each transformer layer of a BERT-like encoder, without editing transformers.

Forward hooks on the layer's sub-modules record, per layer: the layer output ("hidden"), the Q/K/V
projections ("q", "k", "v", heads concatenated), the self-attention block's output before its residual
add ("attn_out"), the FFN's intermediate activation ("ffn_mid") and the FFN output before its residual
add ("ffn_out"); plus the embedding output ("embeddings", layer -1). Attention probabilities are not
captured (sdpa, transformers' default, never materialises them): the losses recompute them from Q and K.
Hooks exist only inside the `with` block, so an objective without such terms costs nothing.
"""

from __future__ import annotations

from torch import Tensor, nn

from kgc_kd.models.student import encoder_layers

FEATURE_KINDS = ("hidden", "q", "k", "v", "attn_out", "ffn_mid", "ffn_out", "embeddings")

# Sub-module paths inside one layer (BERT, RoBERTa, ELECTRA, MiniLM share them).
_LAYER_PATHS = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                "attn_out": "attention.output.dense", "ffn_mid": "intermediate", "ffn_out": "output.dense"}


def _submodule(root: nn.Module, path: str) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise TypeError(f"{type(root).__name__} has no sub-module {path!r}: feature capture supports BERT-like "
                        "encoders (BERT, RoBERTa, ELECTRA, MiniLM)") from None


class FeatureCapture:
    """`with FeatureCapture(encoder, {"q": [0, 2], "hidden": [2]}) as cap: encoder(...)`; then
    `cap.features[("q", 0)]` is a (B, L, d) tensor. Layer -1 of "embeddings" is the embedding output."""

    def __init__(self, encoder: nn.Module, wanted: dict[str, list[int]]):
        unknown = set(wanted) - set(FEATURE_KINDS)
        if unknown:
            raise ValueError(f"unknown feature kinds {sorted(unknown)}; known: {FEATURE_KINDS}")
        self.encoder, self.wanted = encoder, wanted
        self.features: dict[tuple[str, int], Tensor] = {}
        self._handles: list = []

    def _hook(self, key: tuple[str, int]):
        def hook(module, inputs, output):
            self.features[key] = output[0] if isinstance(output, tuple) else output
        return hook

    def __enter__(self) -> FeatureCapture:
        layers = encoder_layers(self.encoder)
        try:
            for kind, indices in self.wanted.items():
                for i in indices:
                    if kind == "embeddings":
                        module = _submodule(self.encoder, "embeddings")
                    elif not 0 <= i < len(layers):
                        raise IndexError(f"layer {i} requested for {kind!r}; the encoder has {len(layers)} layers")
                    elif kind == "hidden":
                        module = layers[i]
                    else:
                        module = _submodule(layers[i], _LAYER_PATHS[kind])
                    self._handles.append(module.register_forward_hook(self._hook((kind, i))))
        except BaseException:
            self.__exit__()  # no hook may outlive a failed capture
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
