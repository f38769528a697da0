"""Wheels for a GPU machine without a package registry (it has torch, triton and lightning; seg needs more).

    python scripts/gpu_wheels.py download DIR [--python-version 3.12]   (here, with a registry)
    python scripts/gpu_wheels.py missing DIR                              (there: the wheels its python lacks)

``download`` fetches the pinned versions (requirements/constraints.txt) of what seg imports beyond torch,
triton and Lightning, as wheels for Linux x86-64 and the GPU machine's Python, without their dependencies.
``missing`` prints the wheel files of DIR whose distribution the running python does not have;
``scripts/gpu_check.sh`` installs those (``pip install --no-index --no-deps --target .gpu_site``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# what seg imports at run time beyond torch/triton/pytorch-lightning (and their own dependencies), plus pytest;
# not onnx/onnxruntime (export is not part of the GPU check) nor tensorboard (the GPU check logs to CSV)
NEEDED = [
    "monai", "nibabel", "hydra-core", "omegaconf", "antlr4-python3-runtime", "ruamel.yaml", "einops", "rich",
    "markdown-it-py", "mdurl", "Pygments", "scipy", "matplotlib", "contourpy", "cycler", "fonttools", "kiwisolver",
    "pillow", "pyparsing", "python-dateutil", "pytest", "iniconfig", "pluggy", "importlib_resources",
]  # fmt: skip


def pinned() -> dict[str, str]:
    out = {}
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^;\s]+)", line.strip())
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


BINARY = {"scipy", "matplotlib", "contourpy", "kiwisolver", "pillow", "fonttools"}  # compiled: per Python version


def download(folder: Path, python_version: str, compiled: bool = True) -> None:
    """Compiled packages as manylinux wheels for ``python_version`` (unless ``compiled`` is False: scipy's alone is
    35 MB of the 65 MB, too much beside a repo for a 64 MiB transfer; carry them only where the GPU machine's
    python lacks them); pure ones built or fetched as wheels here (antlr4-python3-runtime 4.9.3, hydra's pin,
    exists only as a source archive)."""
    pins = pinned()

    def spec(n: str) -> str:
        key = n.lower().replace("_", "-")
        return f"{n}=={pins[key]}" if key in pins else n

    binary = [spec(n) for n in NEEDED if n.lower() in BINARY]
    pure = [spec(n) for n in NEEDED if n.lower() not in BINARY]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder)]
    cmd += ["--python-version", python_version, "--platform", "manylinux2014_x86_64"]
    if compiled:
        subprocess.run([*cmd, "--platform", "manylinux_2_28_x86_64", *binary], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(folder), *pure], check=True)


def dist_name(wheel: Path) -> str:
    return wheel.name.split("-")[0].lower().replace("_", "-")


def missing(folder: Path) -> list[Path]:
    have = {d.metadata["Name"].lower().replace("_", "-") for d in importlib.metadata.distributions()}
    return [w for w in sorted(folder.glob("*.whl")) if dist_name(w) not in have]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["download", "missing"])
    p.add_argument("folder")
    p.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    p.add_argument("--pure-only", action="store_true", help="no compiled wheels (scipy, matplotlib, pillow, ...)")
    a = p.parse_args()
    folder = Path(a.folder)
    if a.action == "download":
        folder.mkdir(parents=True, exist_ok=True)
        download(folder, a.python_version, compiled=not a.pure_only)
    else:
        print(" ".join(str(w) for w in missing(folder)))


if __name__ == "__main__":
    main()
