"""Where a stage's export is: the directory itself, or a stage (default: the last) of a run directory. Shared by
the entry points that take `RUN_OR_EXPORT` (`kgc_kd.predict`, `kgc_kd.serve.onnx_export`)."""

from __future__ import annotations

import json
from pathlib import Path


def resolve_export(path: str, stage: str | None = None) -> Path:
    """`path` when it is an export (biencoder.json), else stage `stage` (default: the last finished) of the run
    directory `path` (chain_state.json); FileNotFoundError naming what was found otherwise."""
    p = Path(path)
    if (p / "biencoder.json").is_file():
        return p
    state = p / "chain_state.json"
    if state.is_file():
        order = json.loads(state.read_text()).get("order", [])
        name = stage or (order[-1] if order else None)
        if name is None or name not in order:
            raise FileNotFoundError(f"{p}: no finished stage {stage!r}; finished: {order}")
        return p / "stages" / name / "export"
    raise FileNotFoundError(f"{p}: neither an exported stage (biencoder.json) nor a run directory (chain_state.json)")
