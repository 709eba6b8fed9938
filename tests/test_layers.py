"""The package's layers, read from its source: every import of every module of kgc_kd (at the top and inside
functions), as `ast` sees it, makes the module graph; it must have no cycle, no module may import a higher
layer, and the config schema imports nothing of kgc_kd (nor torch). Then what importing costs: loading a
config, `--print-config` and every entry point's `--help` import no torch (checked in a fresh process)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kgc_kd"

# Low -> high. A module may import its own layer and the layers below it. Inside the core (eval, data, models,
# distill) the order is what the code does: data reads eval's filter and neighbourhoods, models read data's
# token ids, the loss terms read models' pooling and layer maps.
LAYERS: list[tuple[str, ...]] = [
    ("runtime",),  # atomic files, precision, devices, memory: no kgc_kd import
    ("config",),  # the schema: imports nothing of kgc_kd (checked below)
    ("cli",),  # the entry points' shared parser and exit statuses (imports config only): serve.onnx_export's CLI uses it
    ("eval",),
    ("data",),
    ("models",),
    ("distill",),
    ("serve",),  # serving a stage: entity vectors, index, ONNX towers, variants, their measurement (no Lightning)
    ("lit",),  # the Lightning modules
    ("callbacks",),  # Lightning callbacks (resume, timing)
    ("chain",),  # plan, stage specs, preflight, driver, store, recorder, report, tracking
    ("", "fit", "predict", "compare", "sweep", "bench", "serve_bench"),  # entry points ("" : kgc_kd/__init__.py)
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}
CONFIG_MAY_IMPORT = {"omegaconf", "yaml"}  # besides the standard library


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name `module` imports, anywhere in its file (functions, TYPE_CHECKING blocks included);
    relative imports made absolute; `from a import b` gives both a and a.b (b may be a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def graph() -> dict[str, set[str]]:
    """Module -> the modules of kgc_kd it imports (each name mapped to the deepest module that exists)."""
    files = module_files()

    def owner(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    edges = {}
    for module, path in files.items():
        targets = {owner(n) for n in imported_names(module, path) if n.split(".")[0] == "kgc_kd"}
        edges[module] = {t for t in targets if t is not None and t != module}
    return edges


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYER_OF[parts[1] if len(parts) > 1 else ""]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path (its first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_imports_inside_functions_and_relative_ones(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os\nfrom . import sibling\n\ndef f():\n    from kgc_kd.chain.driver import run_chain\n")
    names = imported_names("kgc_kd.x.m", src)
    assert {"os", "kgc_kd.x.sibling", "kgc_kd.chain.driver", "kgc_kd.chain.driver.run_chain"} <= names
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_has_a_layer():
    unknown = [m for m in module_files() if (m.split(".")[1] if "." in m else "") not in LAYER_OF]
    assert not unknown, f"modules in no layer of {LAYERS}: {unknown} (add their package to LAYERS)"


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_a_higher_layer():
    upward = sorted(f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
                    for m, targets in graph().items() for t in targets if layer(t) > layer(m))
    assert not upward, "imports upwards:\n" + "\n".join(upward)


def test_config_imports_nothing_of_kgc_kd_and_no_torch():
    path = module_files()["kgc_kd.config"]
    names = imported_names("kgc_kd.config", path)
    tops = {n.split(".")[0] for n in names if n}
    assert not {n for n in names if n.split(".")[0] == "kgc_kd"}, "kgc_kd.config imports kgc_kd"
    third_party = tops - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party <= CONFIG_MAY_IMPORT, f"kgc_kd.config imports {sorted(third_party - CONFIG_MAY_IMPORT)}"


def test_the_distill_registry_imports_nothing_of_distill_and_the_package_registers_every_term():
    assert not {t for t in graph()["kgc_kd.distill.registry"] if t.startswith("kgc_kd.distill")}
    code = ("from kgc_kd.distill.registry import known_terms; "
            "print(','.join(known_terms()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert {"ce", "score", "mgfd", "mgd", "pkd", "hidden_mse", "attn_kl"} <= set(out.split(","))


# ---- what importing costs: no torch for a config, --print-config or a --help ------------------------------------
NO_TORCH = [
    pytest.param("from kgc_kd.config import load_config; load_config([])", id="load_config"),
    pytest.param("from kgc_kd import fit; fit.main(['--print-config'])", id="fit --print-config"),
    pytest.param("from kgc_kd import fit; fit.main(['--help'])", id="fit --help"),
    pytest.param("from kgc_kd.compare.__main__ import main; main(['--help'])", id="compare --help"),
    pytest.param("from kgc_kd.sweep.__main__ import main; main(['--help'])", id="sweep --help"),
]


@pytest.mark.parametrize("code", NO_TORCH)
def test_config_print_config_and_help_import_no_torch(code):
    script = ("import sys\ntry:\n    " + code + "\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
              "heavy = sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules)\n"
              "print('HEAVY=' + ','.join(heavy))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY=", proc.stdout[-500:]
