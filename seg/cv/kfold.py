"""The k-fold runner behind ``seg-kfold``.

For each fold: train (``seg.cli.train.train`` with ``data.fold=k``), predict the fold's validation cases
on their original grids (out-of-fold), export the network's weights into the model bundle, and mark the
fold done, so an interrupted CV resumes where it stopped. Then evaluate all out-of-fold predictions,
scan the probability threshold, and write ``cv_summary.json``, ``results.csv``, ``report.md``,
figures and ``model/model.yaml``.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from pathlib import Path

import numpy as np

from seg.io import write_text

log = logging.getLogger("seg.kfold")


def label_volumes(spec) -> dict[str, float]:
    """Foreground volume (ml) of each case's label, for stratified splits."""
    import nibabel as nib

    out = {}
    for c in spec.cases:
        img = nib.load(c.label)
        out[c.case_id] = float(np.count_nonzero(np.asanyarray(img.dataobj)) * np.prod(img.header.get_zooms()[:3]) / 1000)
    return out


def make_cv_splits(spec, cv, path: Path) -> list:
    """Load ``path`` if present (hand edits are kept), else make grouped/stratified splits and save them."""
    from seg.data.splits import load_or_create_splits

    ids = [c.case_id for c in spec.cases]
    groups = None
    if cv.get("group_regex"):
        pat = re.compile(cv.group_regex)
        groups = {}
        for cid in ids:
            m = pat.search(cid)
            groups[cid] = m.group(1) if m and m.groups() else (m.group(0) if m else cid)
    strata = None
    if cv.get("stratify") and not path.exists():
        vols = label_volumes(spec)
        n = max(1, int(cv.get("n_strata", 3)))
        qs = np.quantile(list(vols.values()), np.linspace(0, 1, n + 1)[1:-1]) if n > 1 else []
        strata = {cid: int(np.searchsorted(qs, v, side="right")) for cid, v in vols.items()}
    return load_or_create_splits(path, ids, int(cv.folds), int(cv.seed), groups=groups, strata=strata)


def fold_config(cfg, k: int, splits_path: Path, fold_dir: Path):
    from omegaconf import OmegaConf, open_dict

    fc = copy.deepcopy(cfg)
    OmegaConf.set_struct(fc, False)
    with open_dict(fc):
        fc.data.fold = k
        fc.data.num_folds = int(cfg.cv.folds)
        fc.data.splits_file = str(splits_path)
        fc.paths.output_dir = str(fold_dir)
    return fc


def predict_validation(fold_dir: Path, ckpt: str, dm, cfg, save_probabilities: bool) -> list[str]:
    """Out-of-fold predictions of the fold's validation cases on their original grids."""
    from seg.inference.bundle import net_state_from_checkpoint
    from seg.inference.predictor import Predictor, save_mask
    from seg.nn import create_net

    state, net_cfg = net_state_from_checkpoint(ckpt)
    name = net_cfg.pop("name")
    net = create_net(name, **net_cfg)
    net.load_state_dict(state)
    spec = dm.spec
    pred = Predictor([net], spec.labels, spec.channel_names, dm.preprocessing, roi_size=cfg.model.inferer.roi_size,
                     overlap=float(cfg.model.inferer.get("overlap", 0.5)), sw_batch_size=int(cfg.model.inferer.get("sw_batch_size", 2)))
    out_dir = fold_dir / "validation"
    by_id = spec.by_id()
    written = []
    for cid in dm.val_cases:
        case = by_id[cid]
        p = pred.predict(case.images if len(case.images) > 1 else case.images[0])
        save_mask(p.labels, p.reference, out_dir / f"{cid}.nii.gz")
        if save_probabilities and p.probabilities.shape[0] == 2:
            np.savez_compressed(out_dir / f"{cid}_prob.npz", prob=p.probabilities[1].numpy().astype(np.float16))
        written.append(cid)
    return written


def run_fold(cfg, k: int, splits_path: Path, run_dir: Path) -> dict:
    from seg.cli.train import train
    from seg.inference.bundle import net_state_from_checkpoint, save_weights

    fold_dir = run_dir / f"fold_{k}"
    done = fold_dir / "done.json"
    if done.exists():
        log.info("fold %d already finished (%s): skipped", k, done)
        return json.loads(done.read_text())
    t0 = time.time()
    fc = fold_config(cfg, k, splits_path, fold_dir)
    from hydra.utils import instantiate

    metrics = train(fc)
    ckpt = metrics.get("best_checkpoint") or metrics.get("last_checkpoint")
    dm = instantiate(fc.data, _convert_="partial")
    dm.train_cases, dm.val_cases = dm.split()
    cases = predict_validation(fold_dir, ckpt, dm, fc, bool(cfg.cv.get("save_probabilities", True)))
    state, _ = net_state_from_checkpoint(ckpt)
    save_weights(state, run_dir / "model" / f"fold_{k}" / "weights.pt")  # the CV's bundle (model.yaml written at the end)
    record = {"fold": k, "val_cases": cases, "checkpoint": ckpt, "val/dice_best": metrics.get("val/dice_best"),
              "epochs": metrics.get("epochs"), "seconds": round(time.time() - t0, 1)}
    write_text(done, json.dumps(record, indent=1))
    return record


def kfold(cfg) -> dict:
    """Run (or resume) the cross-validation that ``cfg`` describes; returns the CV summary."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from seg.cli.train import build_model, check_before_training
    from seg.cv.report import evaluate_cv
    from seg.inference.bundle import write_bundle_meta
    from seg.lit.module import to_plain

    run_dir = Path(cfg.cv.get("run_dir") or cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dm = instantiate(cfg.data, _convert_="partial")
    dm.prepare_data()
    spec = dm.spec
    if cfg.get("check_data", True):
        check_before_training(spec)
    splits_path = Path(cfg.cv.splits_file) if cfg.cv.get("splits_file") else run_dir / "splits.json"
    splits = make_cv_splits(spec, cfg.cv, splits_path)
    if len(splits) != int(cfg.cv.folds):
        log.warning("%s has %d folds; cv.folds=%d is ignored", splits_path, len(splits), cfg.cv.folds)
    fold_ids = list(cfg.cv.fold_ids) if cfg.cv.get("fold_ids") is not None else list(range(len(splits)))
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    records = [run_fold(cfg, int(k), splits_path, run_dir) for k in fold_ids]
    finished = sorted(int(p.parent.name.split("_")[1]) for p in run_dir.glob("fold_*/done.json"))
    summary = evaluate_cv(run_dir, spec, finished, cfg.cv)
    model = build_model(cfg, spec)  # for the net's {name, kwargs} with channels from the dataset
    write_bundle_meta(
        run_dir / "model", model.hparams["net"], spec.labels, spec.channel_names, dm.preprocessing,
        {"roi_size": to_plain(cfg.model.inferer.roi_size), "overlap": float(cfg.model.inferer.get("overlap", 0.5)),
         "sw_batch_size": int(cfg.model.inferer.get("sw_batch_size", 2))},
        finished, summary.get("threshold"), {"cv": {"run": str(run_dir), "splits": str(splits_path)}},
    )
    summary["folds_run"] = records
    return summary
