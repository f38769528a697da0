"""What was trained, as a run's ``model.yaml`` (``extra.trained``) and a k-fold's ``report.md``
(``seg.eval.cv_report``) record it: seg's version, the plan (its ``task_name``), the network and its widths, the
budget, the steps the plan forecast and the steps each run made."""

from __future__ import annotations

from seg.config import to_plain


def training_record(cfg, steps: list[int]) -> dict:
    """The record of a run (or a k-fold: ``steps`` per fold, or per member)."""
    import seg

    net = to_plain(cfg.model.get("net") or {})
    planned = to_plain(cfg.get("planned") or {})
    members = (cfg.get("ensemble") or {}).get("members") or 1
    return {
        "seg_version": seg.__version__,
        "plan": str(cfg.get("task_name") or ""),
        "net": str(net.get("name") or net.get("_target_") or ""),
        "filters": net.get("filters"),
        "budget": str(cfg.trainer.get("max_time")) if cfg.trainer.get("max_time") else None,
        "members": int(members),
        "steps_planned": planned.get("steps_in_budget"),
        "steps_made": [int(s) for s in steps],
    }


def labels_in_every_case(spec, case_ids: list[str]) -> list[int]:
    """The foreground label ids that every one of these (training) cases holds: seg-predict warns when one of
    them is empty in a prediction (a different modality, a crop that missed the structure, a flipped axis)."""
    import nibabel as nib
    import numpy as np

    by_id, common = spec.by_id(), None
    for cid in case_ids:
        ids = set(np.unique(np.rint(np.asanyarray(nib.load(by_id[cid].label).dataobj))).astype(int).tolist())
        common = ids if common is None else common & ids
    return sorted(i for i in (common or set()) if i != 0)
