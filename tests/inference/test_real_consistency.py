"""On hippocampus cases, seg-predict with a fold's bundle reproduces that fold's out-of-fold prediction."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from seg.cli.predict import main
from seg.data.datalist import load_dataset
from seg.run.kfold import kfold
from tests.conftest import compose_train, shared


@pytest.mark.slow  # a cross-validation on the real hippocampus cases
def test_predict_equals_validation_prediction_of_training_run(tmp_path):
    root = shared("hippocampus")
    ids = [c.case_id for c in load_dataset(root).cases][:12]
    run = tmp_path / "cv"
    run.mkdir()
    (run / "splits.json").write_text(
        json.dumps([{"train": ids[:8], "val": ids[8:10]}, {"train": ids[2:10], "val": ids[:2]}])
    )
    cfg = compose_train(
        [
            "experiment=hippocampus_unet",
            f"data.root={root}",
            "model.net.filters=[4,8,16]",
            "cv.folds=2",
            "trainer.max_epochs=12",  # enough to predict foreground: an all-background model would pass trivially
            "trainer.max_time=null",
            "data.num_workers=0",
            f"cv.run_dir={run}",
            "cv.surface_metrics=false",
            "cv.worst_cases=0",
            "~callbacks.rich_progress_bar",
            "trainer.enable_model_summary=false",
        ],
        run,
        config_name="kfold",
    )
    kfold(cfg)
    out = tmp_path / "pred"
    case_files = [str(root / "imagesTr" / f"{c}.nii.gz") for c in ids[8:10]]
    inp = tmp_path / "in"
    inp.mkdir()
    for f in case_files:
        (inp / f.split("/")[-1]).symlink_to(f)
    assert main(["-i", str(inp), "-o", str(out), "-m", str(run / "model"), "--folds", "0", "-q"]) == 0
    for c in ids[8:10]:
        a = np.asanyarray(nib.load(str(out / f"{c}.nii.gz")).dataobj)
        b = np.asanyarray(nib.load(str(run / "fold_0" / "validation" / f"{c}.nii.gz")).dataobj)
        np.testing.assert_array_equal(a, b)
        assert set(np.unique(a).tolist()) == {0, 1, 2} and (a > 0).sum() > 100, c  # both structures predicted
