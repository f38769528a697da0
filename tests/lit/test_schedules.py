"""Schedules keyed on the fraction of the budget: the factor's shape, and a short max_time run that ends
with the schedule completed (the last checkpoint's learning rate is the schedule's end value) after a
final validation."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from seg.lit.schedules import lr_factor
from seg.run.train import train
from tests.conftest import TINY, compose_train


def test_factor_shapes():
    assert lr_factor(0.0) == 1.0 and lr_factor(1.0) == 0.0
    assert lr_factor(0.5, "poly", power=0.9) == pytest.approx(0.5**0.9)
    assert lr_factor(0.5, "cosine", end=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(1.0, "cosine", end=0.1) == pytest.approx(0.1)
    assert lr_factor(0.05, "poly", warmup=0.1, warmup_start=0.2) == pytest.approx(0.6)
    assert lr_factor(0.55, "poly", warmup=0.1, power=1.0) == pytest.approx(0.5)
    assert lr_factor(2.0) == 0.0 and lr_factor(0.3, "constant") == 1.0


def test_budget_run_ends_with_the_schedule_done_and_a_final_validation(synth_root, tmp_path):
    cfg = compose_train(
        [
            f"data.root={synth_root}",
            *TINY,
            "trainer.max_epochs=100000",
            "trainer.max_time=00:00:00:08",
            "trainer.check_val_every_n_epoch=1000",
            "model.optimizer.lr=0.01",
        ],
        tmp_path,
    )
    r = train(cfg)
    ck = torch.load(r.last_checkpoint, map_location="cpu", weights_only=False)
    lrs = [g["lr"] for g in ck["optimizer_states"][0]["param_groups"]]
    assert lrs == [0.0]  # poly's end value: the budget, not max_epochs, completed the schedule
    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    lr_col = next(k for k in rows[0] if k.startswith("lr-"))
    logged = [float(x[lr_col]) for x in rows if x.get(lr_col)]
    assert logged[0] > logged[-1] and all(a >= b for a, b in zip(logged, logged[1:]))  # decays monotonically
    # validation was asked for every 1000 epochs only, yet the end of the budget validated and saved the best
    vals = [x for x in rows if x.get("val/dice")]
    assert len(vals) == 1 and int(vals[0]["step"]) >= r.metrics["global_step"] - 1  # one, at the very end
    assert r.best_checkpoint is not None and r.best_checkpoint.exists()
    assert r.metrics["seconds"] < 60 and not math.isnan(r.metrics["val/dice_best"])
