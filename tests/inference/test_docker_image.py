"""The Docker image built and run for real, with podman or a Docker engine where one runs.

No container registry is reachable here, so the base image is made from Debian's packages
(`scripts/docker_base.sh`, debootstrap) and torch comes from the machine's wheel folder, with the
README's offline build line. The bundle is baked in with the README's own `--build-arg MODEL_DIR=outputs/...`
(so `.dockerignore` must let `outputs/**/model` through and the files must be readable by the image's
user), and the container runs as another uid with a read-only input, no network, on the real T1 volumes:
its masks must equal those of `seg-predict` run directly with the same bundle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from seg.cli.export import main as export_main
from seg.run.kfold import kfold
from tests.conftest import REPO, compose_train, shared, tiny_cv

BASE = "seg-base:bookworm"
WHEELS = Path("/opt/wheels")
CA = Path("/etc/ssl/certs/ca-certificates.crt")
# what a sandboxed machine like the project's needs (cgroups v1, capped rlimits): tried when the plain run fails
SANDBOX = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def _engine() -> tuple[str, list[str]]:
    exe = shutil.which("podman") or shutil.which("docker")
    if exe is None:
        pytest.skip("neither podman nor docker is installed")
    if subprocess.run([exe, "info"], capture_output=True).returncode != 0:
        pytest.skip(f"{exe} is installed but no engine answers")
    if subprocess.run([exe, "image", "exists", BASE], capture_output=True).returncode != 0:
        if os.geteuid() != 0 or shutil.which("debootstrap") is None:
            pytest.skip(f"no {BASE} image, and debootstrap needs root")
        subprocess.run(["bash", "scripts/docker_base.sh", BASE], cwd=REPO, check=True, timeout=1800)
    for flags in ([], SANDBOX):
        r = subprocess.run([exe, "run", "--rm", *flags, BASE, "true"], capture_output=True, text=True)
        if r.returncode == 0:
            return exe, flags
    pytest.skip(f"{exe} cannot run a container here: {r.stderr.strip()[-200:]}")


@pytest.mark.slow  # builds the image (a few minutes the first time, layers cached after) and predicts 3 T1 volumes
def test_image_built_offline_with_a_baked_bundle_runs_as_another_user(synth_root, tmp_path):
    t1 = shared("brain_t1")
    exe, flags = _engine()
    # a bundle trained here, inside the build context, where the README's bake command takes it from
    run = REPO / "outputs" / f"docker-test-{uuid.uuid4().hex[:8]}"
    tag = f"seg:test-{run.name}"
    try:
        kfold(
            compose_train(
                [
                    *tiny_cv(synth_root, run),
                    # 64^3 windows at 0.25 overlap: 125 per fold on the 256^3 T1, not ~9000 of the 24^3 patch
                    "model.inferer.roi_size=[64,64,64]",
                    "model.inferer.overlap=0.25",
                ],
                run,
                config_name="kfold",
            )
        )
        model = run / "model"
        assert export_main([str(model)]) == 0  # the README's order: export, then bake (ONNX files in the bundle)
        build = [
            exe,
            "build",
            *flags,
            "-t",
            tag,
            "--network",
            "host",
            "--build-arg",
            f"BASE={BASE}",
            "--build-arg",
            "TORCH_INDEX=",
        ]
        if WHEELS.is_dir():
            build += ["--build-arg", "WHEELS=/wheels", "-v", f"{WHEELS}:/wheels:ro"]
        if CA.is_file():
            build += ["--build-arg", "CA_BUNDLE=/ca.crt", "-v", f"{CA}:/ca.crt:ro"]
        build += ["--build-arg", f"MODEL_DIR={model.relative_to(REPO)}", "."]
        r = subprocess.run(build, cwd=REPO, capture_output=True, text=True, timeout=3600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        inp = tmp_path / "input"
        inp.mkdir()
        for f in sorted(t1.glob("*.nii.gz")):
            shutil.copy(f, inp / f.name)
        out = tmp_path / "output"
        out.mkdir()
        os.chmod(out, 0o777)  # the image's user (uid 1000) writes here
        before = {f.name: f.read_bytes() for f in inp.iterdir()}
        r = subprocess.run(
            [exe, "run", "--rm", *flags, "--user", "1000:1000", "--network", "none", "--shm-size", "2g"]
            + ["-v", f"{inp}:/input:ro", "-v", f"{out}:/output", tag],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        assert {f.name: f.read_bytes() for f in inp.iterdir()} == before  # inputs untouched
        direct = tmp_path / "direct"
        r2 = subprocess.run(
            [str(REPO / ".venv" / "bin" / "seg-predict"), "-i", str(inp), "-o", str(direct), "-m", str(model)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert r2.returncode == 0, r2.stderr[-3000:]
        for f in sorted(inp.iterdir()):
            img, a, b = nib.load(str(f)), nib.load(str(out / f.name)), nib.load(str(direct / f.name))
            assert a.shape == img.shape and np.allclose(a.affine, img.affine)
            assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), f.name
            if os.geteuid() == 0:  # a rootful engine: the mask belongs to the uid the image ran as
                assert (out / f.name).stat().st_uid == 1000
        assert (out / "summary.csv").is_file()
        # the exported engine through the entrypoint: flags replace CMD, -i/-o/-m come from the image's ENV
        out_ort = tmp_path / "output_ort"
        out_ort.mkdir()
        os.chmod(out_ort, 0o777)
        r4 = subprocess.run(
            [exe, "run", "--rm", *flags, "--user", "1000:1000", "--network", "none", "--shm-size", "2g"]
            + ["-v", f"{inp}:/input:ro", "-v", f"{out_ort}:/output", tag, "--engine", "onnxruntime", "-q"],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert r4.returncode == 0, r4.stderr[-3000:]
        for f in sorted(inp.iterdir()):
            a, b = nib.load(str(out_ort / f.name)), nib.load(str(direct / f.name))
            assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), f.name
        # a read-only output mount: one line naming /output, non-zero, before any inference, nothing written
        ro = tmp_path / "ro_output"
        ro.mkdir()
        os.chmod(ro, 0o777)
        r3 = subprocess.run(
            [exe, "run", "--rm", *flags, "--user", "1000:1000", "--network", "none"]
            + ["-v", f"{inp}:/input:ro", "-v", f"{ro}:/output:ro", tag],
            capture_output=True,
            text=True,
            timeout=600,
        )
        lines = r3.stderr.strip().splitlines()
        assert r3.returncode == 2 and "Traceback" not in r3.stderr, r3.stderr[-2000:]
        assert lines and "/output" in lines[-1] and "not writable" in lines[-1], lines[-3:]
        assert list(ro.iterdir()) == []
    finally:
        subprocess.run([exe, "rmi", "-f", tag], capture_output=True)
        shutil.rmtree(run, ignore_errors=True)
