"""``seg-predict -i INPUT -o OUTPUT -m MODEL_DIR``: NIfTI volumes in, uint8 NIfTI masks out, on the inputs' grids.

No Hydra: the model bundle (``model.yaml`` + ``fold_<k>/weights.pt``) carries everything. A bad input is
reported and skipped; the rest are processed; the exit code is 1 at the end if anything failed. Masks
are written under a temporary name and renamed; inputs are never overwritten.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger("seg.predict")


def _parse_folds(text: str, available: list[int]) -> list[int]:
    if text == "all":
        return available
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--folds takes 'all' or a list like 0,1,2, got {text!r}") from None


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    return name


def case_report(labels_map, names: dict[int, str], spacing) -> dict:
    """Volume (ml) and connected components of each foreground label."""
    import numpy as np
    from scipy import ndimage

    voxel_ml = float(np.prod(spacing)) / 1000
    out = {}
    for i, name in names.items():
        if i == 0:
            continue
        m = labels_map == i
        n = int(ndimage.label(m, structure=np.ones((3, 3, 3), bool))[1]) if m.any() else 0
        out[name] = {"label": i, "volume_ml": round(float(m.sum()) * voxel_ml, 4), "components": n}
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seg-predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True, help="a NIfTI file, a folder of them, or nnU-Net CASE_0000 channel files")
    p.add_argument("-o", "--output", required=True, help="output folder (masks as OUTPUT/<case>.nii.gz)")
    p.add_argument("-m", "--model", required=True, help="model bundle folder (model.yaml + fold_<k>/weights.pt)")
    p.add_argument("--folds", default="all", help="'all' or e.g. 0,1,2: the folds to ensemble (mean softmax)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average over all mirrorings")
    p.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default: the bundle's)")
    p.add_argument("--save-probabilities", action="store_true", help="also write <case>_prob.nii.gz (float32, per class)")
    p.add_argument("--threshold", type=float, default=None, help="foreground threshold for two-class models (default: the bundle's)")
    p.add_argument("--png", action="store_true", help="an overlay montage per case (<case>.png)")
    p.add_argument("--workers", type=int, default=1, help="threads reading and checking the next inputs ahead")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    inp, out = Path(a.input).resolve(), Path(a.output).resolve()
    if not inp.exists():
        print(f"error: {inp}: input does not exist", file=sys.stderr)
        return 2
    if out == inp or (inp.is_file() and out == inp.parent):
        print(f"error: {out}: the output folder may not be the input (inputs are never overwritten)", file=sys.stderr)
        return 2
    from seg.inference.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(a.model)
        folds = _parse_folds(a.folds, bundle.folds)
        nets = bundle.load_nets(folds)
    except (BundleError, argparse.ArgumentTypeError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import nibabel as nib
    import numpy as np
    import torch

    from seg.inference.cases import discover, validate
    from seg.inference.predictor import Predictor, save_mask
    from seg.io import save_nifti, write_text

    meta = bundle.meta
    device = _device(a.device)
    inferer = meta.get("inferer", {})
    threshold = a.threshold if a.threshold is not None else meta.get("threshold")
    predictor = Predictor(nets, bundle.labels, meta["channel_names"], meta["preprocessing"], roi_size=inferer.get("roi_size"),
                          overlap=a.overlap if a.overlap is not None else float(inferer.get("overlap", 0.5)),
                          sw_batch_size=int(inferer.get("sw_batch_size", 2)), tta=a.tta, device=device,
                          threshold=threshold if len(bundle.labels) == 2 else None)
    cases = discover(inp, len(meta["channel_names"]))
    if not cases:
        print(f"error: {inp}: no NIfTI files (.nii, .nii.gz) found", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    inputs = {str(Path(f).resolve()) for c in cases for f in c.files}
    log.info("%d cases, model %s (%s, folds %s) on %s%s", len(cases), a.model, meta["net"]["name"], folds, device, ", TTA" if a.tta else "")
    failures: list[tuple[str, str]] = []
    rows = []
    progress = None
    if not a.quiet:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=__import__("rich.console").console.Console(stderr=True))
        task = progress.add_task("predicting", total=len(cases))
        progress.start()
    try:
        with ThreadPoolExecutor(max(1, a.workers)) as pool:
            checks = [pool.submit(validate, c) for c in cases]  # read-ahead: inputs checked while predicting
            for c, check in zip(cases, checks):
                t0 = time.perf_counter()
                problem = check.result()
                target = out / c.output_name
                if problem is None and str(target.resolve()) in inputs:
                    problem = f"output {target} would overwrite an input"
                if problem is not None:
                    failures.append((c.case_id, problem))
                    log.error("%s: %s", c.files[0], problem)
                else:
                    try:
                        pr = predictor.predict(c.files if len(c.files) > 1 else c.files[0])
                        t_w = time.perf_counter()
                        save_mask(pr.labels, pr.reference, target)
                        if a.save_probabilities:
                            prob = np.moveaxis(pr.probabilities.numpy(), 0, -1).astype(np.float32)
                            pimg = nib.Nifti1Image(prob, pr.reference.affine)
                            pimg.set_qform(pr.reference.get_qform(), int(pr.reference.header["qform_code"]))
                            pimg.set_sform(pr.reference.get_sform(), int(pr.reference.header["sform_code"]))
                            stem = c.output_name[: -len(".nii.gz")] if c.output_name.endswith(".nii.gz") else c.output_name[:-4]
                            save_nifti(pimg, out / f"{stem}_prob.nii.gz")
                        spacing = pr.reference.header.get_zooms()[:3]
                        report = {"case": c.case_id, "inputs": c.files, "mask": str(target),
                                  "labels": case_report(pr.labels, bundle.labels, spacing),
                                  "seconds": {**{k: round(v, 3) for k, v in pr.seconds.items()},
                                              "write": round(time.perf_counter() - t_w, 3)}}
                        stem = c.output_name.split(".nii")[0]
                        write_text(out / f"{stem}.json", json.dumps(report, indent=1))
                        if a.png:
                            from seg.eval.overlay import overlay_montage

                            img = np.asanyarray(pr.reference.dataobj).astype(np.float32)
                            img = img[..., 0] if img.ndim == 4 else img
                            overlay_montage(img, {"red": pr.labels}, out / f"{stem}.png", f"{c.case_id}: prediction in red",
                                            pr.reference.affine)
                        secs = report["seconds"]
                        log.info("%s: %s (%.1f s: %s)", c.case_id, target.name, time.perf_counter() - t0,
                                 ", ".join(f"{k} {v:.2f}" for k, v in secs.items()))
                        rows.append({"case": c.case_id, "mask": target.name, **{f"{n}_ml": v["volume_ml"] for n, v in report["labels"].items()},
                                     **{f"{n}_components": v["components"] for n, v in report["labels"].items()},
                                     "seconds": round(time.perf_counter() - t0, 2)})
                    except torch.cuda.OutOfMemoryError as e:  # noqa: PERF203
                        failures.append((c.case_id, f"out of memory: {e}"))
                        log.error("%s: out of memory", c.files[0])
                    except Exception as e:  # one bad case must not stop the batch
                        failures.append((c.case_id, f"{type(e).__name__}: {e}"))
                        log.error("%s: %s: %s", c.files[0], type(e).__name__, e)
                if progress is not None:
                    progress.advance(task)
    finally:
        if progress is not None:
            progress.stop()
    buf = io.StringIO()
    cols = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("case", "mask"), k))
    w = csv.DictWriter(buf, fieldnames=cols or ["case"])
    w.writeheader()
    for r in rows:
        w.writerow(r)
    for cid, problem in failures:
        w.writerow({"case": cid, **({"mask": f"FAILED: {problem}"} if "mask" in cols else {})})
    write_text(out / "summary.csv", buf.getvalue())
    print(f"{len(rows)} of {len(cases)} cases written to {out}" + (f"; {len(failures)} failed:" if failures else ""))
    for cid, problem in failures:
        print(f"FAILED {cid}: {problem}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
