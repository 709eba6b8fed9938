"""An exported stage served by ONNX Runtime: the towers `onnx_export` wrote into `<export>/onnx/`, behind the
methods of `BiEncoder` that serving calls (`encode_query`, `encode_entity`, `eval`, `to`), so predict and the
serving benchmark swap it in for the torch bi-encoder.

Opening refuses towers that are not this export's: the manifest's model digest must be the export's
(`serve.digest.model_digest`), else `StaleOnnx` (a ValueError) says so in one line with the command that exports
them again; a missing or resized file, or int8 asked of a --no-int8 export, is a `StaleOnnx` too (exporting again
fixes each). Sessions run on the CPU provider with every graph optimisation; `threads` sets their intra-op
threads (None: ONNX Runtime's default, one per physical core). No Lightning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kgc_kd.serve.digest import model_digest
from kgc_kd.serve.onnx_export import (
    MANIFEST, ONNX_DIR, OUTPUT, export_command, needed_files, onnx_problem, read_manifest, tower_file,
)

VARIANTS = {"onnx-fp32": False, "onnx-int8": True}  # variant -> whether it serves the int8 files


class StaleOnnx(ValueError):
    """`<export>/onnx` cannot serve this export as it stands (another model's towers, a damaged or missing
    file, no int8 files); exporting again (`export_onnx`) fixes it."""


class OnnxBiEncoder:
    """The query and entity towers of an export as ONNX Runtime sessions (one, where the encoder is shared).
    `files`: the tower files served; `bytes_on_disk`: their sum; `dim`: the vectors' width."""

    def __init__(self, export: Path, variant: str, manifest: dict[str, Any], threads: int | None = None):
        import onnxruntime as ort

        self.export, self.variant, self.manifest = Path(export), variant, manifest
        self.shared, self.dim = bool(manifest.get("shared", False)), int(manifest["dim"])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: its warnings about unused initialisers are not ours to act on
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        onnx_dir = self.export / ONNX_DIR
        int8 = VARIANTS[variant]
        self.files = [onnx_dir / tower_file("query", int8)] + \
            ([] if self.shared else [onnx_dir / tower_file("entity", int8)])
        sessions = [ort.InferenceSession(str(f), options, providers=["CPUExecutionProvider"]) for f in self.files]
        self.query_session, self.entity_session = sessions[0], sessions[-1]
        self.bytes_on_disk = sum(f.stat().st_size for f in self.files)

    @classmethod
    def open(cls, export: Path, variant: str = "onnx-fp32", threads: int | None = None) -> OnnxBiEncoder:
        """The export's towers as `variant` ("onnx-fp32" or "onnx-int8"); ValueError for another variant,
        FileNotFoundError where the export has no ONNX towers, `StaleOnnx` where they are not this export's."""
        if variant not in VARIANTS:
            raise ValueError(f"ONNX variant {variant!r}; expected one of {', '.join(VARIANTS)}")
        export = Path(export)
        onnx_dir = export / ONNX_DIR
        if not (onnx_dir / MANIFEST).is_file():
            raise FileNotFoundError(f"{onnx_dir / MANIFEST} does not exist: export the ONNX towers first with "
                                    f"`{export_command(export)}` (or kgc_kd.serve.onnx_export.export_onnx)")
        digest = model_digest(export)
        problem = onnx_problem(export, digest, needed_files(VARIANTS[variant]))
        if problem is not None:
            raise StaleOnnx(f"{problem}; export again: {export_command(export)}")
        return cls(export, variant, read_manifest(onnx_dir), threads)

    def _run(self, session, inputs: dict[str, Tensor]) -> Tensor:
        """The vectors of one collated batch (int64 ids, mask and token types on any device; token types
        absent: zeros, as the torch encoder assumes), float32 on the CPU."""
        ids = inputs["input_ids"]
        feed = {}
        for node in session.get_inputs():  # only the inputs the graph kept (an unused one is pruned at export)
            value = inputs.get(node.name)
            if value is None and node.name == "token_type_ids":
                value = torch.zeros_like(ids)
            if value is None:
                raise KeyError(f"{self.files[0].parent}: the ONNX towers need {node.name!r}; the batch has "
                               f"{', '.join(inputs)}")
            feed[node.name] = value.detach().to("cpu", torch.int64).numpy()
        return torch.from_numpy(session.run([OUTPUT], feed)[0]).float()

    def encode_query(self, inputs: dict[str, Tensor]) -> Tensor:
        return self._run(self.query_session, inputs)

    def encode_entity(self, inputs: dict[str, Tensor]) -> Tensor:
        return self._run(self.entity_session, inputs)

    def eval(self) -> OnnxBiEncoder:
        """Already inference-only; here so callers written for `BiEncoder` need no branch."""
        return self

    def to(self, device: str | torch.device) -> OnnxBiEncoder:
        """Itself on the CPU (the sessions' provider); ValueError naming any other device."""
        if torch.device(device).type != "cpu":
            raise ValueError(f"{self.variant} runs on the CPU (ONNX Runtime's CPU provider), not on {device}; "
                             "serve it with device cpu")
        return self
