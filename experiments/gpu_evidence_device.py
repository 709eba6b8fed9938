"""What the GPU evidence runs on: the device, torch's CUDA build, and every dependency's installed version
checked against the range pyproject.toml asks for (the device image brings its own torch, lightning,
transformers, so a version outside our range is a finding, not an error).

Usage: python experiments/gpu_evidence_device.py OUT_JSON     (prints the same as text)
"""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[tuple[str, str]]:
    """(distribution name, specifier) of [project].dependencies, in their order."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out = []
    for dep in deps:
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*(.*)", dep)
        out.append((m.group(1), m.group(3).split(";")[0].strip()))
    return out


def check_versions(reqs: list[tuple[str, str]], installed=None) -> list[dict]:
    """One row per requirement: installed version (None when absent) and whether it lies in the range.
    `installed(name)` defaults to importlib.metadata.version."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    installed = installed or md.version
    rows = []
    for name, spec in reqs:
        try:
            have = installed(name)
        except md.PackageNotFoundError:
            rows.append({"package": name, "wants": spec or "any", "installed": None, "in_range": False,
                         "note": "not installed"})
            continue
        try:
            ok = Version(have) in SpecifierSet(spec) if spec else True
        except InvalidVersion:
            ok = False
        rows.append({"package": name, "wants": spec or "any", "installed": have, "in_range": bool(ok),
                     "note": "" if ok else f"outside {spec}"})
    return rows


def device_info() -> dict:
    info: dict = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        import torch

        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                    cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                    device_name=None)
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(device_name=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
                        capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                        bf16_supported=torch.cuda.is_bf16_supported())
    except Exception as err:  # recorded, not fatal: the other steps say the rest
        info["torch_error"] = repr(err)
    try:
        import pytest_timeout  # noqa: F401

        info["pytest_timeout"] = md.version("pytest-timeout")
    except ImportError:
        info["pytest_timeout"] = None
    return info


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    info = device_info()
    info["versions"] = check_versions(requirements())
    Path(argv[0]).write_text(json.dumps(info, indent=2) + "\n")
    for k, v in info.items():
        if k != "versions":
            print(f"{k}: {v}")
    print("\npackage versions against pyproject.toml:")
    for r in info["versions"]:
        print(f"  {r['package']:<22} {str(r['installed']):<16} wants {r['wants']:<14} "
              f"{'ok' if r['in_range'] else 'OUT OF RANGE: ' + r['note']}")
    if not info.get("cuda_available"):
        print("no CUDA device: the GPU steps run on the CPU or are skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
