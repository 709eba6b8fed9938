"""The wheel a cluster user installs: built from this checkout it carries every module and the presets
(conf/ as kgc_kd/conf/) and no benchmark code; installed into a fresh directory and run from outside the
checkout, its presets and experiment recipes resolve (kgc_kd.config.conf_dir finds the installed copy).

The wheel is built offline (no build isolation: setuptools from this environment) from a clean copy of the
checkout, because the build writes build/ and *.egg-info beside its sources and a stale build/ would leak
old files into the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", "runs", "wandb",
                                "lightning_logs", "outputs", ".venv", ".ci-venv", "bench-results")
# what a data-less --print-config needs besides the presets (neither is read by it)
PATHS = ["data.source=/data/WN18RR", "model.plm=/models/bert-base-uncased"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the directory it is installed into with `pip install --target`)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    proc = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("kgc_kd-*.whl")
    proc = subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", str(tmp / "site"), str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return wheel, tmp / "site"


def outside(site: Path, *argv: str) -> subprocess.CompletedProcess:
    """`python argv...` in a directory outside the checkout, the installed wheel first on the path (it shadows
    the editable install), without $KGC_KD_CONF."""
    cwd = site.parent / "elsewhere"
    cwd.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("KGC_KD_CONF", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), WANDB_MODE="disabled")
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def print_config(site: Path, *items: str) -> dict:
    proc = outside(site, "-m", "kgc_kd.fit", "--print-config", *items, *PATHS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return yaml.safe_load(proc.stdout)


def test_the_wheel_holds_every_module_and_preset_and_no_benchmark(built):
    wheel, _ = built
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        sources = {n: z.read(n).decode() for n in names if n.endswith(".py")}
    modules = {f"kgc_kd/{p.relative_to(ROOT / 'kgc_kd').as_posix()}" for p in (ROOT / "kgc_kd").rglob("*.py")}
    assert not modules - names, f"modules missing from the wheel (pyproject.toml [tool.setuptools] packages): " \
                                f"{sorted(modules - names)}"
    presets = {f"kgc_kd/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert len(presets) > 20 and "kgc_kd/conf/distill/mgd.yaml" in presets
    assert not presets - names, f"presets missing from the wheel (pyproject.toml package-data): {sorted(presets - names)}"
    # nothing but the package and its metadata; no benchmark, no Wikidata-shaped generator
    assert {n.split("/")[0] for n in names} == {"kgc_kd", f"{wheel.name.split('-py')[0]}.dist-info"}
    assert not [n for n in names if "bench" in n.split("/") or "wikidata_like" in n]
    assert not [n for n, text in sources.items() if "wikidata_like" in text or "experiments.bench" in text]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    with zipfile.ZipFile(wheel) as z:  # no script runs the checkout's benchmark (kgc-kd-serve-bench is the package's)
        targets = [line.split("=", 1)[1].strip() for line in z.read(entry_points).decode().splitlines() if "=" in line]
    assert targets and not [t for t in targets if t.startswith("experiments") or ".bench" in t.split(":")[0]], targets


def test_installed_outside_the_checkout_the_presets_resolve(built):
    _, site = built
    probe = ("import json, kgc_kd\nfrom kgc_kd.config import conf_dir, presets\n"
             "print(json.dumps({'file': kgc_kd.__file__, 'conf': str(conf_dir()),"
             " 'groups': {g: presets(g) for g in ('data', 'distill', 'model', 'trainer', 'experiment')}}))")
    proc = outside(site, "-c", probe)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    assert Path(found["file"]).resolve().is_relative_to(site.resolve())  # the wheel, not the editable checkout
    assert Path(found["conf"]).resolve() == (site / "kgc_kd" / "conf").resolve()
    for group, stems in found["groups"].items():
        assert stems == sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml")), group

    cfg = print_config(site, "distill=mgd", "trainer=ddp")
    assert [t["name"] for t in cfg["distill"]["terms"]] == ["ce", "score", "mgd"]
    assert cfg["trainer"]["strategy"] == "ddp" and cfg["trainer"]["devices"] == -1
    recipe = Path(found["conf"]) / "experiment" / "wn18rr_pmd.yaml"
    cfg = print_config(site, f"config={recipe}", "distill=pmd", "trainer=ddp")
    assert [s["name"] for s in cfg["stages"]] == ["pmd12", "pmd9", "pmd6", "pmd3"]
    assert cfg["trainer"]["strategy"] == "ddp"
    assert cfg["distill"]["mgfd"] == "pmd" and cfg["distill"]["terms"] == []  # the recipe's objective, given last and cfg["data"]["link_graph"] is True


def test_installed_outside_the_checkout_an_experiment_resolves_by_name(built):
    _, site = built
    cfg = print_config(site, "distill=mgd", "trainer=ddp", "experiment=wn18rr_pmd")
    assert [s["name"] for s in cfg["stages"]] == ["pmd12", "pmd9", "pmd6", "pmd3"]
    assert cfg["trainer"]["strategy"] == "ddp"
