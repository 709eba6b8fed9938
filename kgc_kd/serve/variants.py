"""The forms a finished stage is served in, which of them this hardware runs, and how each is loaded.

- `fp32`: the export as trained, PyTorch eager (the reference every other variant is measured against).
- `bf16`: the same weights cast to bfloat16, PyTorch eager. Only where the hardware computes in bf16: on a CPU,
  AVX512-BF16 or AMX (without them torch emulates bf16 and is slower than fp32, which no one would deploy);
  on CUDA, `torch.cuda.is_bf16_supported()`.
- `onnx-fp32`: the two towers exported to ONNX (`onnx_export`), run by ONNX Runtime on the CPU: the model
  leaves Python and PyTorch.
- `onnx-int8`: those graphs with int8 weights and dynamic int8 activations, by ONNX Runtime's own quantizer
  (`quantize_dynamic`). Why that path and not torchao: ONNX Runtime's quantizer is maintained for exactly this
  CPU case (dynamic quantisation of transformer encoders, VNNI/AMX kernels), its output is a file any ONNX
  Runtime binding serves, and it needs no torch at serving time; torchao's int8 dynamic-activation path targets
  torch.compile on GPUs and its CPU kernels depend on the build.

Nothing here knows Lightning; `kgc_kd.serve.measure` loads a variant through `load_variant`.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import torch

VARIANTS = ("fp32", "bf16", "onnx-fp32", "onnx-int8")
ONNX_VARIANTS = ("onnx-fp32", "onnx-int8")
WEIGHT_SUFFIXES = (".safetensors", ".bin")  # a Hugging Face directory's weights; config.json is counted too


class UnsupportedVariant(ValueError):
    """A variant this hardware (or this installation) cannot serve; the message is one line saying why."""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def unsupported_reason(variant: str, device: str = "cpu", flags: set[str] | None = None) -> str | None:
    """Why `variant` cannot be served on `device` here (None: it can). `flags`: the CPU's (default: read)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    dev = torch.device(device)
    if variant == "bf16":
        if dev.type == "cuda":
            return None if torch.cuda.is_bf16_supported() else "this GPU has no bf16 arithmetic"
        flags = cpu_flags() if flags is None else flags
        if not flags & {"avx512_bf16", "amx_bf16"}:
            return "this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag): torch would emulate it"
    if variant in ONNX_VARIANTS:
        if dev.type != "cpu":
            return f"ONNX variants run on the CPU (ONNX Runtime's CPU provider), not on {dev.type}"
        missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
        if missing:
            return f"{' and '.join(missing)} not installed: pip install 'kgc-kd[serve]'"
    return None


def check_variants(requested: list[str] | None, device: str = "cpu") -> tuple[list[str], dict[str, str]]:
    """The variants to measure and those skipped with why. `requested` None: every variant this hardware serves
    (the others skipped); named: each must be servable, else `UnsupportedVariant` naming it (before any work)."""
    if requested is not None:
        for v in requested:
            why = unsupported_reason(v, device)
            if why is not None:
                raise UnsupportedVariant(f"variant {v} cannot be served on {device} here: {why}")
        return list(dict.fromkeys(requested)), {}
    chosen, skipped = [], {}
    for v in VARIANTS:
        why = unsupported_reason(v, device)
        if why is None:
            chosen.append(v)
        else:
            skipped[v] = why
    return chosen, skipped


def tower_dirs(export: Path) -> list[Path]:
    """The Hugging Face directories a server loads: query/ and, unless the encoder is shared, entity/."""
    import json

    shared = bool(json.loads((Path(export) / "biencoder.json").read_text()).get("shared", False))
    return [Path(export) / "query"] + ([] if shared else [Path(export) / "entity"])


def weight_bytes(directory: Path) -> int:
    """Bytes of a Hugging Face model directory's weights and config (the tokenizer files are not the model)."""
    return sum(p.stat().st_size for p in Path(directory).iterdir()
               if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json"))


class TorchServed:
    """A bi-encoder served by PyTorch in `dtype` (fp32 or bf16): `encode_query` / `encode_entity` take a
    collated batch and return float32 vectors (pooling is fp32, see models/pooling.py)."""

    def __init__(self, export: Path, dtype: torch.dtype, device: str):
        from kgc_kd.models.biencoder import BiEncoder

        self.net = BiEncoder.from_pretrained(export).to(device=device, dtype=dtype).eval()
        self.device, self.dtype = torch.device(device), dtype
        self.bytes_on_disk = self._bytes(Path(export))

    def _bytes(self, export: Path) -> int:
        """fp32: the export's tower files. bf16: the towers saved in bf16 to a temporary directory and measured
        there (bytes on disk as they would be shipped, not computed from the parameter count)."""
        if self.dtype == torch.float32:
            return sum(weight_bytes(d) for d in tower_dirs(export))
        encoders = [self.net.query_encoder] + ([] if self.net.shared else [self.net.entity_encoder])
        total = 0
        with tempfile.TemporaryDirectory(prefix="kgc-kd-bf16-") as tmp:
            for i, enc in enumerate(encoders):
                enc.save_pretrained(Path(tmp) / str(i))
                total += weight_bytes(Path(tmp) / str(i))
        return total

    def _move(self, inputs: dict) -> dict:
        return {k: v.to(self.device) for k, v in inputs.items()}

    @torch.inference_mode()
    def encode_query(self, inputs: dict) -> torch.Tensor:
        return self.net.encode_query(self._move(inputs)).float()

    @torch.inference_mode()
    def encode_entity(self, inputs: dict) -> torch.Tensor:
        return self.net.encode_entity(self._move(inputs)).float()


def load_variant(export: Path, variant: str, *, device: str = "cpu", threads: int | None = None):
    """The stage in `export` served as `variant`: an object with `encode_query`, `encode_entity` (collated
    batches in, float32 vectors out) and `bytes_on_disk`. Refuses an unsupported variant in one line."""
    why = unsupported_reason(variant, device)
    if why is not None:
        raise UnsupportedVariant(f"variant {variant} cannot be served on {device} here: {why}")
    if variant in ONNX_VARIANTS:
        from kgc_kd.serve.onnx_runtime import OnnxBiEncoder

        return OnnxBiEncoder.open(Path(export), variant, threads=threads)
    return TorchServed(Path(export), torch.float32 if variant == "fp32" else torch.bfloat16, device)
