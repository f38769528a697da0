"""The package installs like a tool: a wheel built from this checkout, installed into a fresh environment,
runs seg-synth, seg-plan, seg-train, seg-predict and seg-eval from an empty folder elsewhere, with its
configs shipped inside it (no checkout, no SEG_CONF_DIR).

The fresh environment borrows the dependencies of the test environment (a ``.pth`` line to its
site-packages: nothing is downloaded) but not seg itself: ``seg`` is imported from the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("install")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SEG_CONF_DIR", "SEG_ROOT")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(REPO)],
         tmp, env)  # fmt: skip
    wheel = next(tmp.glob("seg-*.whl"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # the test env's dependencies
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    _run([*pip, "install", "--no-deps", "-q", str(wheel)], tmp, env)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    return venv, env


def test_the_wheel_ships_its_configs_and_imports_seg_from_itself(installed):
    venv, env = installed
    code = "import seg, seg.config as c; print(seg.__file__); print(c.CONF_DIR)"
    r = _run([str(venv / "bin" / "python"), "-c", code], venv.parent, env)
    module, conf = r.stdout.split()
    assert module.startswith(str(venv)) and conf.startswith(str(venv)) and conf.endswith("seg/conf")
    assert (Path(conf) / "train.yaml").is_file() and (Path(conf) / "experiment" / "hippocampus_unet.yaml").is_file()


def test_every_command_runs_from_an_empty_folder_elsewhere(installed, tmp_path):
    venv, env = installed
    work = tmp_path / "empty"
    work.mkdir()
    b = venv / "bin"
    _run([str(b / "seg-synth"), "-o", "ds", "-n", "6", "--shape", "32", "32", "32", "--seed", "1"], work, env)
    _run([str(b / "seg-check-data"), "ds"], work, env)
    # the wheel carries what --help and the README's wheel line point to (#41)
    assert _run([str(b / "seg-docs"), "predict"], work, env).stdout.startswith("# ")
    assert "torch==" in _run([str(b / "seg-docs"), "constraints"], work, env).stdout
    _run([str(b / "seg-plan"), "ds", "--device", "cuda", "--budget", "5m", "-o", "plan.yaml", "-q"], work, env)
    _run([str(b / "seg-train"), "plan=plan.yaml", "trainer.max_time=null", "trainer.max_epochs=1",
          "model.net.filters=[4,8,16]", "data.num_workers=0", "trainer.accelerator=cpu", "trainer.precision=fp32",
          "hydra.run.dir=run"], work, env, timeout=600)  # fmt: skip
    _run([str(b / "seg-predict"), "-i", "ds/imagesTr", "-o", "pred", "-m", "run/model", "-q"], work, env)
    r = _run([str(b / "seg-eval"), "-p", "pred", "-l", "ds/labelsTr", "-d", "ds/dataset.json", "--no-surface"],
             work, env)  # fmt: skip
    assert "summary:" in r.stdout and (work / "pred" / "summary.json").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["ds", "plan.fingerprint.json", "plan.yaml", "pred", "run"]
