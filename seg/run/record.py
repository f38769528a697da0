"""What was trained, as a run's ``model.yaml`` (``extra.trained``) and a k-fold's ``report.md``
(``seg.eval.cv_report``) record it: seg's version, the plan (its ``task_name``), the network and its widths, the
budget, the steps the plan forecast and the steps each run made."""

from __future__ import annotations

from pathlib import Path

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


def record_in_bundle(bundle: str | Path, record: dict) -> None:
    """``model.yaml``'s ``extra.trained``."""
    from seg.inference.bundle import load_bundle, write_bundle_meta

    meta = load_bundle(bundle).meta
    meta.extra["trained"] = record
    write_bundle_meta(bundle, meta)
