"""``seg-train``: train one model from a composed Hydra config (``conf/train.yaml``).

``train(cfg) -> metrics`` is the pure function; ``main`` is the thin Hydra wrapper.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path

from seg.cli.common import UserError, hydra_main
from seg.io import write_text

log = logging.getLogger("seg.train")


def build_model(cfg, spec):
    """Instantiate the LightningModule with in/out channels and label names from the dataset."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from seg.lit.module import to_plain

    net = to_plain(OmegaConf.to_container(cfg.model.net, resolve=True))
    net.pop("_target_", None)
    net.setdefault("in_channels", spec.in_channels)
    net.setdefault("out_channels", spec.out_channels)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.pop("net")
    return instantiate(model_cfg, net=net, label_names=spec.foreground_names, _convert_="partial")


def check_before_training(spec) -> None:
    from seg.data.check import check_dataset, errors

    problems = check_dataset(spec)
    for p in problems:
        if p.level == "warning":
            log.warning("%s: %s", p.path, p.message)
    bad = errors(problems)
    if bad:
        raise UserError("\n".join(str(p) for p in bad) + f"\n{len(bad)} dataset errors in {spec.root}: fix them or run seg-check-data")


def train(cfg, extra_callbacks: list | None = None) -> dict:
    """Train as ``cfg`` says; returns the run's metrics (also written to ``<run>/metrics.json``).

    ``extra_callbacks`` (Lightning callbacks) are added to the configured ones (benchmarks, tests).
    """
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    t0 = time.time()
    # expected on cases without foreground (negative patches only); not worth a line per batch
    warnings.filterwarnings("ignore", message="Num foregrounds 0")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    dm = instantiate(cfg.data, _convert_="partial")
    dm.prepare_data()
    spec = dm.spec
    if cfg.get("check_data", True):
        check_before_training(spec)
    model = build_model(cfg, spec)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    callbacks += list(extra_callbacks or [])
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if trainer.is_global_zero:
        write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    ckpt = cfg.get("ckpt_path")
    if ckpt and not Path(ckpt).is_file():
        raise UserError(f"{ckpt}: checkpoint to resume from does not exist")
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)

    ckpt_cb = trainer.checkpoint_callback  # the first ModelCheckpoint: best on val/dice
    last_path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    metrics.update(
        {
            "val/dice_best": float(model.dice_best),
            "best_checkpoint": str(ckpt_cb.best_model_path) if ckpt_cb and ckpt_cb.best_model_path else None,
            "last_checkpoint": str(last_path) if last_path.exists() else None,
            "epochs": int(trainer.current_epoch),
            "global_step": int(trainer.global_step),
            "train_cases": len(dm.train_cases),
            "val_cases": len(dm.val_cases),
            "seconds": round(time.time() - t0, 1),
            "output_dir": str(out),
        }
    )
    if trainer.is_global_zero:
        ckpt_best = metrics["best_checkpoint"] or metrics["last_checkpoint"]
        if ckpt_best and not cfg.trainer.get("fast_dev_run"):
            from seg.inference.bundle import export_run_bundle
            from seg.lit.module import to_plain

            # every run is deployable: seg-predict -m <run>/model
            export_run_bundle(out / "model", ckpt_best, model.hparams["net"], spec, dm.preprocessing,
                              to_plain(OmegaConf.to_container(cfg.model.inferer, resolve=True)), int(dm.fold))
            metrics["model_bundle"] = str(out / "model")
        write_text(out / "metrics.json", json.dumps(metrics, indent=2))
        log.info("run folder: %s", out)
        log.info("val/dice_best %.4f (checkpoint %s)", metrics["val/dice_best"], metrics["best_checkpoint"])
    return metrics


@hydra_main("train")
def main(cfg) -> None:
    train(cfg)


if __name__ == "__main__":
    sys.exit(main())
