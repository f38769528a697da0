"""The k-fold runner behind ``seg-kfold``: ``kfold(cfg) -> summary``.

For each fold: train (:func:`seg.run.train.train` with ``data.fold=k``; it writes the fold's own bundle),
predict the fold's validation cases on their original grids with that bundle through the same batch
function as ``seg-predict`` (out-of-fold), copy the weights into the CV's bundle, and mark the fold done,
so an interrupted CV resumes where it stopped. Then evaluate all out-of-fold predictions, scan the
probability threshold, and write ``cv_summary.json``, ``results.csv``, ``report.md``, figures and
``model/model.yaml``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf, open_dict

from seg.config import UserError, to_plain
from seg.data.postprocess import Postprocessing
from seg.data.splits import dataset_splits
from seg.data.transforms import Preprocessing
from seg.eval.cv_report import evaluate_cv
from seg.inference.batch import BatchOptions, predict_cases
from seg.inference.bundle import BundleError, load_bundle, read_checkpoint, write_bundle_meta
from seg.inference.cases import InputCase
from seg.io import write_text
from seg.lit.progress import draw_combined
from seg.run.checks import validate_config
from seg.run.learned import LEARNED_NOTHING_DICE, learned_nothing, nothing_record
from seg.run.record import training_record
from seg.run.train import prepare_data, train, training_device

log = logging.getLogger("seg.kfold")


def make_cv_splits(spec, cfg, path: Path) -> list:
    """Load ``path`` if present (hand edits are kept), else the splits seg-train's ``data.fold`` makes too."""
    d = cfg.data
    group_regex = cfg.cv.get("group_regex") or d.get("group_regex")
    return dataset_splits(
        path,
        spec.cases,
        int(cfg.cv.folds),
        int(d.split_seed),
        d.get("stratify", True),
        d.get("n_strata", 3),
        group_regex,
    )


# what a fold's bundle records of its training: a finished fold must have trained with this run's values
RESUME_KEYS = tuple(f"data.{f.name}" for f in dataclasses.fields(Preprocessing)) + (
    "model.net",
    "data.patch_size",
    "data.previous_stage",
)


def check_resume(cfg, spec, splits: list, splits_path: Path, run_dir: Path) -> None:
    """A resumed k-fold run: the split must still cover the dataset (every case in a validation fold), and every
    finished fold must have trained with this run's pre-processing and network (its bundle goes under one
    model.yaml); else one line naming what differs and the way out."""
    covered = {c for fold in splits for c in fold["val"]}
    missing = [c.case_id for c in spec.cases if c.case_id not in covered]
    if missing:
        raise UserError(
            f"{splits_path}: {len(missing)} case(s) of the dataset in no validation fold ({', '.join(missing[:5])}): "
            "the split was made for other data; give a new cv.run_dir (or remove splits.json) to split again"
        )
    for k in finished_folds(run_dir):
        fold = run_dir / f"fold_{k}"
        old = OmegaConf.load(fold / "config.yaml") if (fold / "config.yaml").is_file() else None
        for key in RESUME_KEYS if old is not None else ():
            was, now = to_plain(OmegaConf.select(old, key)), to_plain(OmegaConf.select(cfg, key))
            if was != now:
                raise UserError(
                    f"{fold}: finished with {key}={was} but this run has {now}: its model would be bundled "
                    f"under other pre-processing; remove {fold} to train it again, or give a new cv.run_dir"
                )


def finished_folds(run_dir: Path) -> list[int]:
    """The folds with a ``fold_<k>/done.json``; a ``fold_0.bak`` copy or any other name is none of them."""
    return sorted(int(p.parent.name[5:]) for p in run_dir.glob("fold_*/done.json") if p.parent.name[5:].isdigit())


def fold_config(cfg, k: int, splits_path: Path, fold_dir: Path):
    fc = copy.deepcopy(cfg)
    OmegaConf.set_struct(fc, False)
    with open_dict(fc):
        fc.data.fold = k
        fc.data.num_folds = int(cfg.cv.folds)
        fc.data.group_regex = cfg.cv.get("group_regex") or cfg.data.get("group_regex")
        fc.data.splits_file = str(splits_path)
        fc.paths.output_dir = str(fold_dir)
        fc.check_data = False  # checked once for the whole CV
    return fc


