"""`python -m experiments.bench` (= `make bench`, from the repository root): how fast and how big, measured
the same way every time (see __main__.py). Not part of the package: it imports kgc_kd, never the reverse.

One file per section: `peak.py` (this machine's matmul peak), `train_step.py` (training throughput and
FLOP utilisation), `evaluation.py` (encoding, ranking, evaluation memory), `stages.py` (a chain's
students: size and inference latency), `chain_run.py` (the default chain's time by stage and phase,
its peak memory), `scale.py` with `scale_steps.py` (Wikidata5M-sized host costs on the graphs of
`wikidata_like.py`). `measure.py` holds the timing and memory primitives they share.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root: `experiments.bench` is importable from it


def child_env() -> dict[str, str]:
    """This environment with the repository root first on PYTHONPATH: a child `python -m experiments.bench.X`
    finds the benchmark whatever its working directory."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), path] if path else [str(ROOT)])}
