"""kgc_kd/cli.py: the entry points' shared `--help`, exit statuses and console scripts.

`check_help` is also used by the entry points' own `--help` tests (tests/test_fit.py, test_compare.py,
test_sweep.py, test_predict.py, test_bench.py)."""

import importlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kgc_kd import cli
from kgc_kd.config import GROUPS, ConfigError, conf_dir, presets

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"kgc-kd-fit": "kgc_kd.fit", "kgc-kd-compare": "kgc_kd.compare.__main__", "kgc-kd-sweep": "kgc_kd.sweep.__main__",
           "kgc-kd-predict": "kgc_kd.predict", "kgc-kd-serve-bench": "kgc_kd.serve_bench"}


def expected_presets() -> dict[str, list[str]]:
    """Every folder of conf/ holding YAML files, with its files' names: read here from the files."""
    found = {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in conf_dir().iterdir() if d.is_dir()}
    return {name: stems for name, stems in found.items() if stems}


def listed_presets(help_text: str) -> tuple[dict[str, list[str]], list[str]]:
    """The `config groups and their presets` section of a `--help`: {group or folder: presets} (wrapped
    lines joined), and the groups it says have no presets."""
    assert "config groups and their presets" in help_text, help_text
    section = help_text.split("config groups and their presets", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    listed: dict[str, str] = {}
    bare: list[str] = []
    name = None
    for line in section:
        if line.startswith("whole-run files"):
            continue
        if "no presets" in line:
            bare = [g.strip() for g in line.split(":")[0].split(",")]
        elif line.startswith("  ") and not line.startswith("   "):
            name, names = line.split(None, 1)
            listed[name] = names
        else:  # a wrapped continuation of `name`'s list
            listed[name] += " " + line.strip()
    return {k: [x.strip() for x in v.split(",")] for k, v in listed.items()}, bare


def assert_lists_every_preset(help_text: str) -> None:
    listed, bare = listed_presets(help_text)
    expected = expected_presets()
    assert listed == expected
    assert all(listed[g] == presets(g) for g in listed)
    assert sorted(bare) == sorted(g for g in GROUPS if g not in expected)


def check_help(capsys, main, flag: str, usage: str, shown: tuple[str, ...], groups: bool = True) -> str:
    """`main([flag])` exits 0 and prints a help that starts with `usage`, shows each of `shown` and, when
    the entry point takes configuration items, every group with its presets as in conf/."""
    with pytest.raises(SystemExit) as exc:
        main([flag])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {usage}"), text
    assert [s for s in shown if s not in text] == []
    if groups:
        assert_lists_every_preset(text)
    else:
        assert "config groups" not in text and "key=value" not in text
    return text


def test_groups_section_lists_the_presets_of_conf(capsys):
    text = "\n".join(cli.groups_section())
    assert_lists_every_preset(text)
    listed, _ = listed_presets(text)
    assert {"data", "distill", "model", "trainer"} <= set(listed) and "makd" in listed["distill"]
    assert "config=conf/experiment/NAME.yaml" in text  # not a group: whole-run files, given as config=


def test_presets_are_read_from_the_files_when_help_is_asked(tmp_path, monkeypatch):
    for rel in ("data/mykg.yaml", "distill/mine.yaml", "recipes/big.yaml", "empty/README.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}\n")
    monkeypatch.setenv("KGC_KD_CONF", str(tmp_path))
    text = cli.epilog(items=True, statuses=cli.ALL_STATUSES, docs=["docs/x.md"])
    listed, bare = listed_presets(text)
    assert listed == {"data": ["mykg"], "distill": ["mine"], "recipes": ["big"]}
    assert bare == ["model", "optim", "trainer", "eval", "teacher", "run"]
    assert f"config={tmp_path}/recipes/NAME.yaml" in text and "docs/x.md" in text


def test_epilog_of_an_entry_point_without_items_has_no_forms_or_groups():
    text = cli.epilog(items=False, statuses=(cli.EXIT_OK, cli.EXIT_BAD_INPUT), docs=["docs/predict.md"],
                      notes=["A note."], examples=["python -m x --y"])
    assert "config groups" not in text and "key=value" not in text
    assert "A note." in text and "  python -m x --y" in text and "documented in: docs/predict.md" in text
    assert "  0  done" in text and "  2  bad input" in text and "143" not in text


def test_parser_adds_items_after_its_own_positionals():
    ap = cli.parser("python -m x", "Describe.", items="items", statuses=(0, 2),
                    positionals=[("file", {"metavar": "FILE"})])
    ap.add_argument("--count", type=int)
    args = ap.parse_intermixed_args(["f.yaml", "a=1", "--count", "3", "b.c=2"])
    assert (args.file, args.overrides, args.count) == ("f.yaml", ["a=1", "b.c=2"], 3)
    assert "FILE [ITEM ...]" in ap.format_usage()


def test_unknown_option_exits_2_with_an_error_line(capsys):
    ap = cli.parser("python -m x", "Describe.", items="items")
    with pytest.raises(SystemExit) as exc:
        ap.parse_intermixed_args(["a=1", "--bogus"])
    assert exc.value.code == cli.EXIT_BAD_INPUT == 2
    assert "python -m x: error: unrecognized arguments: --bogus" in capsys.readouterr().err


def test_exit_statuses_map_each_error_to_its_status(capsys):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from kgc_kd.chain.lock import LockTimeout
    from kgc_kd.data.io import DataFormatError
    from kgc_kd.lit.base import NonFiniteLossError

    cases = [(ConfigError("no key 'x'"), 2), (FileNotFoundError("no such file y"), 2), (DataFormatError("z:3"), 2),
             (NonFiniteLossError("loss nan at step 4"), 3), (SIGTERMException(), 143),
             (LockTimeout("runs/stage-store/teacher-k.lock held by pid 7 on h since 2026-12-07T15:00:00Z"), 75)]
    for err, status in cases:
        with pytest.raises(SystemExit) as exc, cli.exit_statuses():
            raise err
        assert exc.value.code == status
        out = capsys.readouterr()
        assert out.out == ""
        assert (f"error: {err}" if status != 143 else "rerun the same command") in out.err
    assert (cli.EXIT_BAD_INPUT, cli.EXIT_NON_FINITE, cli.EXIT_LOCK_TIMEOUT, cli.EXIT_SIGTERM) == (2, 3, 75, 143)


def test_exit_statuses_take_more_bad_input_and_let_the_rest_through(capsys):
    with pytest.raises(SystemExit) as exc, cli.exit_statuses(KeyError):
        raise KeyError("no such entity")
    assert exc.value.code == 2 and "error: 'no such entity'" in capsys.readouterr().err
    for err in (ValueError("a bug"), KeyboardInterrupt(), SystemExit(5)):
        with pytest.raises(type(err)), cli.exit_statuses():
            raise err
    assert capsys.readouterr().err == ""


def test_console_script_returns_0_and_passes_argv():
    seen = []
    script = cli.console_script(lambda argv=None: seen.append(argv) or {"stages": []})
    assert script(["a=1"]) == 0 and script() == 0 and seen == [["a=1"], None]


def test_prog_is_the_console_script_when_that_runs(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/kgc-kd-fit", "--help"])
    assert cli._prog("python -m kgc_kd.fit") == "kgc-kd-fit"
    assert cli._prog("python -m kgc_kd.compare") == "python -m kgc_kd.compare"
    monkeypatch.setattr(sys, "argv", ["-m"])
    assert cli._prog("python -m kgc_kd.fit") == "python -m kgc_kd.fit"


def test_pyproject_names_a_console_script_for_every_entry_point(capsys):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {name: target.split(":")[0] for name, target in scripts.items()} == SCRIPTS
    for name, target in scripts.items():
        module, func = target.split(":")
        script = getattr(importlib.import_module(module), func)
        with pytest.raises(SystemExit) as exc:
            script(["--help"])
        assert exc.value.code == 0, name
        text = capsys.readouterr().out
        assert text.startswith(f"usage: python -m {module.removesuffix('.__main__')} ") and "exit status:" in text


@pytest.mark.slow  # child processes
def test_installed_console_scripts_run():
    bindir = Path(sys.executable).parent
    if shutil.which("kgc-kd-fit", path=str(bindir)) is None:
        pytest.skip(f"the console scripts are not installed in {bindir}: pip install -e .")
    proc = subprocess.run([str(bindir / "kgc-kd-fit"), "--print-config", "run.name=x"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr  # not 1: `main` returns a dict, the script returns 0
    assert OmegaConf.create(proc.stdout).run.name == "x" and proc.stderr == ""
    proc = subprocess.run([str(bindir / "kgc-kd-sweep"), "--help"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: kgc-kd-sweep ")


def test_the_projects_warnings_print_as_one_line_inside_an_entry_point_and_others_keep_pythons_format():
    import warnings

    from kgc_kd.data.io import DataWarning

    before = warnings.formatwarning
    with cli.exit_statuses():
        ours = warnings.formatwarning("cache x rebuilt", DataWarning, "/a/predict.py", 7, "pred = Predictor()")
        theirs = warnings.formatwarning("old", DeprecationWarning, "/a/b.py", 3, "x = 1")
    assert ours == "DataWarning: cache x rebuilt\n"
    assert theirs == before("old", DeprecationWarning, "/a/b.py", 3, "x = 1") and "/a/b.py:3" in theirs
    assert warnings.formatwarning is before  # restored after the entry point