def predict_validation(
    fold_dir: Path, result, save_probabilities: bool, device: str = "cpu", checkpoint: str = "final"
) -> list[str]:
    """Out-of-fold predictions of the fold's validation cases, with the fold's own bundle (its ``checkpoint``
    weights: the final ones by default; the best ones were chosen on these very cases), on ``device`` (the
    training device)."""
    bundle = load_bundle(result.model_bundle)
    dm = result.datamodule
    by_id = dm.spec.by_id()
    # a cascade's case gives its first stage's out-of-fold probabilities as one more file (not the chained
    # first stage, whose every fold but one trained on the case)
    files = {cid: list(c.images) + ([c.previous] if c.previous else []) for cid, c in by_id.items()}
    cases = [InputCase(cid, files[cid], None, f"{cid}.nii.gz") for cid in dm.val_cases]
    probs = "npz" if save_probabilities else "none"
    opts = BatchOptions(probabilities=probs, case_json=False, summary_csv=False, progress_log=True)
    log.info("%s: out-of-fold prediction of %d validation cases", fold_dir.name, len(cases))
    predictor = bundle.predictor(device=device, checkpoint=checkpoint)
    res = predict_cases(cases, predictor, fold_dir / "validation", opts, bundle.labels)
    if res.failures:
        raise RuntimeError(f"fold {fold_dir.name}: out-of-fold prediction failed for {res.failures}")
    return [r["case"] for r in res.written]


def run_fold(cfg, k: int, splits_path: Path, run_dir: Path) -> dict:
    fold_dir = run_dir / f"fold_{k}"
    done = fold_dir / "done.json"
    if done.exists():
        log.info("fold %d already finished (%s): skipped", k, done)
        return json.loads(done.read_text())
    t0 = time.time()
    fc = fold_config(cfg, k, splits_path, fold_dir)
    last = fold_dir / "checkpoints" / "last.ckpt"
    if last.is_file():  # a fold interrupted after an epoch (a kill, a lost node): continue it
        try:
            read_checkpoint(last)
            fc.ckpt_path = str(last)
            log.info("fold %d: resuming from %s", k, last)
        except BundleError as e:
            log.warning("fold %d: %s; training the fold from the start", k, e)
    result = train(fc, validated=True)  # the k-fold run checked the config once
    if result.model_bundle is None:
        raise UserError(
            f"{fold_dir}: fold {k} ended before its first epoch finished: no checkpoint to predict with "
            "(raise trainer.max_time or trainer.max_epochs)"
        )
    device = str(training_device(cfg))
    probs, checkpoint = bool(cfg.cv.get("save_probabilities", True)), str(cfg.cv.get("checkpoint") or "final")
    cases = predict_validation(fold_dir, result, probs, device, checkpoint)
    # the CV's bundle (model.yaml written at the end): the fold's weights, every ensemble member's
    shutil.copytree(result.model_bundle / f"fold_{k}", run_dir / "model" / f"fold_{k}", dirs_exist_ok=True)
    record = {
        "fold": k,
        "val_cases": cases,
        "checkpoint": str(result.checkpoint),
        "val/dice_best": result.metrics.get("val/dice_best"),
        "epochs": result.metrics.get("epochs"),
        "steps": result.metrics.get("global_step"),
        "seconds": round(time.time() - t0, 1),
    }
    write_text(done, json.dumps(record, indent=1))
    return record


def _draw_folds_progress(run_dir: Path, folds: list[int]) -> None:
    """``progress.png`` of the CV: every fold's curves in one figure (each fold has its own too)."""
    draw_combined({f"fold {k}": run_dir / f"fold_{k}" for k in folds}, run_dir / "progress.png", run_dir.name)


def closing_line(summary: dict, run_dir: Path) -> str:
    """The k-fold run's last line: fold-mean Dice per label with its spread over folds, and where it all is."""
    labels = summary.get("labels", {})
    parts = []
    for lab in [k for k in labels if k != "0"]:
        v = [f["mean"][lab]["Dice"] for f in summary.get("per_fold", {}).values() if lab in f.get("mean", {})]
        v = [x for x in v if x is not None and not math.isnan(x)]
        if v:
            parts.append(f"{labels[lab]} {np.mean(v):.4f} +- {np.std(v):.4f}")
    n = len(summary.get("per_fold", {}))
    return (
        f"fold-mean Dice over {n} folds (+- sd over folds): {', '.join(parts) or '-'}; "
        f"report {run_dir / 'report.md'}, bundle {run_dir / 'model'}"
    )


