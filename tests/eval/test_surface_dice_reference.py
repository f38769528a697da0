"""seg's SurfaceDice against DeepMind's surface-distance (the definition it reports: surface elements
weighted by their area), from values that implementation computed (``scripts/make_surface_fixtures.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seg.eval.metrics import binary_metrics
from tests.eval.surface_pairs import rebuild

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "surface_dice_deepmind.json").read_text())
ROWS = FIXTURE["pairs"]


def _id(row: dict) -> str:
    return row.get("name") or f"{row['case']}-l{row['label']}-{row['change']}"


@pytest.mark.parametrize("row", ROWS, ids=[_id(r) for r in ROWS])
def test_surface_dice_equals_deepmind(row):
    built = rebuild(row)
    if built is None:
        pytest.skip("the pair's data (../shared/data/hippocampus) is absent")
    gt, pred, spacing = built
    assert tuple(spacing) == tuple(row["spacing"])
    for tol, expected in row["surface_dice"].items():
        got = binary_metrics(pred, gt, spacing, surface=True, tolerance_mm=float(tol))["SurfaceDice"]
        assert got == pytest.approx(expected, abs=1e-6), (tol, got, expected)


def test_fixture_covers_real_labels_and_informative_values():
    kinds = {r["kind"] for r in ROWS}
    values = [v for r in ROWS for v in r["surface_dice"].values()]
    assert kinds == {"synthetic", "hippocampus"} and len(ROWS) >= 20
    assert sum(0.05 < v < 0.95 for v in values) >= len(values) // 2  # not all 0 or 1
