"""`python -m kgc_kd.fit [config=PATH] [GROUP=PRESET] [key=value ...]`: run the whole chain.

Teacher (SimKGC) -> pre-distillation -> student grades, as configured in `stages` (empty `stages=[]`
trains and evaluates the teacher only). Lightning re-runs this module on every DDP rank, so everything
before `fit` is deterministic: the run directory comes from the config, never from the clock.
"""

from __future__ import annotations

import sys

from kgc_kd.chain import run_chain
from kgc_kd.config import ConfigError, load_config
from kgc_kd.data.io import DataFormatError


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = load_config(argv)
        return run_chain(cfg)
    except (ConfigError, DataFormatError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
