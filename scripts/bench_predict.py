"""End-to-end prediction speed and memory: seg's predictor against a MONAI baseline pipeline, CPU, one process.

    python scripts/bench_predict.py [--hippocampus 20] [--folds 1 5]

Workloads: the 256^3 T1 (1 mm, LIA, uint8) and MSD hippocampus cases, from ../shared/data. Network: the
paper's U-Net backbone with filters 8..128 (96^3 windows on the T1: 125 windows per fold at overlap 0.5;
40x56x40 on hippocampus), untrained weights (speed does not depend on them). The paper's filters
16..256 (``--t1-filters 16 32 128 256 256``) cost ~4x the FLOPs per window; both pipelines run the same
network, so they would only lengthen the run (the 5-fold T1 already takes ~11 minutes in the MONAI
pipeline on 2 cores). Each pipeline is warmed up on a small generated volume first. ~25 minutes in all.
Baseline: LoadImaged ->
EnsureChannelFirstd -> Orientationd -> NormalizeIntensityd -> sliding_window_inference (Gaussian) ->
softmax (mean over folds) -> Invertd -> AsDiscreted(argmax) -> SaveImaged, the same windows and overlap.
seg: seg.inference.Predictor + save_mask (conv+BN folded, channels-last, inference_mode).

    python scripts/bench_predict.py --whole-scans     (~20 minutes)

Whole scans (#45): the 1-mm 256^3 T1 predicted by a model of 0.625-mm spacing (resampled to 410^3, 69 M
voxels, as a whole-scan cardiac plan's model would see it) and a generated 512x512x300 CT-like volume
(int16, 0.8x0.8x1.5 mm, predicted at its own spacing: 79 M voxels). Network: a U-Net of filters 4..64 and
64x80x80 windows (the whole-scan proxy's full-resolution plan). Baseline: the MONAI pipeline above (with
its ``Spacingd`` where the model resamples), then seg fp32 and seg bf16, in the same process. "peak / input"
is the peak RSS over the input volume's float32 size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import peak_memory_mb, print_table, threads_note  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
PRE = {"mode": "patch", "spacing": None, "orientation": "RAS", "normalize": {"mode": "zscore", "nonzero": True}}


def nets(filters, n):
    from seg.nn import create_net

    out = []
    for k in range(n):
        torch.manual_seed(k)
        out.append(create_net("unet", spatial_dims=3, in_channels=1, out_channels=2, filters=filters).eval())
    return out


def monai_pipeline(files, models, roi, overlap, out_dir, spacing=None):
    from monai import transforms as T

    pre = T.Compose(
        [
            T.LoadImaged("image", image_only=True),
            T.EnsureChannelFirstd("image"),
            T.Orientationd("image", axcodes="RAS", labels=None),
            *([T.Spacingd("image", pixdim=spacing, mode="bilinear")] if spacing else []),
            T.NormalizeIntensityd("image", nonzero=True, channel_wise=True),
        ]
    )
    post = T.Compose(
        [
            T.Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False),
            T.AsDiscreted("pred", argmax=True),
            T.SaveImaged(
                "pred",
                output_dir=str(out_dir),
                output_postfix="",
                separate_folder=False,
                output_dtype="uint8",
                print_log=False,
            ),
        ]
    )
    from monai.networks.layers import AffineTransform
    from monai.transforms.spatial import functional

    installed, functional.AffineTransform = functional.AffineTransform, AffineTransform  # MONAI as shipped
    try:
        return _monai_cases(files, models, roi, overlap, pre, post)
    finally:
        functional.AffineTransform = installed


def _monai_cases(files, models, roi, overlap, pre, post):
    from monai.inferers import sliding_window_inference

    times = {"preprocess": 0.0, "infer": 0.0, "invert+write": 0.0}
    for f in files:
        t0 = time.perf_counter()
        d = pre({"image": f})
        t1 = time.perf_counter()
        with torch.inference_mode():
            x = d["image"][None].float()
            prob = sum(
                torch.softmax(sliding_window_inference(x, roi, 2, m, overlap=overlap, mode="gaussian"), 1)
                for m in models
            )
            d["pred"] = (prob / len(models))[0]
        t2 = time.perf_counter()
        post(d)
        t3 = time.perf_counter()
        times["preprocess"] += t1 - t0
        times["infer"] += t2 - t1
        times["invert+write"] += t3 - t2
    return times


def seg_pipeline(files, models, roi, overlap, out_dir, precision="fp32", spacing=None):
    from seg.inference.predictor import Predictor, save_mask
    from seg.nn.inferer import InfererSpec

    spec = InfererSpec(roi_size=roi, overlap=overlap)
    pre = PRE | {"spacing": list(spacing) if spacing else None}
    pred = Predictor(models, {0: "background", 1: "fg"}, ["T1"], pre, spec, precision=precision)
    times = {"preprocess": 0.0, "infer": 0.0, "invert+write": 0.0}
    for f in files:
        p = pred.predict(f)
        t = time.perf_counter()
        save_mask(p.labels, p.reference, Path(out_dir) / Path(f).name)
        times["preprocess"] += p.seconds["preprocess"]
        times["infer"] += p.seconds["infer"]
        times["invert+write"] += p.seconds["invert"] + p.seconds["labels"] + time.perf_counter() - t
    return times


PIPELINES = (("MONAI pipeline (baseline)", monai_pipeline), ("seg predictor", seg_pipeline))
EXPORT_SECONDS: list[float] = []


def engine_pipelines(models):
    """torch fp32 (baseline), torch bf16, ONNX Runtime fp32: the nets exported once here (seg-export's own
    code, its parity check included; the seconds are reported), one session per fold made in each run."""
    import functools

    from seg.inference.engines import OrtNet
    from seg.inference.export import export_fold

    folder = Path(tempfile.mkdtemp(prefix="bench_onnx."))
    paths = []
    for k, m in enumerate(models):
        t = time.perf_counter()
        export_fold(m, "unet", 1, "onnx", folder / f"fold_{k}.onnx")
        EXPORT_SECONDS.append(time.perf_counter() - t)
        paths.append(folder / f"fold_{k}.onnx")

    def ort(files, _models, roi, overlap, out_dir):
        return seg_pipeline(files, [OrtNet(p) for p in paths], roi, overlap, out_dir)  # sessions counted

    return (
        ("seg torch fp32 (baseline)", seg_pipeline),
        ("seg torch bf16", functools.partial(seg_pipeline, precision="bf16")),
        ("seg onnxruntime fp32", ort),
    )


def warmup_volume(folder: str) -> str:
    import nibabel as nib
    import numpy as np

    path = str(Path(folder) / "warmup.nii.gz")
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((48, 56, 40), dtype=np.float32), np.eye(4)), path)
    return path


def ct_volume(folder: str, shape=(512, 512, 300)) -> str:
    """A CT-like int16 volume (HU): air, a body ellipse with lungs and a spine, 0.8x0.8x1.5 mm."""
    import nibabel as nib
    import numpy as np

    x, y = np.ogrid[: shape[0], : shape[1]]
    cx, cy = shape[0] / 2, shape[1] / 2
    body = ((x - cx) / (0.42 * shape[0])) ** 2 + ((y - cy) / (0.3 * shape[1])) ** 2 <= 1
    lungs = (((abs(x - cx) - 0.17 * shape[0]) / (0.12 * shape[0])) ** 2 + ((y - cy) / (0.2 * shape[1])) ** 2) <= 1
    spine = ((x - cx) / 20) ** 2 + ((y - cy - 0.2 * shape[1]) / 20) ** 2 <= 1
    plane = np.full(shape[:2], -1000, np.int16)
    plane[body] = 40
    plane[lungs & body] = -850
    plane[spine] = 700
    rng = np.random.default_rng(0)
    vol = plane[..., None] + rng.integers(-30, 30, size=shape, dtype=np.int16)
    path = str(Path(folder) / "ct_512x512x300.nii.gz")
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 1.5, 1.0])), path)
    return path


def whole_scan_workloads(folder: str) -> list:
    """(name, files, filters, roi, spacing, pipelines) of the whole-scan rows."""
    import functools

    t1 = SHARED / "brain_t1" / "brainchop_t1_crop_1mm_256.nii.gz"
    pipes = (
        ("MONAI pipeline (baseline)", monai_pipeline),
        ("seg fp32", seg_pipeline),
        ("seg bf16", functools.partial(seg_pipeline, precision="bf16")),
    )
    small, roi = [4, 8, 16, 32, 64], [64, 80, 80]
    out = [("CT 512x512x300", [ct_volume(folder)], small, roi, None, pipes)]
    if t1.exists():
        out.insert(0, ("T1 256^3 -> 0.625 mm", [str(t1)], small, roi, (0.625, 0.625, 0.625), pipes))
    return out


def input_gb(files) -> float:
    import nibabel as nib
    import numpy as np

    return sum(int(np.prod(nib.load(f).shape)) * 4 for f in files) / len(files) / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hippocampus", type=int, default=20)
    ap.add_argument("--folds", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--t1-filters", type=int, nargs=5, default=[8, 16, 32, 64, 128])
    ap.add_argument(
        "--engines",
        action="store_true",
        help="seg's engines instead: torch fp32 (baseline), torch bf16, ONNX Runtime fp32 (sessions, exports counted)",
    )
    ap.add_argument("--whole-scans", action="store_true", help="the whole-scan rows only (256^3 at 0.625 mm, CT)")
    a = ap.parse_args()
    if a.whole_scans:
        return run_rows(whole_scan_workloads(tempfile.mkdtemp(prefix="bench_ct.")), [1], a.overlap)
    workloads = []
    t1 = SHARED / "brain_t1" / "brainchop_t1_crop_1mm_256.nii.gz"
    if t1.exists():
        workloads.append(("T1 256^3", [str(t1)], a.t1_filters, [96, 96, 96]))
    hip = SHARED / "hippocampus" / "imagesTr"
    if hip.is_dir():
        workloads.append(
            (
                f"hippocampus x{a.hippocampus}",
                [str(p) for p in sorted(hip.iterdir())[: a.hippocampus]],
                [8, 16, 32, 64, 128],
                [40, 56, 40],
            )
        )
    if not workloads:
        sys.exit(f"no data under {SHARED}")
    pick = engine_pipelines if a.engines else (lambda _models: PIPELINES)
    run_rows([(name, files, filters, roi, None, pick) for name, files, filters, roi in workloads], a.folds, a.overlap)
    if EXPORT_SECONDS:
        print(f"ONNX export (once per fold, parity check included): {sum(EXPORT_SECONDS) / len(EXPORT_SECONDS):.1f} s")


def run_rows(workloads: list, folds: list[int], overlap: float) -> None:
    """Each workload's pipelines in turn (the first is the baseline), then the table."""
    rows = []
    for name, files, filters, roi, spacing, pipes in workloads:
        gb_in = input_gb(files)
        for n in folds:
            models = nets(filters, n)
            pipelines = pipes(models) if callable(pipes) else pipes
            for impl, fn in pipelines:
                kw = {"spacing": spacing} if spacing else {}
                with tempfile.TemporaryDirectory() as d:
                    fn([warmup_volume(d)], models, roi, overlap, d, **kw)  # warm-up (imports, allocator, oneDNN)
                    res = {}

                    def go():
                        res.update(fn(files, models, roi, overlap, d, **kw))

                    t = time.perf_counter()
                    mem = peak_memory_mb(go)
                    total = time.perf_counter() - t
                rows.append(
                    {
                        "workload": name,
                        "folds": n,
                        "impl": impl,
                        "s_case": total / len(files),
                        "pre": res["preprocess"] / total,
                        "infer": res["infer"] / total,
                        "inv": res["invert+write"] / total,
                        "mem": mem / 1024,
                        "ratio": mem / 1024 / gb_in,
                        "total": total,
                    }
                )
                print(f"{name} {impl}: {total:.1f} s, {mem / 1024:.2f} GB", flush=True)
            base = rows[-len(pipelines)]
            for r in rows[-len(pipelines) :]:
                r["x"] = r["s_case"] / base["s_case"]
                r["xmem"] = r["mem"] / base["mem"]
    print(f"\n{threads_note()}; overlap {overlap}; untrained U-Nets (speed only)")
    print_table(
        rows,
        [
            ("workload", "workload", "s"),
            ("folds", "folds", "d"),
            ("impl", "pipeline", "s"),
            ("s_case", "s/case", ".2f"),
            ("x", "x baseline", ".2f"),
            ("pre", "load+pre", ".0%"),
            ("infer", "infer", ".0%"),
            ("inv", "invert+write", ".0%"),
            ("mem", "peak GB", ".2f"),
            ("xmem", "x baseline", ".2f"),
            ("ratio", "peak / input", ".1f"),
        ],
    )
    print(
        "shares are of the end-to-end time; invert+write = resampling back to the input grid, argmax, writing the mask"
    )


if __name__ == "__main__":
    main()
