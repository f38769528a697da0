"""The container's command, run as the image would run it, in a fresh venv installed the Dockerfile's way.

No Docker engine runs here: the test reads ENTRYPOINT and CMD from the Dockerfile, builds a new virtual
environment with the Dockerfile's two pip steps (torch pinned first, then the package, non-editable,
with the constraints), and runs that command with /input, /output and /model mapped to folders of the
test, against a bundle that seg-kfold trains in the test on synthetic data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from seg.run.kfold import kfold
from tests.conftest import REPO, compose_train, tiny_cv


def _docker_array(text: str, instr: str) -> list[str]:
    m = re.search(rf"^{instr}\s+(\[.*\])\s*$", text, re.M)
    assert m, f"Dockerfile has no exec-form {instr}"
    return json.loads(m.group(1))


@pytest.mark.slow  # installs a fresh venv the Dockerfile's way: ~80 s
def test_dockerfile_entrypoint_in_fresh_venv(synth_root, tmp_path):
    text = (REPO / "Dockerfile").read_text()
    entry, cmd = _docker_array(text, "ENTRYPOINT"), _docker_array(text, "CMD")
    assert entry == ["seg-predict"] and cmd == ["-i", "/input", "-o", "/output", "-m", "/model"]
    assert re.search(r"pip install .*-c requirements/constraints.txt torch", text)
    assert re.search(r"pip install -c requirements/constraints.txt \.\s*$", text, re.M)
    # a bundle trained here on synthetic data
    run = tmp_path / "cv"
    kfold(
        compose_train(
            [
                *tiny_cv(synth_root, run),
            ],
            run,
            config_name="kfold",
        )
    )
    # the image's environment: a new venv, the Dockerfile's two pip steps, from a copy of the build context
    ctx = tmp_path / "ctx"
    top_level = {".git", ".venv", "outputs", "tests"}  # as .dockerignore: only the repo's own top-level folders

    def ignore(folder, names):
        skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        return skip | (top_level & set(names) if Path(folder) == REPO else set())

    shutil.copytree(REPO, ctx, ignore=ignore)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", "requirements/constraints.txt"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run(pip + ["torch"], cwd=ctx, check=True, env=env, timeout=900)
    subprocess.run(pip + ["."], cwd=ctx, check=True, env=env, timeout=900)
    inp, out = tmp_path / "input", tmp_path / "output"
    inp.mkdir()
    for f in sorted((synth_root / "imagesTr").iterdir())[:2]:
        shutil.copy(f, inp / f.name)
    os.chmod(inp, 0o555)  # read-only, as mounted :ro
    mapping = {"/input": str(inp), "/output": str(out), "/model": str(run / "model")}
    argv = [str(venv / "bin" / entry[0])] + [mapping.get(a, a) for a in cmd]
    r = subprocess.run(
        argv,
        cwd=tmp_path,
        env={**env, "PATH": f"{venv / 'bin'}:{env['PATH']}"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    os.chmod(inp, 0o755)
    assert r.returncode == 0, r.stderr[-3000:]
    for f in sorted(inp.iterdir()):
        src, mask = nib.load(str(f)), nib.load(str(out / f.name))
        assert mask.shape == src.shape and np.array_equal(mask.affine, src.affine)
    assert (out / "summary.csv").exists()
    # the installed package is the copy, not this checkout
    loc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import seg; print(seg.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    ).stdout
    assert str(venv) in loc
