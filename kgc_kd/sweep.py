"""`python -m kgc_kd.sweep FILE [--count N] [--local] [key=value ...]`: a hyper-parameter sweep.

FILE is in W&B's sweep format (`method`, `metric: {name, goal}`, `parameters` with `values`, `value`
or `min`/`max`). Parameter names are config keys (`distill.alpha`, `stages.0.mask_rate`); extra
`key=value` arguments go to every trial. With a W&B API key (and not WANDB_MODE=offline/disabled) the
sweep is registered and a W&B agent runs the trials; otherwise the same grid or random search runs
locally. Either way each trial is a normal `python -m kgc_kd.fit` run, and the sweep ends with a table
of trials ranked by the metric. The metric is `<stage>/<key>` from the run's report (e.g. `pmd2/mrr`,
`last/mrr` for the last stage, `teacher/hits@10`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import yaml

from kgc_kd.cli import EXIT_BAD_INPUT, EXIT_OK, KEYS_DOC, console_script, exit_statuses, parser
from kgc_kd.config import load_config
from kgc_kd.files import write_json_atomic, write_text_atomic


class SweepError(ValueError):
    pass


def load_sweep(path: Path) -> dict:
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SweepError(f"{path}: cannot read the sweep file ({err})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("parameters"), dict) or not spec["parameters"]:
        raise SweepError(f"{path}: expected a mapping with a non-empty 'parameters' section")
    metric = spec.get("metric") or {}
    if "name" not in metric or metric.get("goal", "maximize") not in ("maximize", "minimize"):
        raise SweepError(f"{path}: 'metric' needs a name and goal maximize|minimize")
    if spec.get("method", "grid") not in ("grid", "random", "bayes"):
        raise SweepError(f"{path}: method must be grid, random or bayes")
    return spec


def _choices(name: str, p: dict) -> list | None:
    if "values" in p:
        return list(p["values"])
    if "value" in p:
        return [p["value"]]
    return None


def trials(spec: dict, count: int | None, seed: int = 0) -> list[dict]:
    """The local search: the full grid (or its first `count`), or `count` random draws (bayes -> random)."""
    params = spec["parameters"]
    if spec.get("method", "grid") == "grid":
        names = list(params)
        options = []
        for n in names:
            c = _choices(n, params[n])
            if c is None:
                raise SweepError(f"grid sweep: parameter {n!r} needs 'values' or 'value'")
            options.append(c)
        grid = [dict(zip(names, combo)) for combo in itertools.product(*options)]
        return grid[:count] if count else grid
    rng = random.Random(seed)
    out = []
    for _ in range(count or 10):
        trial = {}
        for n, p in params.items():
            c = _choices(n, p)
            if c is not None:
                trial[n] = rng.choice(c)
            elif "min" in p and "max" in p:
                lo, hi = p["min"], p["max"]
                trial[n] = rng.randint(lo, hi) if isinstance(lo, int) and isinstance(hi, int) else rng.uniform(lo, hi)
            else:
                raise SweepError(f"parameter {n!r} needs values, value, or min and max")
        out.append(trial)
    return out


def metric_value(report: dict, name: str) -> float:
    stage, _, key = name.partition("/")
    rows = {r["name"]: r for r in report["stages"]}
    row = report["stages"][-1] if stage == "last" else rows.get(stage)
    if row is None or key not in row["test"]:
        raise SweepError(f"metric {name!r} not in the run's report (stages: {list(rows)}; keys: mrr, mr, hits@k)")
    return float(row["test"][key])


def run_trial(index: int, params: dict, extra: list[str], sweep_name: str, root: str) -> dict:
    name = f"{sweep_name}-trial{index:02d}"
    argv = [*extra, *(f"{k}={v}" for k, v in params.items()), f"run.name={name}", f"run.root={root}"]
    proc = subprocess.run([sys.executable, "-m", "kgc_kd.fit", *argv], capture_output=True, text=True)
    result = {"trial": index, "run": str(Path(root) / name), "params": params, "returncode": proc.returncode}
    if proc.returncode != 0:
        result["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
    return result


def rank(results: list[dict], metric: str, goal: str) -> list[dict]:
    for r in results:
        if r["returncode"] == 0:
            r["value"] = metric_value(json.loads((Path(r["run"]) / "report.json").read_text()), metric)
    ok = sorted((r for r in results if "value" in r), key=lambda r: r["value"], reverse=goal == "maximize")
    return ok + [r for r in results if "value" not in r]


def format_table(ranked: list[dict], metric: str) -> str:
    names = sorted({k for r in ranked for k in r["params"]})
    lines = ["| rank | " + " | ".join(names) + f" | {metric} | run |", "|" + "---|" * (len(names) + 3)]
    for i, r in enumerate(ranked, 1):
        value = f"{r['value']:.4f}" if "value" in r else f"failed: {r.get('error', '')}"
        cells = [str(r["params"].get(n, "")) for n in names]
        lines.append(f"| {i} | " + " | ".join(cells) + f" | {value} | {r['run']} |")
    return "\n".join(lines)


EXAMPLES = (
    "python -m kgc_kd.sweep experiments/sweeps/pmd_alpha_beta.yaml --count 4              # grid over distill.alpha/beta",
    "python -m kgc_kd.sweep experiments/sweeps/lr_temperature.yaml --count 8 data=nations  # random search, extra items",
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = parser("python -m kgc_kd.sweep",
                "Run a hyper-parameter sweep over the chain: each trial is a `python -m kgc_kd.fit` run, ranked "
                "by the sweep's metric (<stage>/<key> of the run's report, e.g. pmd2/mrr, last/mrr); with a W&B "
                "API key a W&B agent runs the trials, otherwise the same search runs locally.",
                items="configuration items for every trial, as for kgc_kd.fit (the forms below)",
                statuses=(EXIT_OK, EXIT_BAD_INPUT), examples=EXAMPLES,
                notes=("The sweep file's parameter names are config keys (distill.alpha, stages.0.mask_rate); "
                       "its items and every local trial are checked before the first trial runs. A trial that "
                       "fails is a row of the ranked table (trials.md), not the exit status.",),
                docs=("docs/sweeps.md", KEYS_DOC),
                positionals=[("file", {"metavar": "FILE", "help": "the sweep in W&B's format (method, metric, "
                                                                  "parameters); examples in experiments/sweeps/"})])
    ap.add_argument("--count", type=int, help="at most this many trials")
    ap.add_argument("--local", action="store_true", help="run locally even when W&B is reachable")
    ap.add_argument("--root", default="runs/sweeps", help="where trial runs go")
    return ap.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(sys.argv[1:] if argv is None else argv)
    with exit_statuses(SweepError):
        path = Path(args.file)
        spec = load_sweep(path)
        metric, goal = spec["metric"]["name"], spec["metric"].get("goal", "maximize")
        sweep_name = spec.get("name") or path.stem
        extra = [*(spec.get("fixed") or []), *args.overrides]
        from kgc_kd.tracking import wandb_mode

        local = args.local or wandb_mode() != "online"
        for params in (trials(spec, args.count) if local else []) or [{}]:  # a bad key: exit 2 before any trial
            load_config([*extra, *(f"{k}={v}" for k, v in params.items())])
        if not local:
            import wandb

            results: list[dict] = []
            sweep_id = wandb.sweep({k: v for k, v in spec.items() if k != "fixed"}, project=spec.get("project", "kgc-kd"))

            def agent_trial() -> None:
                run = wandb.init()
                params = dict(run.config)
                run.finish()
                results.append(run_trial(len(results), params, extra, sweep_name, args.root))

            wandb.agent(sweep_id, function=agent_trial, count=args.count)
        else:
            results = [run_trial(i, p, extra, sweep_name, args.root) for i, p in enumerate(trials(spec, args.count))]
        ranked = rank(results, metric, goal)
        table = format_table(ranked, metric)
        out = Path(args.root) / sweep_name
        write_json_atomic(out / "trials.json", ranked)
        write_text_atomic(out / "trials.md", table + "\n")
        print(table)
        return ranked


script = console_script(main)

if __name__ == "__main__":
    main()
