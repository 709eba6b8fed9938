"""The command line the entry points share: one argument style, one `--help` layout, one set of exit statuses.

`kgc_kd.fit`, `kgc_kd.compare`, `kgc_kd.sweep`, `kgc_kd.predict` and the checkout's benchmark (experiments/bench) build
their parser with `parser()`: their own `--options`, configuration items as positionals (`config=PATH`,
`GROUP=PRESET`, `key=value`, applied left to right by `kgc_kd.config.load_config`), and a `--help` (`-h`) that
lists those forms, the config groups with the presets found in conf/ when it is asked, the exit statuses and
where the keys are documented. Bad input exits 2 with an `error: ...` line: argparse's for an unknown option,
`exit_statuses()`' for what is found later (an unknown key, a missing file).

Importing this module is cheap (no torch or Lightning), so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kgc_kd.config import GROUPS, ConfigError, conf_dir, presets

EXIT_OK = 0
EXIT_BAD_INPUT = 2  # config, data or model path: nothing was written
EXIT_NON_FINITE = 3  # training diverged: the stage's last good checkpoint is kept
EXIT_LOCK_TIMEOUT = 75  # EX_TEMPFAIL: a stage's lock held past run.lock_timeout_s; try again later
EXIT_SIGTERM = 128 + signal.SIGTERM  # what a shell reports for a process killed by SIGTERM

STATUS_TEXT = {
    EXIT_OK: "done",
    EXIT_BAD_INPUT: "bad input (an option, a config key or value, a file): an `error: ...` line names it, "
                    "and nothing was run",
    EXIT_NON_FINITE: "a non-finite loss stopped a stage (its last good checkpoint is kept)",
    EXIT_LOCK_TIMEOUT: "another run held a stage's lock past run.lock_timeout_s: the error names the lock file and "
                       "its holder (pid, host, since); rerun when it is done",
    EXIT_SIGTERM: "stopped by SIGTERM after saving the stage's last.ckpt (rerun the same command to resume)",
}
ALL_STATUSES = tuple(STATUS_TEXT)

ITEM_FORMS = (
    ("config=PATH", "merge a whole YAML file: a conf/experiment/ file, a run's config.yaml, or what "
                    "`python -m kgc_kd.fit --print-config` printed"),
    ("GROUP=PRESET", "merge the preset conf/GROUP/PRESET.yaml into that group (list below); data=X without "
                     "a preset sets data.source=X (a built-in KG or a KG directory)"),
    ("key=value", "set one key, e.g. trainer.max_epochs=10 optim.lr=5e-5 stages.0.mask_rate=0.1 "
                  "\"stages=[{name: s3, layers: 3}]\""),
)
KEYS_DOC = "docs/configuration.md#configuration-keys"


def _width() -> int:
    """argparse's own width (the terminal's, or $COLUMNS, less 2), so the whole `--help` wraps alike."""
    return max(shutil.get_terminal_size().columns - 2, 40)


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it (as a user would type it)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _entry(name: str, text: str, width: int) -> list[str]:
    return textwrap.wrap(text, _width(), initial_indent=f"  {name:<{width}}  ",
                         subsequent_indent=" " * (width + 4), break_on_hyphens=False) or [f"  {name}"]


def items_section() -> list[str]:
    width = max(len(form) for form, _ in ITEM_FORMS)
    lines = ["configuration items (applied left to right; a later item wins):"]
    for form, text in ITEM_FORMS:
        lines += _entry(form, text, width)
    return lines


def groups_section() -> list[str]:
    """The config groups with the presets in conf/ now, and conf/'s other folders of whole-run files."""
    conf = conf_dir()
    others = sorted(d.name for d in conf.iterdir() if d.is_dir() and d.name not in GROUPS) if conf.is_dir() else []
    others = [folder for folder in others if presets(folder)]
    width = max(len(name) for name in (*GROUPS, *others))
    bare = [group for group in GROUPS if not presets(group)]
    lines = [f"config groups and their presets (GROUP=PRESET reads {_shown(conf)}/GROUP/PRESET.yaml):"]
    for group in GROUPS:
        if group not in bare:
            lines += _entry(group, ", ".join(presets(group)), width)
    if bare:
        lines.append(f"  {', '.join(bare)}: no presets; set their keys (e.g. {bare[0]}.KEY=value)")
    for folder in others:
        lines.append(f"whole-run files, given as config={_shown(conf / folder)}/NAME.yaml:")
        lines += _entry(folder, ", ".join(presets(folder)), width)
    return lines


def statuses_section(statuses: Sequence[int]) -> list[str]:
    width = max(len(str(s)) for s in statuses)
    lines = ["exit status:"]
    for status in statuses:
        lines += _entry(str(status), STATUS_TEXT[status], width)
    return lines


