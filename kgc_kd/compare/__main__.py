"""`python -m kgc_kd.compare --objectives none,pmd,makd [--seeds 3] [--teacher EXPORT] [--name NAME] [key=value ...]`

Trains the same student grades with each objective (a `conf/distill/` preset, as `distill=NAME` of
`python -m kgc_kd.fit`) and each seed, all taught by one teacher, and reports mean ± std per grade.
`--variant 'LABEL=PRESET key=value ...'` adds the row LABEL: that preset with items for its own chains only
(e.g. a mask schedule or a KD temperature), so `none` and the other rows keep their finished runs.
`key=value` items are ordinary fit items (config=FILE, data=nations, teacher.epochs=1, stages=...),
applied to every chain. Without `--teacher` the teacher is trained once (the `teacher.only=true` run of
the same items) and its export is loaded by every chain (`teacher.load=`); `--teacher` names an export
instead. `--seeds N` runs the seeds run.seed, run.seed + 1, ..., run.seed + N - 1 (`--seeds 1,7,9`: these);
a seed changes the students' data order, dropout, masks and new projections, never the teacher.
Every chain is a normal run directory under run.root (a rerun reads finished ones and resumes the
rest); the comparison goes to <run.root>/compare/<name>/compare.json, compare.md and compare.png.
Exit status as fit (kgc_kd/cli.py): 2 for bad input (nothing trained), 3 for a non-finite loss, 143 on SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from typing import Any

from kgc_kd.cli import console_script, exit_statuses, parser

EXAMPLES = (
    "python -m kgc_kd.compare --objectives none,pmd,makd --seeds 3 data=nations teacher.epochs=1",
    "python -m kgc_kd.compare --objectives none,pmd --variant 'pmd_kl4=pmd distill.score_loss=kl "
    "distill.kd_temperature=4'",
    "python -m kgc_kd.compare --objectives none,pmd,makd,pmd_makd --seeds 3 config=conf/experiment/compare_umls.yaml",
)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = parser("python -m kgc_kd.compare",
                "Train the same student grades with each objective (a distill preset, listed below) and each "
                "seed, all taught by one teacher, and report mean ± std per grade.",
                items="configuration items for every chain, as for kgc_kd.fit (the forms below); not distill=, "
                      "run.name or teacher.only",
                examples=EXAMPLES,
                docs=("docs/compare.md (options, output)", "docs/configuration.md (forms and keys)"))
    ap.add_argument("--objectives", default="", help="comma-separated distill presets, e.g. none,pmd,makd")
    ap.add_argument("--variant", action="append", default=[], metavar="'LABEL=PRESET key=value ...'",
                    help="one more objective: a preset with items for its chains only, compared as the row LABEL "
                         "(repeatable), e.g. --variant 'pmd_kl=pmd distill.score_loss=kl distill.kd_temperature=4'")
    ap.add_argument("--seeds", default="3", help="N seeds from run.seed on, or a comma-separated list (default 3)")
    ap.add_argument("--teacher", help="an exported teacher (runs/<run>/stages/teacher/export): not trained here")
    ap.add_argument("--name", help="the comparison's directory under <run.root>/compare/ (default: from the config)")
    return ap.parse_intermixed_args(argv)


def compare(args: argparse.Namespace, command: str) -> dict[str, Any]:
    # here, not at the top: `--help` imports no torch or Lightning
    import lightning as L

    from kgc_kd.compare.aggregate import aggregate
    from kgc_kd.compare.plan import build_plan
    from kgc_kd.compare.report import log_wandb, write
    from kgc_kd.compare.run import run_plan

    plan = build_plan(args.objectives, args.seeds, args.overrides, teacher=args.teacher, name=args.name,
                      variants=args.variant)
    print(f"[compare] {plan.name}: {len(plan.objectives)} objectives x {len(plan.seeds)} seeds "
          f"({', '.join(map(str, plan.seeds))}), grades {', '.join(plan.grades)}; teacher "
          + (f"trained once in {plan.teacher.run_dir}" if plan.teacher else f"from {plan.teacher_export}"), flush=True)
    is_zero = L.fabric.utilities.rank_zero.rank_zero_only.rank == 0

    def record(ran: dict[str, Any], done: bool) -> dict[str, Any]:
        return {
            "name": plan.name, "command": command, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "complete": done, "chains_done": len(ran["chains"]), "chains_planned": len(plan.chains),
            "objectives": plan.objectives, "variants": plan.variants, "seeds": plan.seeds, "overrides": plan.overrides,
            "std": "sample standard deviation over seeds (ddof=1); null when n = 1",
            "grades": aggregate(ran["runs"], plan.grades), "teacher": ran["teacher"], "chains": ran["chains"],
        }

    def partial(ran: dict[str, Any]) -> None:
        if is_zero:
            write(plan.out_dir, record(ran, done=False))
            print(f"[compare] {len(ran['chains'])}/{len(plan.chains)} chains done: {plan.out_dir / 'compare.md'} "
                  "updated", flush=True)

    ran = run_plan(plan, on_chain=partial)
    comparison = record(ran, done=True)
    if is_zero:
        text = write(plan.out_dir, comparison)
        print(text, flush=True)
        print(f"[compare] wrote {plan.out_dir / 'compare.json'}, compare.md, compare.png", flush=True)
        if plan.base.run.logger == "wandb":
            log_wandb(plan.base, plan.out_dir, comparison)
    return comparison


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    with exit_statuses():
        return compare(args, shlex.join(["python", "-m", "kgc_kd.compare", *argv]))


script = console_script(main)

if __name__ == "__main__":
    main()
