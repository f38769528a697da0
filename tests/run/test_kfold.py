"""K-fold: a 2-fold CV on synthetic data end to end, resume skip, the bundle, launcher configs."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from seg.inference.bundle import load_bundle
from seg.run.kfold import kfold
from tests.conftest import DONE, TINY, compose_train, tiny_cv


def _cfg(root, run, extra=()):
    return compose_train(
        [
            f"data.root={root}",
            *[o for o in TINY if not o.startswith("data.num_folds")],
            "cv.folds=2",
            "trainer.max_epochs=2",
            f"cv.run_dir={run}",
            "cv.worst_cases=1",
            *extra,
        ],
        run,
        config_name="kfold",
    )


def _oof_files_hold_the_final_weights_prediction_and_the_summary_scores_them(root, run, splits, cs):
    """README: cross-validation evaluates each fold's final weights on its validation cases. The out-of-fold
    probabilities are what the fold's final weights predict (not its best checkpoint's), the masks their argmax,
    and cv_summary.json scores those very masks."""
    from seg.inference.bundle import WEIGHTS

    fold = run / "fold_0" / "model"
    w = {c: torch.load(fold / "fold_0" / f, weights_only=True) for c, f in WEIGHTS.items()}
    assert any(not torch.equal(w["final"][k], w["best"][k]) for k in w["final"])  # so the check tells them apart
    bundle, by_file = load_bundle(fold), {e["prediction_file"]: e for e in cs["metric_per_case"]}
    predictors = {c: bundle.predictor(checkpoint=c) for c in WEIGHTS}
    for cid in splits[0]["val"][:2]:
        image = str(root / "imagesTr" / f"{cid}.nii.gz")
        saved = np.load(run / "fold_0" / "validation" / f"{cid}_prob.npz")["prob"].astype(np.float32)
        p = {c: pr.predict(image) for c, pr in predictors.items()}
        gap = {c: float(np.abs(p[c].probabilities[1].numpy() - saved).max()) for c in p}
        assert gap["final"] < 1e-3 < gap["best"], gap  # float16 on disk: 5e-4 at most
        mask_file = run / "fold_0" / "validation" / f"{cid}.nii.gz"
        mask = np.asarray(nib.load(str(mask_file)).dataobj)
        assert np.array_equal(mask, p["final"].labels)
        ref = np.asarray(nib.load(str(root / "labelsTr" / f"{cid}.nii.gz")).dataobj) == 1
        tp, n = int(np.sum((mask == 1) & ref)), int(np.sum(mask == 1) + np.sum(ref))
        dice = by_file[str(mask_file)]["metrics"]["1"]["Dice"]
        assert (dice is None and n == 0) or dice == pytest.approx(2 * tp / n)


def test_two_fold_cv_end_to_end_and_resume(synth_root, tmp_path):
    run = tmp_path / "cv"
    s = kfold(_cfg(synth_root, run))
    splits = json.loads((run / "splits.json").read_text())
    # each fold that learned nothing is named, unless the whole run learned nothing and says so
    dead = [int(k) for k, f in s["per_fold"].items() if f["foreground_mean"]["Dice"] < 0.05]
    assert s["folds_learned_nothing"] == ([] if "learned_nothing" in s else dead)
    assert len(splits) == 2
    val_all = sorted(splits[0]["val"] + splits[1]["val"])
    assert val_all == sorted(p.name[:-7] for p in (synth_root / "labelsTr").iterdir())
    # out-of-fold predictions on the original grids
    for k in (0, 1):
        for cid in splits[k]["val"]:
            pred = nib.load(str(run / f"fold_{k}" / "validation" / f"{cid}.nii.gz"))
            ref = nib.load(str(synth_root / "labelsTr" / f"{cid}.nii.gz"))
            assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)
    # summary in nnU-Net's shape, one entry per case, with the fold
    cs = json.loads((run / "cv_summary.json").read_text())
    _oof_files_hold_the_final_weights_prediction_and_the_summary_scores_them(synth_root, run, splits, cs)
    assert len(cs["metric_per_case"]) == 8
    e = cs["metric_per_case"][0]
    assert {"prediction_file", "reference_file", "metrics", "fold"} <= set(e) and "Dice" in e["metrics"]["1"]
    assert set(cs["per_fold"]) == {"0", "1"} and "overall" in cs["detection"]["1"]
    scan = {round(r["threshold"], 1): r["score"] for r in cs["threshold_scan"]}
    assert len(scan) == 10
    if cs["threshold"] is None:  # ties go to argmax (0.5)
        assert scan[0.5] == max(scan.values())
    else:
        assert scan[round(cs["threshold"], 1)] == max(scan.values()) > scan[0.5]
    assert (run / "results.csv").read_text().count("\n") == 1 + 8
    report = (run / "report.md").read_text()
    edge = cs["detection"]["1"]["bins_ml"][0]  # the data's own bin (#41), in the report's detection table
    assert "Dice-TP" in report and f"< {edge:g} ml" in report and edge != 3.0
    # what was trained (#41): seg's version, the net, the budget, the steps each fold made, in report and bundle
    import seg

    steps = [json.loads((run / f"fold_{k}" / "done.json").read_text())["steps"] for k in (0, 1)]
    assert all(isinstance(n, int) and n > 0 for n in steps)
    assert f"seg {seg.__version__}; plan" in report and "net `unet` filters [4, 8, 16]" in report
    assert f"optimiser steps made per fold: {steps[0]}, {steps[1]}" in report
    assert load_bundle(run / "model").meta.extra["trained"]["steps_made"] == steps
    chosen = "argmax" if cs["threshold"] is None else f"{cs['threshold']:.1f}"
    assert f"Chosen: **{chosen}**" in report and "Every other table uses the argmax masks as predicted" in report
    assert "## Postprocessing" in report and set(cs["postprocessing"]["report"]) == {"1"}
    from PIL import Image

    for f in ("dice_vs_volume.png", "dice_per_fold.png"):
        im = Image.open(run / "figures" / f)
        assert im.format == "PNG" and im.size[0] >= 500 and im.size[1] >= 350, im.size  # readable at report size
        px = np.asarray(im.convert("L"))
        assert px.std() > 10  # drawn on, not blank
        assert f"figures/{f}" in report
    assert list((run / "figures").glob("worst_*.png"))
    # the bundle: model.yaml + plain state dicts
    b = load_bundle(run / "model")
    assert b.folds == [0, 1] and b.labels == {0: "background", 1: "meningioma"}
    assert b.meta.net["name"] == "unet" and b.meta.net["in_channels"] == 1
    assert b.meta.extra["precision"] == "fp32"  # the training's, which seg-predict --precision auto follows
    from seg.run.kfold import fold_mean_dice

    assert ("learned_nothing" in b.meta.extra) == (fold_mean_dice(s) < 0.05)  # marked exactly under the line
    w = torch.load(run / "model" / "fold_0" / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in w.values())
    nets = b.load_nets()
    assert len(nets) == 2
    # resume: finished folds are skipped (nothing retrained), the summary is rebuilt
    mtime = (run / "fold_0" / "done.json").stat().st_mtime
    s2 = kfold(_cfg(synth_root, run))
    assert (run / "fold_0" / "done.json").stat().st_mtime == mtime
    assert s2["fold_dice_mean"] == pytest.approx(s["fold_dice_mean"])
    # R4: a resume with other pre-processing, or on a dataset the split does not cover, is refused before any fold
    from seg.config import UserError

    with pytest.raises(UserError) as e:
        kfold(_cfg(synth_root, run, ["data.spacing=[2.0,2.0,2.0]"]))
    assert str(e.value).startswith(f"{run / 'fold_0'}: finished with data.spacing=None but this run has [2.0, 2.0")
    grown = tmp_path / "grown"
    shutil.copytree(synth_root, grown)
    for part in ("imagesTr", "labelsTr"):
        shutil.copy(grown / part / "synth_000.nii.gz", grown / part / "synth_new.nii.gz")
    meta = json.loads((grown / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/synth_new.nii.gz", "label": "./labelsTr/synth_new.nii.gz"})
    meta["numTraining"] = len(meta["training"])
    (grown / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"1 case\(s\) of the dataset in no validation fold \(synth_new\)"):
        kfold(_cfg(grown, run))
    assert (run / "fold_0" / "done.json").stat().st_mtime == mtime  # nothing retrained, nothing rebundled


def test_a_fold_copy_beside_the_folds_is_no_fold(tmp_path):
    """R14: a ``fold_0.bak`` copy in the run folder stopped the summary with a traceback (int('0.bak'))."""
    from seg.run.kfold import finished_folds

    for name in ("fold_0", "fold_0.bak", "fold_1", "fold_x", "fold_10"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "done.json").write_text("{}")
    assert finished_folds(tmp_path) == [0, 1, 10]


def test_a_split_without_training_cases_is_an_error(synth_root, tmp_path):
    from seg.data.splits import SplitError, validate_splits

    with pytest.raises(SplitError, match="fold 0 has no training cases"):
        validate_splits([{"train": [], "val": ["synth_000"]}], None, "s.json")
    with pytest.raises(SplitError, match="must be lists of case ids"):
        validate_splits([{"train": "synth_001", "val": ["synth_000"]}], None, "s.json")


def test_overlapping_splits_file_is_an_error(synth_root, tmp_path):
    from seg.data.splits import SplitError

    run = tmp_path / "cv"
    run.mkdir()
    (run / "splits.json").write_text(json.dumps([{"train": ["synth_000", "synth_001"], "val": ["synth_001"]}]))
    with pytest.raises(SplitError, match="both train and val"):
        kfold(_cfg(synth_root, run))


def test_slurm_launcher_config_gives_submitit_parameters(tmp_path, monkeypatch):
    """The SLURM path cannot run here: check its composed config turns into the right submitit parameters."""
    submitit = pytest.importorskip("submitit")
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from seg.config import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        hc = compose(
            "kfold",
            overrides=[
                "hydra/launcher=slurm",
                "hydra.launcher.partition=gpu",
                "hydra.launcher.tasks_per_node=4",
                "hydra.launcher.gpus_per_node=4",
                f"paths.output_dir={tmp_path}",
            ],
            return_hydra_config=True,
        )
    params = OmegaConf.to_container(hc.hydra.launcher, resolve=False)
    assert params["_target_"].endswith("SlurmLauncher")
    # as the plugin's launcher does: generic keys stay, the rest get the "slurm_" prefix
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    skip = {"_target_", "submitit_folder", "max_num_timeout", "setup", "name"}  # init keys, as the plugin splits them
    import submitit.slurm.slurm as sl

    monkeypatch.setattr(sl.shutil, "which", lambda name: f"/usr/bin/{name}")  # no cluster here: pretend srun exists
    ex = submitit.AutoExecutor(
        folder=str(tmp_path / "sub"), cluster="slurm", slurm_max_num_timeout=params["max_num_timeout"]
    )
    ex.update_parameters(
        **{k if k in base else f"slurm_{k}": v for k, v in params.items() if k not in skip and v is not None}
    )
    p = ex._executor.parameters
    assert p["ntasks_per_node"] == 4 and p["gpus_per_node"] == 4 and p["partition"] == "gpu"
    assert p["time"] == 1440 and p["cpus_per_task"] == 8 and p["mem"] == "32GB"
    assert ex._executor.parameters["array_parallelism"] == 5
    sbatch = ex._executor._make_submission_file_text("python -m seg.cli.kfold", "123")
    for line in (
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --time=1440",
    ):
        assert line in sbatch


@pytest.mark.parametrize("which", ["synthetic", "hippocampus"])
def test_seg_train_fold_k_is_seg_kfold_fold_k(synth_root, tmp_path, which):
    # one splitter, one seed key: the same dataset and data.split_seed give the same cases in fold k
    # of seg-train (data.fold=k) and of seg-kfold, and the same splits.json
    from seg.run.kfold import make_cv_splits
    from seg.run.train import prepare_data
    from tests.conftest import shared

    root = synth_root if which == "synthetic" else shared("hippocampus")
    folds = 2 if which == "synthetic" else 5
    common = [f"data.root={root}", "data.split_seed=3", f"data.num_folds={folds}", "check_data=false"]
    kcfg = compose_train([*common, f"cv.folds={folds}"], tmp_path / "k", config_name="kfold")
    spec = prepare_data(kcfg).spec
    splits = make_cv_splits(spec, kcfg, tmp_path / "kfold_splits.json")
    for k in range(folds):
        cfg = compose_train([*common, f"data.fold={k}", f"data.splits_file={tmp_path / f'train{k}.json'}"], tmp_path)
        train, val = prepare_data(cfg).split()
        assert (train, val) == (splits[k]["train"], splits[k]["val"])
        assert (tmp_path / f"train{k}.json").read_bytes() == (tmp_path / "kfold_splits.json").read_bytes()
    # and the split is the stratified one: each fold's share of the largest-volume stratum differs by <= 1
    from seg.data.splits import volume_strata

    strata = volume_strata(spec.cases, 3)
    top = max(strata.values())
    counts = [sum(strata[c] == top for c in f["val"]) for f in splits]
    assert max(counts) - min(counts) <= 1


def test_kfold_cli_names_runs_after_the_experiment_and_reports_progress(synth_root, tmp_path):
    # outputs/<experiment>/kfold/<date>/, a banner per fold, a log line per out-of-fold case, progress.png
    # per fold and combined, and a closing line with the fold-mean Dice per label and the paths
    import os
    import re
    import subprocess
    import sys

    from tests.conftest import REPO

    args = [
        "experiment=synthetic_unet",
        f"data.root={synth_root}",
        *[o for o in TINY if not o.startswith("data.num_folds")],
        "cv.folds=2",
        "trainer.max_epochs=1",
        "cv.surface_metrics=false",
        "cv.worst_cases=0",
        f"paths.log_dir={tmp_path / 'outputs'}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "seg.cli.kfold", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode in DONE, r.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "synthetic_unet" / "kfold").iterdir())
    assert len(runs) == 1
    run = runs[0]
    for f in ("splits.json", "cv_summary.json", "report.md", "model/model.yaml", "progress.png"):
        assert (run / f).is_file(), f
    for k in (0, 1):
        assert (run / f"fold_{k}" / "progress.png").stat().st_size > 5000
        assert len(json.loads((run / f"fold_{k}" / "progress.json").read_text())) == 1
    text = (run / "kfold.log").read_text()  # what the console got too (it is not a terminal here)
    assert "=== fold 1/2" in r.stdout + r.stderr
    splits = json.loads((run / "splits.json").read_text())
    for i, k in enumerate((0, 1)):
        assert f"=== fold {i + 1}/2 (fold id {k}): {len(splits[k]['train'])} training, {len(splits[k]['val'])}" in text
    assert len(re.findall(r"\d+/\d+ synth_\d+ written", text)) == 8  # each out-of-fold case, once
    *_, last, nxt = r.stdout.strip().splitlines()
    cs = json.loads((run / "cv_summary.json").read_text())
    per_fold = [cs["per_fold"][str(k)]["mean"]["1"]["Dice"] for k in (0, 1)]
    assert last.startswith("fold-mean Dice over 2 folds") and f"meningioma {np.mean(per_fold):.4f}" in last
    assert str(run / "report.md") in last and str(run / "model") in last
    assert nxt == f"next: seg-predict -m {run / 'model'} -i INPUT -o OUTPUT"


def _kfold_cli(args, timeout=900):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "seg.cli.kfold", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow  # real launchers start a process per fold (~25 s); fold ids in-process are in the default tier
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_sweep_over_fold_ids_with_a_real_launcher_then_evaluate(synth_root, tmp_path, launcher):
    # the README's parallel recipe, run for real: one job per fold id through Hydra's launcher plugin
    # (joblib; submitit's local executor, the SLURM plugin's own code path), then one plain run evaluates
    run = tmp_path / "cv"
    base = [
        *tiny_cv(synth_root, run),
        f"paths.log_dir={tmp_path / 'outputs'}",
    ]
    extra = (
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
        if launcher == "joblib"
        else ["hydra/launcher=submitit_local", f"hydra.launcher.submitit_folder={tmp_path / 'sub'}"]
    )
    r = _kfold_cli(["-m", *base, "cv.fold_ids=[0],[1]", *extra])
    assert r.returncode in DONE, r.stderr[-3000:]
    done = {k: run / f"fold_{k}" / "done.json" for k in (0, 1)}
    assert all(d.is_file() for d in done.values())
    if launcher == "submitit_local":
        assert list((tmp_path / "sub").rglob("*_result.pkl"))  # the jobs went through submitit
    stamps = {k: d.stat().st_mtime_ns for k, d in done.items()}
    r2 = _kfold_cli(base)
    assert r2.returncode in DONE, r2.stderr[-3000:]
    assert {k: d.stat().st_mtime_ns for k, d in done.items()} == stamps  # evaluated, not retrained
    cs = json.loads((run / "cv_summary.json").read_text())
    assert set(cs["per_fold"]) == {"0", "1"} and len(cs["metric_per_case"]) == 8
    assert load_bundle(run / "model").folds == [0, 1]


def test_fold_ids_runs_only_those_folds(synth_root, tmp_path):
    run = tmp_path / "cv"
    kfold(_cfg(synth_root, run, ["cv.fold_ids=[1]", "trainer.max_epochs=1", "cv.surface_metrics=false"]))
    assert (run / "fold_1" / "done.json").is_file() and not (run / "fold_0").exists()
    assert load_bundle(run / "model").folds == [1]


def test_group_regex_keeps_a_subjects_cases_in_one_fold(tmp_path):
    from types import SimpleNamespace

    from seg.run.kfold import make_cv_splits

    ids = [f"sub-{s:02d}_ses-{t}" for s in range(6) for t in (1, 2, 3)]
    spec = SimpleNamespace(cases=[SimpleNamespace(case_id=c, label=None) for c in ids])
    cfg = compose_train(["cv.folds=3", "data.stratify=false", r"cv.group_regex='^(sub-\d+)_'"], tmp_path, "kfold")
    splits = make_cv_splits(spec, cfg, tmp_path / "splits.json")
    for f in splits:
        val_subjects = {c.split("_")[0] for c in f["val"]}
        assert not val_subjects & {c.split("_")[0] for c in f["train"]}
        assert len(f["val"]) == 6  # two whole subjects per fold


@pytest.mark.slow  # a k-fold CLI run killed in its second fold, then the same command again
def test_cv_killed_mid_fold_resumes(synth_root, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    run = tmp_path / "cv"
    args = [*tiny_cv(synth_root, run, folds=2, epochs=30), f"paths.log_dir={tmp_path / 'outputs'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "seg.cli.kfold", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 600
    last1 = run / "fold_1" / "checkpoints" / "last.ckpt"
    while time.time() < deadline and p.poll() is None and not last1.exists():
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert (run / "fold_0" / "done.json").is_file() and last1.exists() and not (run / "fold_1" / "done.json").exists()
    stamp = (run / "fold_0" / "done.json").stat().st_mtime_ns
    r = _kfold_cli(args)
    assert r.returncode in DONE, r.stderr[-3000:]
    assert (run / "fold_0" / "done.json").stat().st_mtime_ns == stamp  # the finished fold is not retrained
    assert json.loads((run / "fold_1" / "done.json").read_text())["epochs"] == 30
    assert "fold 1: resuming from" in r.stdout + r.stderr
    assert set(json.loads((run / "cv_summary.json").read_text())["per_fold"]) == {"0", "1"}
