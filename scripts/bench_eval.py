"""Speed of seg's metric suite against MONAI's metrics called directly, in one process.

    python scripts/bench_eval.py [--cases 50]

Workloads: 50 MSD hippocampus label maps (a perturbed copy as the prediction) and the 256^3 T1 volume
with a synthetic 10 ml lesion (a shifted copy as the prediction). seg's suite = Dice, IoU, HD95, ASD,
surface Dice, volumes and the paper's detection metrics (components, Hungarian matching) per label;
the baseline = MONAI's DiceMetric, HausdorffDistanceMetric(95), SurfaceDistanceMetric(symmetric) and
SurfaceDiceMetric on the same one-hot tensors.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import print_table, threads_note  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def monai_suite(pred: np.ndarray, ref: np.ndarray, n_classes: int, spacing) -> None:
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric, SurfaceDistanceMetric
    from monai.networks.utils import one_hot

    p = one_hot(torch.from_numpy(pred.astype(np.int64))[None, None], n_classes)
    r = one_hot(torch.from_numpy(ref.astype(np.int64))[None, None], n_classes)
    sp = [float(s) for s in spacing]
    DiceMetric(include_background=False)(p, r)
    HausdorffDistanceMetric(include_background=False, percentile=95)(p, r, spacing=sp)
    SurfaceDistanceMetric(include_background=False, symmetric=True)(p, r, spacing=sp)
    SurfaceDiceMetric(class_thresholds=[2.0] * (n_classes - 1), include_background=False)(p, r, spacing=sp)


def seg_suite(pred: np.ndarray, ref: np.ndarray, labels: dict, spacing) -> None:
    from seg.eval.detection import case_detection
    from seg.eval.metrics import case_metrics

    case_metrics(pred, ref, spacing, labels, surface=True)
    for i in labels:
        if i:
            case_detection("x", pred == i, ref == i, spacing)


def run(name, items, labels):
    t = time.perf_counter()
    for pred, ref, sp in items:
        monai_suite(pred, ref, len(labels), sp)
    t_monai = time.perf_counter() - t
    t = time.perf_counter()
    for pred, ref, sp in items:
        seg_suite(pred, ref, labels, sp)
    t_seg = time.perf_counter() - t
    return [
        {
            "workload": name,
            "impl": "MONAI metrics (baseline)",
            "s": t_monai,
            "per_case": t_monai / len(items),
            "x": 1.0,
        },
        {
            "workload": name,
            "impl": "seg suite (+ detection)",
            "s": t_seg,
            "per_case": t_seg / len(items),
            "x": t_seg / t_monai,
        },
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=50)
    a = ap.parse_args()
    rows = []
    hip = SHARED / "hippocampus" / "labelsTr"
    if hip.is_dir():
        items = []
        for f in sorted(hip.iterdir())[: a.cases]:
            img = nib.load(str(f))
            ref = np.rint(np.asanyarray(img.dataobj)).astype(np.int64)
            pred = ref.copy()
            pred[ndimage.binary_erosion(ref == 1, iterations=1) ^ (ref == 1)] = 0  # thinner anterior
            pred[ndimage.binary_dilation(ref == 2) & (ref == 0)] = 2  # fatter posterior
            items.append((pred, ref, img.header.get_zooms()[:3]))
        rows += run(f"hippocampus x{len(items)}", items, {0: "bg", 1: "anterior", 2: "posterior"})
    t1 = SHARED / "brain_t1" / "brainchop_t1_crop_1mm_256.nii.gz"
    if t1.exists():
        img = nib.load(str(t1))
        shape = img.shape
        g = np.ogrid[tuple(slice(0, s) for s in shape)]
        r_vox = (3 * 10_000 / (4 * np.pi)) ** (1 / 3)  # 10 ml at 1 mm
        ref = (sum((x - c) ** 2 for x, c in zip(g, (128, 150, 120))) <= r_vox**2).astype(np.int64)
        pred = (sum((x - c) ** 2 for x, c in zip(g, (131, 150, 121))) <= r_vox**2).astype(np.int64)
        rows += run("T1 256^3, 10 ml lesion", [(pred, ref, img.header.get_zooms()[:3])], {0: "bg", 1: "lesion"})
    if not rows:
        sys.exit(f"no data under {SHARED}")
    print(f"\n{threads_note()}")
    print_table(
        rows,
        [
            ("workload", "workload", "s"),
            ("impl", "implementation", "s"),
            ("s", "total s", ".2f"),
            ("per_case", "s/case", ".3f"),
            ("x", "x MONAI", ".2f"),
        ],
    )


if __name__ == "__main__":
    main()