def epilog(*, items: bool, statuses: Sequence[int], docs: Sequence[str], notes: Sequence[str] = (),
           examples: Sequence[str] = ()) -> str:
    """The part of `--help` after the options: the item forms and groups (when the entry point takes
    items), `notes` (paragraphs of its own), `examples` (command lines, never wrapped), the exit statuses
    and the documentation pages."""
    blocks: list[list[str]] = [items_section(), groups_section()] if items else []
    blocks += [textwrap.wrap(note, _width()) for note in notes]
    if examples:
        blocks.append(["examples:", *(f"  {line}" for line in examples)])
    blocks.append(statuses_section(statuses))
    blocks.append(textwrap.wrap("documented in: " + ", ".join(docs), _width(), subsequent_indent="  "))
    return "\n\n".join("\n".join(block) for block in blocks)


def _prog(prog: str) -> str:
    """`python -m kgc_kd.X`, or the console script `kgc-kd-X` when that is what runs."""
    script = prog.removeprefix("python -m ").replace("_", "-").replace(".", "-")
    return script if Path(sys.argv[0]).name == script else prog


def parser(prog: str, description: str, *, items: str | None, statuses: Sequence[int] = ALL_STATUSES,
           docs: Sequence[str] = (KEYS_DOC,), notes: Sequence[str] = (), examples: Sequence[str] = (),
           positionals: Sequence[tuple[str, dict[str, Any]]] = ()) -> argparse.ArgumentParser:
    """An entry point's parser. `items`: the help of the configuration items (`args.overrides`, the last
    positionals), or None for an entry point that takes none; `positionals`: (name, add_argument keywords)
    of the positionals before them (sweep's FILE). Unknown options exit 2 with `PROG: error: ...`; parse
    with `parse_intermixed_args`, so options and items may come in any order."""
    ap = argparse.ArgumentParser(prog=_prog(prog), description=textwrap.fill(description, _width()),
                                 epilog=epilog(items=items is not None, statuses=statuses, docs=docs, notes=notes,
                                               examples=examples),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, kwargs in positionals:
        ap.add_argument(name, **kwargs)
    if items is not None:
        ap.add_argument("overrides", nargs="*", metavar="ITEM", help=items)
    return ap


def _loaded(module: str, name: str) -> type[BaseException] | None:
    """A class of a module if the module is imported: an instance of the class implies its module was, so
    the heavy modules (Lightning, torch) are never imported just to recognise their errors."""
    return getattr(sys.modules.get(module), name, None)


def exit_status(err: BaseException, bad_input: Sequence[type[BaseException]] = ()) -> int | None:
    """The exit status of an error an entry point reports (None: not one of them, let it propagate)."""
    non_finite = _loaded("kgc_kd.lit.base", "NonFiniteLossError")
    sigterm = _loaded("lightning.pytorch.utilities.exceptions", "SIGTERMException")
    lock_timeout = _loaded("kgc_kd.chain.lock", "LockTimeout")
    bad = tuple(t for t in (ConfigError, FileNotFoundError, _loaded("kgc_kd.data.io", "DataFormatError"),
                            *bad_input) if t is not None)
    if non_finite is not None and isinstance(err, non_finite):
        return EXIT_NON_FINITE
    if sigterm is not None and isinstance(err, sigterm):  # Lightning's, with no exit code (which reads as success)
        return EXIT_SIGTERM
    if lock_timeout is not None and isinstance(err, lock_timeout):
        return EXIT_LOCK_TIMEOUT
    if isinstance(err, bad):
        return EXIT_BAD_INPUT
    return None


@contextlib.contextmanager
def exit_statuses(*bad_input: type[BaseException]) -> Iterator[None]:
    """Turn the errors a run reports into `error: ...` on stderr and the exit statuses above. `bad_input`:
    more exception types that mean bad input for this entry point (besides ConfigError, FileNotFoundError
    and DataFormatError). Meanwhile the project's own warnings (a rebuilt cache, a data check) print as one line,
    `DataWarning: <message>`, without Python's file:line and source-line prefix; others keep Python's format."""
    default_format = warnings.formatwarning

    def one_line(message, category, filename, lineno, line=None):
        if category.__module__.startswith("kgc_kd."):
            return f"{category.__name__}: {message}\n"
        return default_format(message, category, filename, lineno, line)

    warnings.formatwarning = one_line
    try:
        yield
    except BaseException as err:  # SIGTERMException is a SystemExit
        status = exit_status(err, bad_input)
        if status is None:
            raise
        if status == EXIT_SIGTERM:
            print("stopped by SIGTERM after saving the stage's last.ckpt; rerun the same command to resume",
                  file=sys.stderr)
        else:
            print(f"error: {err}", file=sys.stderr)
        raise SystemExit(status) from None
    finally:
        warnings.formatwarning = default_format


def console_script(main: Callable[[list[str] | None], Any]) -> Callable[[list[str] | None], int]:
    """The function a `[project.scripts]` entry names: `main(argv)`, then status 0. The entry points' `main`
    returns its results to Python callers, and the scripts' wrapper `sys.exit(main())` would print that
    dict or list and exit 1."""

    def script(argv: list[str] | None = None) -> int:
        main(argv)
        return EXIT_OK

    script.__doc__ = f"Console script of {main.__module__}.main: exit 0 after it returns."
    return script
