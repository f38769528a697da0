"""Promises the README and the configs make that no other test held: check_data=false, --cfg job, another
optimiser by override, seg-plan --fingerprint, seg-synth --overwrite, seg-predict on an unsupported dtype and
on inf voxels, a k-fold restarted over a corrupt last.ckpt."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from seg.errors import SegError
from seg.run.train import train
from tests.conftest import REPO, TINY, compose_train, tiny_cv


def _shift_label_affine(ds):
    p = ds / "labelsTr" / "synth_001.nii.gz"
    img = nib.load(p)
    aff = img.affine.copy()
    aff[0, 3] += 0.5  # half a millimetre off the image's grid: the check's error, harmless to training
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), aff, img.header), p)
    return p


def test_check_data_false_skips_the_dataset_check(synth_copy, tmp_path):
    named = _shift_label_affine(synth_copy)
    base = [f"data.root={synth_copy}", *TINY, "debug=fast_dev_run"]
    with pytest.raises(SegError, match=named.name):
        train(compose_train(base, tmp_path / "a"))
    r = train(compose_train([*base, "check_data=false"], tmp_path / "b"))
    assert r.metrics["global_step"] == 1


def test_cfg_job_prints_the_config_and_trains_nothing(synth_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [f"data.root={synth_root}", f"hydra.run.dir={tmp_path / 'r'}", "--cfg", "job"]
    cmd = [sys.executable, "-m", "seg.cli.train", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert r.returncode == 0 and "trainer:" in r.stdout and "max_epochs:" in r.stdout
    assert not (tmp_path / "r" / "checkpoints").exists() and "Traceback" not in r.stderr


def test_an_sgd_override_trains_with_sgd(synth_root, tmp_path):
    over = ["model.optimizer._target_=torch.optim.SGD", "+model.optimizer.momentum=0.9"]
    r = train(compose_train([f"data.root={synth_root}", *TINY, "debug=fast_dev_run", *over], tmp_path))
    opt = r.module.optimizers() if r.module._trainer else None
    assert r.metrics["global_step"] == 1
    assert type(getattr(opt, "optimizer", opt)).__name__ == "SGD"


def test_seg_plan_fingerprint_cache_is_written_where_asked_and_reused(synth_root, tmp_path, monkeypatch):
    from seg.plan import fingerprint, planner
    from tests.plan.conftest import modelled

    cache = tmp_path / "elsewhere" / "fp.json"
    planner.make_plan(synth_root, budget="2m", device="cpu", instruments=modelled(), cache=cache, progress=False)
    assert cache.is_file()

    def never(*a, **k):
        raise AssertionError("a case was fingerprinted again")

    monkeypatch.setattr(fingerprint, "_one", never)  # the worker function, in this process and in forked ones
    monkeypatch.setattr(fingerprint, "ProcessPoolExecutor", never)
    m = modelled()
    planner.make_plan(
        synth_root, budget="2m", device="cpu", instruments=m, cache=cache, progress=False
    )  # from the cache


def test_seg_synth_overwrite_replaces_a_dataset(tmp_path):
    from seg.cli.synth import main

    ds = tmp_path / "ds"
    assert main(["-o", str(ds), "-n", "2", "--shape", "32", "32", "32"]) == 0
    assert main(["-o", str(ds), "-n", "3", "--shape", "32", "32", "32"]) == 2  # refused without --overwrite
    assert len(json.loads((ds / "dataset.json").read_text())["training"]) == 2
    assert main(["-o", str(ds), "-n", "3", "--shape", "32", "32", "32", "--overwrite"]) == 0
    assert len(json.loads((ds / "dataset.json").read_text())["training"]) == 3


@pytest.mark.parametrize(
    "kind, needle", [("complex", "data type complex64 is not supported"), ("inf", "NaN/inf voxels")]
)
def test_predict_names_an_unsupported_dtype_and_inf_voxels(synth_root, tmp_path, capsys, kind, needle):
    from seg.cli.predict import main
    from tests.inference.conftest import make_bundle

    bundle = make_bundle(tmp_path / "m", folds=(0,))
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(synth_root / "imagesTr" / "synth_000.nii.gz", inp / "good.nii.gz")
    data = np.ones((16, 16, 16), np.complex64 if kind == "complex" else np.float32)
    if kind == "inf":
        data[1, 2, 3] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), inp / "bad.nii.gz")
    assert main(["-i", str(inp), "-o", str(tmp_path / "out"), "-m", str(bundle), "-q"]) == 1
    err = capsys.readouterr().err
    assert any("bad.nii.gz" in line and needle in line for line in err.splitlines()), err
    assert (tmp_path / "out" / "good.nii.gz").exists() and not (tmp_path / "out" / "bad.nii.gz").exists()


def test_kfold_restarts_a_fold_whose_last_ckpt_is_corrupt(synth_root, tmp_path, caplog):
    from seg.run.kfold import kfold

    run = tmp_path / "cv"
    ckpt = run / "fold_0" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(os.urandom(4096))  # a kill mid-write left garbage
    s = kfold(compose_train(tiny_cv(synth_root, run, folds=2, epochs=1), run, "kfold"))
    assert sorted(s["per_fold"]) == ["0", "1"]
    assert any("training the fold from the start" in r.getMessage() for r in caplog.records)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 0  # rewritten by the fold's own training


def test_each_command_prints_the_command_that_comes_next(synth_root, tmp_path, capsys):
    """README: "each command prints the next one". seg-train, seg-kfold and seg-plan's lines are tested beside their
    runs (tests/cli/test_output.py, tests/run/test_kfold.py, the GPU-request row), seg-export's beside its R17 row
    (tests/faults/test_faults_round3.py); these are the other four."""
    import shutil

    from seg.cli.check_data import main as check_main
    from seg.cli.eval import main as eval_main
    from seg.cli.predict import main as predict_main
    from seg.cli.synth import main as synth_main
    from tests.inference.conftest import make_bundle

    def last_next():
        out = capsys.readouterr().out
        return [x for x in out.splitlines() if x.startswith("next")][-1]

    assert synth_main(["-o", str(tmp_path / "s"), "-n", "2", "--shape", "16", "16", "16"]) == 0
    assert last_next() == f"next: seg-check-data {tmp_path / 's'}"
    assert check_main([str(synth_root)]) == 0
    assert last_next() == f"next: seg-plan {synth_root}"
    bundle = make_bundle(tmp_path / "model")
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(synth_root / "imagesTr" / "synth_000.nii.gz", inp / "synth_000.nii.gz")
    assert predict_main(["-i", str(inp), "-o", str(tmp_path / "out"), "-m", str(bundle), "-q"]) == 0
    assert (
        last_next()
        == f"next: seg-eval -p {tmp_path / 'out'} -l LABELS_FOLDER -d DATASET/dataset.json  (-d: the label names)"
    )
    assert (
        eval_main(["-p", str(tmp_path / "out"), "-l", str(synth_root / "labelsTr"), "--no-surface", "--allow-missing"])
        == 0
    )
    assert last_next().startswith(f"next: seg-eval compare {tmp_path / 'out'} OTHER_RESULTS")
