"""`python -m kgc_kd.fit [config=PATH] [GROUP=PRESET] [key=value ...]`: run the whole chain.

Teacher (SimKGC) -> pre-distillation -> student grades, as configured in `stages` (`teacher.only=true`
trains and evaluates the teacher alone). Lightning re-runs this module on every DDP rank, so everything
before `fit` is deterministic: the run directory comes from the config, never from the clock.
"""

from __future__ import annotations

import contextlib
import signal
import sys

from lightning.pytorch.utilities.exceptions import SIGTERMException

from kgc_kd.chain import run_chain
from kgc_kd.config import ConfigError, load_config
from kgc_kd.data.io import DataFormatError
from kgc_kd.lit.base import NonFiniteLossError

EXIT_BAD_INPUT = 2  # config, data or model path: nothing was written
EXIT_NON_FINITE = 3  # training diverged: the stage's last good checkpoint is kept
EXIT_SIGTERM = 128 + signal.SIGTERM  # what a shell reports for a process killed by SIGTERM


@contextlib.contextmanager
def exit_statuses():
    """Turn the errors a run reports into `error: ...` on stderr and the exit statuses above (also used by
    `kgc_kd.compare`)."""
    try:
        yield
    except (ConfigError, DataFormatError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_NON_FINITE) from None
    except SIGTERMException:  # Lightning's, raised with no exit code (which would read as success)
        print("stopped by SIGTERM after saving the stage's last.ckpt; rerun the same command to resume",
              file=sys.stderr)
        raise SystemExit(EXIT_SIGTERM) from None


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    with exit_statuses():
        cfg = load_config(argv)
        return run_chain(cfg)


if __name__ == "__main__":
    main()