def kfold(cfg) -> dict:
    """Run (or resume) the cross-validation that ``cfg`` describes; returns the CV summary."""
    validate_config(cfg)
    run_dir = Path(cfg.cv.get("run_dir") or cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = prepare_data(cfg).spec
    splits_path = Path(cfg.cv.splits_file) if cfg.cv.get("splits_file") else run_dir / "splits.json"
    splits = make_cv_splits(spec, cfg, splits_path)
    check_resume(cfg, spec, splits, splits_path, run_dir)
    if len(splits) != int(cfg.cv.folds):
        log.warning("%s has %d folds; cv.folds=%d is ignored", splits_path, len(splits), cfg.cv.folds)
    fold_ids = list(cfg.cv.fold_ids) if cfg.cv.get("fold_ids") is not None else list(range(len(splits)))
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    records = []
    for i, k in enumerate(fold_ids):
        log.info(
            "=== fold %d/%d (fold id %d): %d training, %d validation cases -> %s",
            i + 1,
            len(fold_ids),
            k,
            len(splits[k]["train"]),
            len(splits[k]["val"]),
            run_dir / f"fold_{k}",
        )
        records.append(run_fold(cfg, int(k), splits_path, run_dir))
    finished = finished_folds(run_dir)
    n_oof = sum(len(splits[k]["val"]) for k in finished)
    log.info("evaluating %d out-of-fold cases of folds %s, then report.md and figures", n_oof, finished)
    steps = [json.loads((run_dir / f"fold_{k}" / "done.json").read_text()).get("steps") or 0 for k in finished]
    trained = training_record(cfg, steps)
    summary = evaluate_cv(run_dir, spec, finished, cfg.cv, trained)
    _draw_folds_progress(run_dir, finished)
    # every fold's bundle describes the same net, pre-processing and inferer: take the first's
    first = run_dir / f"fold_{finished[0]}" / "model"
    meta = load_bundle(first).meta
    if meta.previous_stage:  # a cascade: the chained first stage goes with the folds' weights
        shutil.copytree(first / meta.previous_stage, run_dir / "model" / meta.previous_stage, dirs_exist_ok=True)
    meta.folds, meta.threshold, meta.created = finished, summary.get("threshold"), ""
    checkpoint = str(cfg.cv.get("checkpoint") or "final")
    kept = ("weights", "precision", "labels_always")
    meta.extra = {k: v for k, v in meta.extra.items() if k in kept} | {"checkpoint": checkpoint}
    meta.postprocessing = Postprocessing.from_mapping((summary.get("postprocessing") or {}).get("rules"))
    meta.extra["cv"] = {"run": str(run_dir), "splits": str(splits_path)}
    meta.extra["trained"] = trained
    dice = fold_mean_dice(summary)
    if learned_nothing(dice):
        meta.extra["learned_nothing"] = nothing_record(dice, "fold-mean out-of-fold Dice")
        summary["learned_nothing"] = dice
    # a fold that learned nothing where the mean did (where the mean did not, the run says so as a whole)
    summary["folds_learned_nothing"] = [] if learned_nothing(dice) else dead_folds(summary, run_dir)
    write_bundle_meta(run_dir / "model", meta)
    summary["folds_run"] = records
    return summary


def _fold_dice(summary: dict) -> dict[str, list[float]]:
    """Each fold's out-of-fold Dice per foreground label (the labels it scored)."""
    labels = [k for k in summary.get("labels", {}) if k != "0"]
    out = {}
    for k, f in summary.get("per_fold", {}).items():
        v = [f["mean"][lab]["Dice"] for lab in labels if lab in f.get("mean", {})]
        out[k] = [x for x in v if x is not None and not math.isnan(x)]
    return out


def fold_mean_dice(summary: dict) -> float | None:
    """The mean over folds and foreground labels of the out-of-fold Dice (what the closing line prints)."""
    v = [x for values in _fold_dice(summary).values() for x in values]
    return float(np.mean(v)) if v else None


def dead_folds(summary: dict, run_dir: Path) -> list[int]:
    """The folds whose own out-of-fold Dice says they learned nothing while the fold mean does not (one fold of a
    short whole-scan run can stay all background): each said in a warning line, as their ensemble hides them."""
    dead = []
    for k, v in _fold_dice(summary).items():
        if v and learned_nothing(float(np.mean(v))):
            dead.append(int(k))
            log.warning(
                "fold %s learned nothing (its out-of-fold Dice %.4f < %s), though the fold mean did: the bundle "
                "averages it with the others; remove %s and run the same command with another seed= or a longer "
                "trainer.max_time",
                k,
                float(np.mean(v)),
                LEARNED_NOTHING_DICE,
                run_dir / f"fold_{k}",
            )
    return dead
