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


def monai_pipeline(files, models, roi, overlap, out_dir):
    from monai import transforms as T
    from monai.inferers import sliding_window_inference

    pre = T.Compose(
        [
            T.LoadImaged("image", image_only=True),
            T.EnsureChannelFirstd("image"),
            T.Orientationd("image", axcodes="RAS", labels=None),
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


def seg_pipeline(files, models, roi, overlap, out_dir, precision="fp32"):
    from seg.inference.predictor import Predictor, save_mask
    from seg.nn.inferer import InfererSpec

    spec = InfererSpec(roi_size=roi, overlap=overlap)
    pred = Predictor(models, {0: "background", 1: "fg"}, ["T1"], PRE, spec, precision=precision)
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
    a = ap.parse_args()
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
    rows = []
    for name, files, filters, roi in workloads:
        for n in a.folds:
            models = nets(filters, n)
            pipelines = engine_pipelines(models) if a.engines else PIPELINES
            for impl, fn in pipelines:
                with tempfile.TemporaryDirectory() as d:
                    fn([warmup_volume(d)], models, roi, a.overlap, d)  # warm-up (imports, allocator, oneDNN)
                    res = {}

                    def go():
                        res.update(fn(files, models, roi, a.overlap, d))

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
                        "total": total,
                    }
                )
            base = rows[-len(pipelines)]["s_case"]
            for r in rows[-len(pipelines) :]:
                r["x"] = r["s_case"] / base
    print(f"\n{threads_note()}; overlap {a.overlap}; untrained paper U-Nets (speed only)")
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
        ],
    )
    if EXPORT_SECONDS:
        print(f"ONNX export (once per fold, parity check included): {sum(EXPORT_SECONDS) / len(EXPORT_SECONDS):.1f} s")
    print(
        "shares are of the end-to-end time; invert+write = resampling back to the input grid, argmax, writing the mask"
    )


if __name__ == "__main__":
    main()
