"""seg-plan on the shared real data (skipped without ``../shared/data``): the hippocampus plan lands on
nnU-Net's spacing and patch, and the whole-head T1 volumes (3 cases: two PSR at 2 mm, one LIA at 1 mm)
give a plan that seg-train and seg-kfold take as is and train.

The fingerprint is real; the step-time probe is a model (seconds proportional to voxels x width), so that
the test is quick and its width/patch search deterministic; the real probe is what tests/plan/test_plan.py
runs on the synthetic data."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from scipy import ndimage

from seg.cli.args import plan_overrides
from seg.config import CONF_DIR
from seg.data.datalist import load_dataset
from seg.plan.planfile import plan_yaml
from seg.plan.planner import make_plan
from seg.plan.settings import SETTINGS
from seg.run.train import train
from tests.conftest import shared
from tests.plan.conftest import modelled

FAST = ["debug=fast_dev_run", "~callbacks.rich_progress_bar", "data.num_workers=0", "check_data=false"]
FAST += ["trainer.precision=fp32"]  # a plan may pick bf16 on a CPU that has it; slow on one that has not


@pytest.fixture(scope="module")
def t1_dataset(tmp_path_factory):
    """The three shared whole-head T1 volumes as an MSD dataset, labelled with their head masks (threshold
    at a fifth of the range, largest component, holes filled): real grids, spacings and intensities."""
    src = shared("brain_t1")
    root = tmp_path_factory.mktemp("t1") / "HeadT1"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for p in sorted(src.glob("*.nii.gz")):
        img = nib.load(p)
        a = np.asanyarray(img.dataobj).astype(np.float32)
        lab, _ = ndimage.label(a > a.min() + 0.2 * (a.max() - a.min()))
        head = ndimage.binary_fill_holes(lab == np.bincount(lab.ravel())[1:].argmax() + 1)
        nib.save(img, root / "imagesTr" / p.name)
        nib.save(nib.Nifti1Image(head.astype(np.uint8), img.affine), root / "labelsTr" / p.name)
        training.append({"image": f"./imagesTr/{p.name}", "label": f"./labelsTr/{p.name}"})
    meta = {"modality": {"0": "T1"}, "labels": {"0": "background", "1": "head"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_hippocampus_plan_lands_where_nnunets_does(tmp_path):
    m = modelled()
    plan = make_plan(
        shared("hippocampus"), budget="20m", device="cpu", instruments=m, cache=tmp_path / "fp.json", progress=False
    )
    assert plan.n_cases == len(load_dataset(shared("hippocampus")).cases)
    assert plan.spacing == pytest.approx([1.0, 1.0, 1.0])
    assert plan.patch == [40, 56, 40] and plan.whole_volume  # nnU-Net v2's plan for Task04
    assert all(p >= m for p, m in zip(plan.patch, [34, 48, 34]))  # covers the ~36x50x35 median case
    assert plan.data["augment"]["flip_axes"] == []  # anterior stays in front of posterior along every axis
    assert plan.folds == 5 and "num_folds" not in plan_yaml(plan, "x")


def test_t1_plan_is_a_runnable_config_for_train_and_kfold(t1_dataset, tmp_path):
    m, fp = modelled(), tmp_path / "fp.json"
    plan = make_plan(t1_dataset, budget="20m", instruments=m, cache=fp, progress=False, resolution="full")
    assert plan.n_cases == 3
    assert plan.spacing == pytest.approx([2.0, 2.0, 2.0])  # two 2 mm volumes and one 1 mm: the median
    assert plan.median_shape == [120, 120, 90]
    assert plan.normalize["mode"] == "zscore" and plan.normalize["nonzero"]  # masked background, T1
    assert not plan.whole_volume and plan.steps >= SETTINGS.min_steps  # 128x128x96 is too slow for the budget: shrunk
    assert plan.folds == 3
    path = tmp_path / "t1.yaml"
    path.write_text(plan_yaml(plan, "seg-plan test"))
    assert yaml.safe_load(path.read_text())["data"]["num_folds"] == 3
    for config in ("train", "kfold"):
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            cfg = compose(config, overrides=plan_overrides([f"plan={path}", f"paths.output_dir={tmp_path}"]))
        assert list(cfg.data.patch_size) == plan.patch and cfg.data.num_folds == 3
        if config == "kfold":
            assert cfg.cv.folds == 3  # seg-kfold takes the plan's fold count unless cv.folds is given
    args = plan_overrides([f"plan={path}", f"paths.output_dir={tmp_path / 'run'}", *FAST])
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        r = train(compose("train", overrides=args))
    assert r.metrics["global_step"] == 1  # the planned config trains a batch on the three volumes
    # the resolution rule: whole heads at 2 mm cost too much for the floor, and so they would at 4 mm (2x, the
    # coarsest spacing tried): full resolution, and the plan says why
    auto = make_plan(t1_dataset, budget="20m", instruments=m, cache=fp, progress=False)
    assert auto.resolution == "full" and (auto.patch, auto.base) == (plan.patch, plan.base)
    assert auto.reasons["resolution"] == "full resolution: no spacing up to 2x the data's trains whole cases at width 4"


def test_committed_hippocampus_plan_trains_a_batch(tmp_path, caplog):
    shared("hippocampus")
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("train", overrides=["experiment=hippocampus_planned", f"paths.output_dir={tmp_path}", *FAST])
    assert list(cfg.data.patch_size) == [40, 56, 40]
    with caplog.at_level("INFO", logger="seg.train"):
        r = train(cfg)
    assert r.metrics["global_step"] == cfg.ensemble.members  # a batch for each member
    # a debug run scores its ensemble on one case, as Lightning validates one batch (it took all 40: 36 s)
    assert any(m.getMessage().endswith("validating the mean softmax on 1 cases") for m in caplog.records)


def test_patches_predictably_too_slow_are_not_probed(t1_dataset, tmp_path, monkeypatch):
    from seg.plan import rules, search
    from seg.plan.planner import Planner

    monkeypatch.setattr(Planner, "_estimator", lambda self, measured: None)  # the cost model's screen is tested apart
    cache = tmp_path / "fp.json"
    fast = make_plan(t1_dataset, budget="20m", instruments=modelled(), cache=cache, progress=False, resolution="full")
    monkeypatch.setattr(search, "next_patch", lambda patch, *a: rules.shrink_patch(patch))
    every = make_plan(t1_dataset, budget="20m", instruments=modelled(), cache=cache, progress=False, resolution="full")
    assert (fast.patch, fast.base, fast.precision) == (every.patch, every.base, every.precision)
    probed = lambda plan: {tuple(p.patch) for p in plan.probes}  # noqa: E731
    # about half the probes (the fixed ones at the full patch, precision and memory format, count in both)
    assert probed(fast) < probed(every) and len(fast.probes) <= 0.55 * len(every.probes)
