"""A run that learned nothing says so (#41): its bundle is marked, seg-predict warns, its command exits 3."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys

import pytest

from seg.errors import ExitCode
from seg.run import learned
from tests.conftest import REPO, TINY, compose_train


def test_the_rule_at_its_line():
    assert learned.LEARNED_NOTHING_DICE == 0.05 and ExitCode.LEARNED_NOTHING == 3
    assert learned.learned_nothing(0.0499) and learned.learned_nothing(0.0)
    assert not learned.learned_nothing(0.05) and not learned.learned_nothing(0.8)
    assert not learned.learned_nothing(None) and not learned.learned_nothing(math.nan)  # nothing to judge by


@pytest.mark.parametrize("line, marked", [(1.01, True), (-1.0, False)], ids=["under-the-line", "over-the-line"])
def test_a_run_under_the_line_marks_its_bundle_and_predict_warns(
    synth_root, tmp_path, monkeypatch, caplog, line, marked
):
    """The same tiny run judged against a line above any Dice and one below any: only the first is marked."""
    from seg.cli.predict import main as predict
    from seg.inference.bundle import load_bundle
    from seg.run.train import train

    monkeypatch.setattr(learned, "LEARNED_NOTHING_DICE", line)
    cfg = compose_train([f"data.root={synth_root}", *TINY, "trainer.max_epochs=1"], tmp_path / "r")
    result = train(cfg)
    extra = load_bundle(result.model_bundle).meta.extra
    assert ("learned_nothing" in extra) is marked and bool(result.metrics.get("learned_nothing")) is marked
    if marked:
        assert extra["learned_nothing"] == {
            "dice": round(result.metrics["val/dice_best"], 4),
            "measured": "best validation Dice",
        }
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        args = ["-i", str(synth_root / "imagesTr"), "-o", str(tmp_path / "p"), "-m", str(result.model_bundle)]
        assert predict([*args, "-q"]) == 0
    warned = [r.getMessage() for r in caplog.records if "learned nothing in training" in r.getMessage()]
    assert len(warned) == (1 if marked else 0)


def test_the_command_exits_3_with_a_warning_block_when_it_learned_nothing(synth_root, tmp_path):
    """One epoch of a tiny net: the run ends, writes its bundle, and (under the line, as one epoch leaves it) warns."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "r"
    cmd = [sys.executable, "-m", "seg.cli.train", f"data.root={synth_root}", *TINY, "trainer.max_epochs=1"]
    r = subprocess.run([*cmd, f"hydra.run.dir={run}"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    dice = json.loads((run / "metrics.json").read_text())["val/dice_best"]
    block = [x for x in r.stderr.splitlines() if x.startswith("WARNING ")]
    if dice < learned.LEARNED_NOTHING_DICE:
        assert r.returncode == ExitCode.LEARNED_NOTHING and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert block[0].startswith(f"WARNING this run learned nothing: best validation Dice {dice:.4f} < 0.05")
        assert str(run / "model") in block[1] and "exit code 3" in block[2]
    else:
        assert r.returncode == 0 and not any("learned nothing" in x for x in block)
    assert (run / "model" / "model.yaml").exists()  # written in either case


def test_the_labels_every_training_case_holds_are_recorded(tmp_path):
    """What seg-predict's empty-label warning compares with: the foreground ids present in every training case."""
    import nibabel as nib
    import numpy as np

    from seg.data.datalist import Case, DatasetSpec
    from seg.run.record import labels_in_every_case

    cases = []
    for cid, ids in (("a", (1, 2)), ("b", (1,)), ("c", (1, 2))):
        m = np.zeros((8, 8, 8), np.uint8)
        for i in ids:
            m[i, :, :] = i
        nib.save(nib.Nifti1Image(m, np.eye(4)), tmp_path / f"{cid}.nii.gz")
        cases.append(Case(cid, [str(tmp_path / f"{cid}.nii.gz")], str(tmp_path / f"{cid}.nii.gz")))
    spec = DatasetSpec(str(tmp_path), "msd", ["T1"], {0: "bg", 1: "x", 2: "y"}, cases)
    assert labels_in_every_case(spec, ["a", "b", "c"]) == [1]
    assert labels_in_every_case(spec, ["a", "c"]) == [1, 2]


def test_a_fold_that_learned_nothing_is_said_though_the_fold_mean_did(tmp_path, caplog):
    """A short whole-scan k-fold ended with fold 0 all background (out-of-fold Dice 0) and fold 1 at 0.98: the
    fold mean (0.49) passed the rule and the ensemble hid the dead fold; now a warning names it."""
    from seg.run.kfold import dead_folds, fold_mean_dice

    def summary(*dice):
        return {
            "labels": {"0": "background", "1": "a", "2": "b"},
            "per_fold": {str(k): {"mean": {"1": {"Dice": d}, "2": {"Dice": d}}} for k, d in enumerate(dice)},
        }

    s = summary(0.0, 0.98, 0.0499)
    assert fold_mean_dice(s) == pytest.approx((0.98 + 0.0499) / 3)
    with caplog.at_level("WARNING", logger="seg.kfold"):
        assert dead_folds(s, tmp_path) == [0, 2]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and said[0].startswith("fold 0 learned nothing (its out-of-fold Dice 0.0000 < 0.05)")
    assert f"remove {tmp_path / 'fold_0'} and run the same command with another seed=" in said[0]
    assert dead_folds(summary(0.05, 0.9), tmp_path) == []  # 0.05 is not under the line
