"""A fingerprint of what seg's commands produce, for refactors that must change no behaviour.

Runs, on small synthetic data in a scratch folder: seg-synth, seg-plan (``--device cuda`` on a machine
without CUDA: the FLOP-count estimate, deterministic), seg-train (a few epochs), seg-kfold (2 folds),
seg-predict, seg-export (ONNX) and seg-predict with ONNX Runtime; then prints one sha256 per output
(metrics rounded to 6 digits, masks by their voxels and affine, the plan's values without its forecast).
Run it on two commits (e.g. a ``git worktree`` of the base) and compare the lines:

    python scripts/behaviour_fingerprint.py --work /tmp/fp_new > new.txt
    (cd ../base && python scripts/behaviour_fingerprint.py --work /tmp/fp_old) > old.txt
    diff old.txt new.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

FORECAST = ("steps_in_budget", "steps_range", "step_id", "timed_with", "probes")
METRIC_KEYS = ("val/dice", "val/dice_best", "val/loss", "train/loss_epoch", "epochs", "global_step")


def run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "0", "SEG_THREADS": os.environ.get("SEG_THREADS", "2")}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def mask_digest(folder: Path) -> dict:
    import nibabel as nib

    out = {}
    for p in sorted(folder.glob("*.nii.gz")):
        img = nib.load(p)
        data = np.asanyarray(img.dataobj)
        if data.dtype.kind == "f":  # probabilities: 4 decimals (masks alone are all background on tiny data)
            data = np.round(data, 4)
        out[p.name] = hashlib.sha256(data.tobytes() + np.round(img.affine, 6).tobytes()).hexdigest()[:16]
    return out


def oof(path: Path) -> str:
    return hashlib.sha256(np.round(np.load(path)["prob"].astype(np.float32), 3).tobytes()).hexdigest()[:16]


def metrics(path: Path) -> dict:
    m = json.loads(path.read_text())
    return {k: round(float(m[k]), 6) for k in METRIC_KEYS if m.get(k) is not None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="scratch folder (emptied)")
    p.add_argument("--digest-only", action="store_true", help="print the digests of an earlier run's --work")
    a = p.parse_args()
    work = Path(a.work).resolve()
    if not a.digest_only:
        produce(work)
    report(work)


def produce(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bin_ = Path(sys.executable).parent
    ds, unseen = work / "ds", work / "unseen"
    run([str(bin_ / "seg-synth"), "-o", str(ds), "-n", "8", "--seed", "0", "--shape", "32", "32", "32"], work)
    run([str(bin_ / "seg-synth"), "-o", str(unseen), "-n", "2", "--seed", "9", "--shape", "32", "32", "32"], work)
    run([str(bin_ / "seg-plan"), str(ds), "--device", "cuda", "--budget", "10m", "-o", str(work / "plan.yaml")], work)
    tiny = [
        f"data.root={ds}",
        "model.net.filters=[4,8,16]",
        "data.patch_size=[24,24,24]",
        "data.num_workers=0",
        "data.num_folds=4",
        "trainer.max_epochs=6",
        "~callbacks.rich_progress_bar",
        "seed=1",
        "model.optimizer.lr=0.01",
    ]
    run([str(bin_ / "seg-train"), *tiny, f"hydra.run.dir={work / 'train'}"], work)
    cv = [o for o in tiny if not o.startswith("data.num_folds")]
    run(
        [str(bin_ / "seg-kfold"), *cv, "cv.folds=2", f"cv.run_dir={work / 'cv'}", "cv.worst_cases=0"]
        + [f"hydra.run.dir={work / 'cv'}"],
        work,
    )
    model = work / "train" / "model"
    predict = [str(bin_ / "seg-predict"), "-i", str(unseen / "imagesTr"), "-q", "--save-probabilities"]
    run([*predict, "-o", str(work / "pred"), "-m", str(model)], work)
    run([*predict, "-o", str(work / "cvpred"), "-m", str(work / "cv" / "model")], work)
    run([str(bin_ / "seg-export"), str(model), "-o", str(work / "exported")], work)
    run([*predict, "-o", str(work / "ortpred"), "-m", str(work / "exported"), "--engine", "onnxruntime"], work)


def report(work: Path) -> None:
    # the values (comments and layout may change), the scratch folder's name left out
    plan = yaml.safe_load((work / "plan.yaml").read_text().replace(str(work), "<work>"))
    for k in FORECAST:  # the forecast is printed, not trained with: how it is said may change
        plan.get("planned", {}).pop(k, None)
    cv_summary = json.loads((work / "cv" / "cv_summary.json").read_text())
    rows = {
        "plan.yaml": digest(plan),
        "train metrics": metrics(work / "train" / "metrics.json"),
        "train masks": digest(mask_digest(work / "pred")),
        "kfold oof mean": digest(cv_summary.get("mean")),
        "kfold oof probabilities": digest({p.name: oof(p) for p in sorted(work.glob("cv/fold_*/validation/*.npz"))}),
        "kfold masks": digest(mask_digest(work / "cvpred")),
        "onnx masks": digest(mask_digest(work / "ortpred")),
    }
    for k, v in rows.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
