"""Reference values of surface Dice from DeepMind's own implementation, kept as a small test fixture.

    pip install Surface-Distance-Based-Measures==0.1 -c requirements/constraints.txt   # DeepMind's surface-distance
    python scripts/make_surface_fixtures.py          # -> tests/eval/fixtures/surface_dice_deepmind.json

Pairs: synthetic ellipsoids (anisotropic spacing, shifted and grown predictions; made here from their
parameters, so the test rebuilds them without any data) and real MSD hippocampus labels from
``../shared/data/hippocampus`` (each label against itself shifted by two voxels along axis 1, and against
a one-voxel erosion; skipped in the test when the data is absent). The fixture stores the inputs'
recipe and DeepMind's value at each tolerance; ``tests/eval/test_surface_dice_reference.py`` checks
``seg.eval.metrics`` against it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.eval.surface_pairs import TOLERANCES, hippocampus_pairs, synthetic_pairs  # noqa: E402


def main() -> None:
    import surface_distance as sd

    rows = []
    for recipe, gt, pred, spacing in [*synthetic_pairs(), *hippocampus_pairs()]:
        dist = sd.compute_surface_distances(gt, pred, spacing)
        vals = {str(t): float(sd.compute_surface_dice_at_tolerance(dist, t)) for t in TOLERANCES}
        rows.append({**recipe, "spacing": list(map(float, spacing)), "surface_dice": vals})
        print(recipe, vals)
    out = REPO / "tests" / "eval" / "fixtures" / "surface_dice_deepmind.json"
    meta = {"made_by": "scripts/make_surface_fixtures.py", "reference": "Surface-Distance-Based-Measures 0.1"}
    out.write_text(json.dumps({**meta, "pairs": rows}, indent=1) + "\n")
    print(f"{len(rows)} pairs -> {out}")


if __name__ == "__main__":
    main()
