"""`python -m kgc_kd.fit [--print-config] [config=PATH] [GROUP=PRESET] [key=value ...]`: run the whole chain.

Teacher (SimKGC) -> pre-distillation -> student grades, as configured in `stages` (`teacher.only=true`
trains and evaluates the teacher alone). `--print-config` prints the resolved config (YAML, what the run
would write as config.yaml) and runs nothing; `config=` of that file runs the same. Lightning re-runs this
module on every DDP rank, so everything before `fit` is deterministic: the run directory comes from the
config, never from the clock.
"""

from __future__ import annotations

import argparse
import sys

from omegaconf import DictConfig, OmegaConf

from kgc_kd.cli import EXIT_BAD_INPUT, EXIT_NON_FINITE, EXIT_SIGTERM, console_script, exit_statuses, parser
from kgc_kd.config import load

__all__ = ["EXIT_BAD_INPUT", "EXIT_NON_FINITE", "EXIT_SIGTERM", "exit_statuses", "main", "parse", "print_config",
           "script"]

EXAMPLES = (
    "python -m kgc_kd.fit                                         # the default chain",
    "python -m kgc_kd.fit data=nations distill=makd teacher.epochs=1",
    "python -m kgc_kd.fit --print-config data=nations > run.yaml  # prints the resolved config, runs nothing",
    "python -m kgc_kd.fit config=run.yaml                         # runs exactly that config",
)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = parser("python -m kgc_kd.fit",
                "Train the SimKGC teacher and distil it through the student stages (the chain `stages`), "
                "configured by the ITEMs; with no ITEM, the embedded default run (bundled UMLS, packaged "
                "MiniLM, CPU).", items="configuration items (the forms below)", examples=EXAMPLES,
                docs=("docs/configuration.md (forms and keys)", "docs/troubleshooting.md (errors, exit "
                      "statuses, resuming)"))
    ap.add_argument("--print-config", action="store_true",
                    help="print the resolved configuration (merged and validated YAML, as the run's config.yaml) "
                         "and exit without running anything; config=THAT_FILE gives the same configuration")
    return ap.parse_intermixed_args(argv)


def print_config(cfg: DictConfig) -> str:
    """The YAML `--print-config` prints: interpolations resolved, as chain/driver.py writes the run's config.yaml."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse(sys.argv[1:] if argv is None else argv)
    with exit_statuses():
        cfg, objectives = load(args.overrides)
        if args.print_config:
            sys.stdout.write(print_config(cfg))
            return None
        # here: `--help` and `--print-config` need no torch or Lightning (the plan's terms come from the registry)
        from kgc_kd.chain.driver import run_chain
        from kgc_kd.chain.plan import plan_config

        return run_chain(plan_config(cfg, objectives))


script = console_script(main)

if __name__ == "__main__":
    main()
