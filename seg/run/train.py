"""The training runner: ``train(cfg) -> TrainResult``, behind ``seg-train`` and every k-fold fold.

It composes nothing itself: ``cfg`` is a composed ``conf/train.yaml``. The result carries the metrics and
the objects a caller needs (the LightningModule, the datamodule with its split, the run's paths), so no
caller rebuilds them.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from seg.config import UserError, to_plain
from seg.io import write_text

log = logging.getLogger("seg.train")


@dataclass
class TrainResult:
    metrics: dict  # what metrics.json holds
    module: object  # the trained seg.lit.SegModule (its last weights)
    datamodule: object  # the SegDataModule, set up: spec, train_cases, val_cases, preprocessing
    output_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    model_bundle: Path | None

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint the bundle was made from: the best one, else the last."""
        return self.best_checkpoint or self.last_checkpoint


def net_spec(net_cfg) -> dict:
    """``cfg.model.net`` -> the plain ``{name, **kwargs}`` a checkpoint stores.

    The YAML's ``_target_: seg.nn.create_net`` is what lets a plain script build the net with Hydra's
    ``instantiate(cfg.model.net)``; the module and the checkpoint take the spec without it.
    """
    from omegaconf import OmegaConf

    net = to_plain(OmegaConf.to_container(net_cfg, resolve=True) if OmegaConf.is_config(net_cfg) else net_cfg)
    net.pop("_target_", None)
    return net


def build_module(cfg, dm):
    """The LightningModule for ``cfg.model``: channels and label names from the dataset, the inferer spec
    resolved for the data's mode (the patch size in patch mode)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from seg.nn.inferer import InfererSpec

    spec = dm.spec
    net = net_spec(cfg.model.net)
    net.setdefault("in_channels", spec.in_channels)
    net.setdefault("out_channels", spec.out_channels)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.pop("net")
    inferer = InfererSpec.from_mapping(model_cfg.pop("inferer", None)).for_preprocessing(dm.preprocessing)
    return instantiate(model_cfg, net=net, label_names=spec.foreground_names, inferer=inferer, _convert_="partial")


def check_before_training(spec) -> None:
    """Every dataset error as one line each; warnings are logged."""
    from seg.data.check import check_dataset, errors

    problems = check_dataset(spec)
    for p in problems:
        if p.level == "warning":
            log.warning("%s: %s", p.path, p.message)
    bad = errors(problems)
    if bad:
        raise UserError(
            "\n".join(str(p) for p in bad)
            + f"\n{len(bad)} dataset errors in {spec.root}: fix them or run seg-check-data"
        )


def prepare_data(cfg):
    """The datamodule of ``cfg.data``, its data generated if it asks for that, checked if ``check_data``."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.data, _convert_="partial")
    dm.prepare_data()
    if cfg.get("check_data", True):
        check_before_training(dm.spec)
    return dm


def warn_without_plan(cfg) -> None:
    """Own data trained on the generic defaults (no experiment, no plan): say once that seg-plan fits them."""
    syn = cfg.data.get("synthetic") or {}
    own = not syn or (syn.get("folder") and Path(syn["folder"]).resolve() != Path(cfg.data.root).resolve())
    if cfg.get("planned") is None and cfg.get("task_name") in ("train", "kfold") and own:
        log.warning(
            "%s is trained with the generic defaults (no plan, no experiment): run `seg-plan %s` and "
            "`seg-train plan=PLAN.yaml` for a patch, width and schedule fitted to this data and budget",
            cfg.data.root,
            cfg.data.root,
        )


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless" not in record.getMessage()


def _quiet_lightning() -> None:
    """Drop Lightning's advertising tips (litlogger, litmodels) from the log; its other lines stay."""
    lg = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _NoAdverts) for f in lg.filters):
        lg.addFilter(_NoAdverts())


def train(cfg, extra_callbacks: list | None = None) -> TrainResult:
    """Train as ``cfg`` says; writes ``config.yaml``, checkpoints, ``metrics.json`` and ``model/`` to the run folder.

    ``extra_callbacks`` (Lightning callbacks) are added to the configured ones (benchmarks, tests).
    """
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from seg.run.checks import validate_config

    validate_config(cfg)
    t0 = time.time()
    # expected on cases without foreground (negative patches only); not worth a line per batch
    warnings.filterwarnings("ignore", message="Num foregrounds 0")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    _quiet_lightning()
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    dm = prepare_data(cfg)
    spec = dm.spec
    warn_without_plan(cfg)
    model = build_module(cfg, dm)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    callbacks += list(extra_callbacks or [])
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if trainer.is_global_zero:
        write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    ckpt = cfg.get("ckpt_path")
    if ckpt:
        from seg.inference.bundle import BundleError, read_checkpoint

        if not Path(ckpt).is_file():
            raise UserError(f"{ckpt}: checkpoint to resume from does not exist")
        try:
            read_checkpoint(ckpt)  # a truncated or foreign file is one line here, not a traceback in Lightning
        except BundleError as e:
            raise UserError(str(e)) from None
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)

    ckpt_cb = trainer.checkpoint_callback  # the first ModelCheckpoint: best on val/dice
    best = Path(ckpt_cb.best_model_path) if ckpt_cb and ckpt_cb.best_model_path else None
    last = out / "checkpoints" / "last.ckpt"
    last = last if last.exists() else None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    metrics.update(
        {
            "val/dice_best": float(model.dice_best),
            "best_checkpoint": str(best) if best else None,
            "last_checkpoint": str(last) if last else None,
            "epochs": int(trainer.current_epoch),
            "global_step": int(trainer.global_step),
            "train_cases": len(dm.train_cases),
            "val_cases": len(dm.val_cases),
            "seconds": round(time.time() - t0, 1),
            "output_dir": str(out),
        }
    )
    bundle = None
    if trainer.is_global_zero:
        source = best or last
        if source and not cfg.trainer.get("fast_dev_run"):
            from seg.inference.bundle import export_run_bundle

            # every run is deployable: seg-predict -m <run>/model
            bundle = export_run_bundle(out / "model", source, spec, dm.preprocessing, int(dm.fold)).parent
            metrics["model_bundle"] = str(bundle)
        write_text(out / "metrics.json", json.dumps(metrics, indent=2))
        log.info("run folder: %s", out)
        log.info("val/dice_best %.4f (checkpoint %s)", metrics["val/dice_best"], metrics["best_checkpoint"])
    return TrainResult(metrics, model, dm, out, best, last, bundle)
