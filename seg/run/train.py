"""The training runner: ``train(cfg) -> TrainResult``, behind ``seg-train`` and every k-fold fold.

It composes nothing itself: ``cfg`` is a composed ``conf/train.yaml``. The result carries the metrics and
the objects a caller needs (the LightningModule, the datamodule with its split, the run's paths), so no
caller rebuilds them.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from seg.config import Precision, UserError, as_max_time, parse_duration, to_plain
from seg.data.check import check_dataset, errors
from seg.errors import ExitCode, SegError, Signals, one_line
from seg.inference.bundle import BundleError, bundle_members, export_run_bundle, read_checkpoint
from seg.io import FolderLock, cache_root, check_writable, write_text
from seg.lit.callbacks import Heartbeat, StopOnSignal
from seg.lit.module import ensemble_validation
from seg.lit.progress import draw_combined
from seg.nn.inferer import InfererSpec
from seg.nn.utils import cuda_hygiene
from seg.run.checks import validate_config
from seg.run.learned import learned_nothing, nothing_record
from seg.run.record import labels_in_every_case, training_record

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
    members: list = field(default_factory=list)  # an ensemble's members (TrainResult each); [] for one net

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint the bundle was made from: the best one, else the last."""
        return self.best_checkpoint or self.last_checkpoint


def net_spec(net_cfg) -> dict:
    """``cfg.model.net`` -> the plain ``{name, **kwargs}`` a checkpoint stores.

    The YAML's ``_target_: seg.nn.create_net`` is what lets a plain script build the net with Hydra's
    ``instantiate(cfg.model.net)``; the module and the checkpoint take the spec without it.
    """
    net = to_plain(OmegaConf.to_container(net_cfg, resolve=True) if OmegaConf.is_config(net_cfg) else net_cfg)
    net.pop("_target_", None)
    return net


def build_module(cfg, dm):
    """The LightningModule for ``cfg.model``: channels and label names from the dataset, the inferer spec
    resolved for the data's mode (the patch size in patch mode)."""
    spec = dm.spec
    net = net_spec(cfg.model.net)
    net.setdefault("in_channels", spec.in_channels)
    net.setdefault("out_channels", spec.out_channels)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.pop("net")
    inferer = InfererSpec.from_mapping(model_cfg.pop("inferer", None)).for_data(dm.mode, dm.patch_size)
    try:
        return instantiate(model_cfg, net=net, label_names=spec.foreground_names, inferer=inferer, _convert_="partial")
    except (InstantiationException, TypeError, ValueError, KeyError) as e:  # a config the net cannot be built from
        cause = e.__cause__ or e
        if isinstance(cause, SegError):
            raise cause from None
        kw = {k: v for k, v in net.items() if k not in ("in_channels", "out_channels")}
        raise UserError(f"model.net: {net.get('name')!r} cannot be built from {kw} ({one_line(cause)})") from None


def check_before_training(spec) -> None:
    """Every dataset error as one line each; warnings are logged."""
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
    dm = instantiate(cfg.data, _convert_="partial")
    dm.prepare_data()
    if cfg.get("check_data", True):
        check_before_training(dm.spec)
    return dm


def _experiment(cfg) -> str | None:
    """The experiment (or plan) the command line chose, as Hydra recorded it; None without one (or outside a
    Hydra run: then ``task_name``, which an experiment names after itself, tells)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get("experiment")
    except ValueError:  # composed by hand (tests, scripts)
        return None if cfg.get("task_name") in ("train", "kfold") else cfg.get("task_name")


def warn_without_plan(cfg) -> None:
    """Own data trained on the generic defaults (no experiment, no plan): say once that seg-plan fits them."""
    syn = cfg.data.get("synthetic") or {}
    own = not syn or (syn.get("folder") and Path(syn["folder"]).resolve() != Path(cfg.data.root).resolve())
    if cfg.get("planned") is None and _experiment(cfg) is None and own:
        log.warning(
            "%s is trained with the generic defaults (no plan, no experiment): run `seg-plan %s` and "
            "`seg-train plan=PLAN.yaml` for a patch, width and schedule fitted to this data and budget",
            cfg.data.root,
            cfg.data.root,
        )


NOISE = (  # Lightning's start-up banner and tips: the run's own lines say what matters (device, precision, seed)
    "Tip: For seamless",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "Seed set to",
    "LOCAL_RANK:",
    "You are using a CUDA device",
)


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(NOISE) and "Tip: For seamless" not in record.getMessage()


def _quiet_lightning() -> None:
    """Drop Lightning's banner (GPU/TPU/HPU availability, the seed, advertising tips) from the console and
    the log; its warnings and errors stay."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.seed", "lightning.fabric"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _Quiet) for f in lg.filters):
            lg.addFilter(_Quiet())


def train(cfg, extra_callbacks: list | None = None, validated: bool = False) -> TrainResult:
    """Train as ``cfg`` says; writes ``config.yaml``, checkpoints, ``metrics.json`` and ``model/`` to the run folder.

    ``ensemble.members`` > 1 trains that many networks one after the other on the same training cases (seeds
    ``seed``, ``seed + 1``, ...; each ``trainer.max_time`` long, in ``member_<m>/``), scores their mean softmax
    on the validation cases and bundles them all (see :func:`train_ensemble`).
    ``extra_callbacks`` (Lightning callbacks) are added to the configured ones (benchmarks, tests).
    ``validated``: the caller checked ``cfg`` with :func:`~seg.run.checks.validate_config` already (k-fold
    checks once for all its folds).
    """
    if not validated:
        validate_config(cfg)
    members = (cfg.get("ensemble") or {}).get("members")
    members = 1 if members is None else int(members)
    if members < 1:
        raise UserError(f"ensemble.members={members}: expected 1 or more")
    check_writable(cfg.paths.output_dir, "run folder (paths.output_dir)")
    if str(cfg.data.get("cache") or "") in ("disk", "persistent"):
        check_writable(cfg.data.get("cache_dir") or cache_root() / "preprocessed", "disk cache (data.cache_dir)")
    with run_folder_lock(Path(cfg.paths.output_dir)):
        try:
            if members > 1:
                return train_ensemble(cfg, members, extra_callbacks)
            return train_one(cfg, extra_callbacks)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
            kept = f"{last} kept from the last finished epoch" if last.is_file() else "no epoch was kept"
            raise UserError(
                f"{e.filename or cfg.paths.output_dir}: the disk is full ({e.strerror}) while training; {kept}: "
                "free space and run again with ckpt_path= that checkpoint"
            ) from None


def run_folder_lock(out: Path):
    """The run folder held by one training (a second seg-train into it stops at once, exit 2, instead of both
    writing one folder); DDP's other ranks (RANK, LOCAL_RANK or SLURM_PROCID not 0) train in their rank 0's."""
    import contextlib
    import os

    ranks = [os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID")]
    if any(r not in (None, "", "0") for r in ranks):
        return contextlib.nullcontext()
    return FolderLock(out, "seg-train")


def member_config(cfg, m: int, out: Path):
    """Member ``m``'s config: seed + m, its own folder, the run's split file, one net; the dataset is checked
    once, by member 0."""
    mc = copy.deepcopy(cfg)
    OmegaConf.set_struct(mc, False)
    with open_dict(mc):
        mc.data.splits_file = str(cfg.data.splits_file)  # resolved against the run folder, not the member's
        mc.seed = (cfg.seed or 0) + m
        mc.check_data = bool(cfg.get("check_data", True)) and m == 0
        mc.paths.output_dir = str(out / f"member_{m}")
        mc.ensemble.members = 1
        mc.ckpt_path = None
    return mc


def finished_run(cfg, last: Path) -> TrainResult:
    """A run that ended before (its ``metrics.json`` written): data and module rebuilt, its last weights loaded."""
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    dm = prepare_data(cfg)
    dm.setup("fit")
    model = build_module(cfg, dm)
    model.net.load_state_dict(read_checkpoint(last)[0])
    best = Path(metrics["best_checkpoint"]) if metrics.get("best_checkpoint") else None
    bundle = Path(metrics["model_bundle"]) if metrics.get("model_bundle") else None
    return TrainResult(metrics, model, dm, out, best, last, bundle)


def train_member(cfg, m: int, members: int, out: Path, extra_callbacks: list | None) -> TrainResult:
    """Member ``m`` of an ensemble: reused when it finished, resumed from its ``last.ckpt`` when it was
    interrupted after an epoch, else trained."""
    mc = member_config(cfg, m, out)
    mdir = Path(mc.paths.output_dir)
    last = mdir / "checkpoints" / "last.ckpt"
    if (mdir / "metrics.json").is_file() and last.is_file():
        log.info("ensemble member %d/%d already trained (%s): reused", m + 1, members, mdir)
        return finished_run(mc, last)
    if last.is_file():
        log.info("ensemble member %d/%d: resuming from %s", m + 1, members, last)
        mc.ckpt_path = str(last)
    log.info("=== ensemble member %d/%d (seed %d) -> %s", m + 1, members, mc.seed, mdir)
    return train_one(mc, extra_callbacks)


def train_ensemble(cfg, members: int, extra_callbacks: list | None = None) -> TrainResult:
    """Train ``members`` networks on the fold's training cases and report and bundle them as one model.

    Why: on the hippocampus cases one planned U-Net gained nothing from more than ~20 minutes (60 minutes of
    one wider net: 0.8914 against 0.8945 +- 0.0020 at 20), so a larger budget buys members instead. Each
    member is an ordinary run in ``member_<m>/`` (its own checkpoints, metrics.json, progress.png); a member
    that finished (``metrics.json``) is reused and one interrupted after an epoch resumes from its
    ``last.ckpt``, so a killed ensemble continues. ``metrics.json`` at the top: ``val/dice`` and per label of
    the members' mean softmax with their final weights (as a single run's final validation), ``val/dice_best``
    of the bundled weights (each member's best checkpoint), and every member's own figures.
    """
    t0 = time.time()
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    results = [train_member(cfg, m, members, out, extra_callbacks) for m in range(members)]
    seeds = [(cfg.seed or 0) + m for m in range(members)]
    draw_combined({f"member {m}": r.output_dir for m, r in enumerate(results)}, out / "progress.png", out.name)
    final, bundled = _score_members(cfg, results)
    metrics = _ensemble_metrics(final, bundled, results, seeds, out, t0)
    bundle = None
    if all(r.model_bundle for r in results):
        fold = int(results[0].datamodule.fold)
        bundle = bundle_members(out / "model", fold, [r.model_bundle for r in results], seeds)
        metrics["model_bundle"] = str(bundle)
    write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    per_label = ", ".join(f"{k[len('val/dice_') :]} {v:.4f}" for k, v in final.items() if k.startswith("val/dice_"))
    member_line = ", ".join(f"{r.metrics.get('val/dice', float('nan')):.4f}" for r in results)
    log.info(
        "ensemble of %d: val/dice %.4f (%s); members %s; bundled weights %.4f",
        members,
        final["val/dice"],
        per_label,
        member_line,
        bundled["val/dice"],
    )
    log.info("run folder: %s", out)
    first = results[0]
    return TrainResult(
        metrics, first.module, first.datamodule, out, first.best_checkpoint, first.last_checkpoint, bundle, results
    )


def _score_members(cfg, results: list[TrainResult]) -> tuple[dict, dict]:
    """Validation of the members' mean softmax: with their final weights, and with the weights bundled."""
    first = results[0]
    bf16 = Precision.parse(cfg.trainer.get("precision") or "fp32") == Precision.BF16
    loader = first.datamodule.val_dataloader()
    device = training_device(cfg)
    # as Lightning validates: one case in a debug run, a plan's limit_val_batches (a number of cases) otherwise
    planned = cfg.trainer.get("limit_val_batches")
    limit = 1 if cfg.trainer.get("fast_dev_run") else planned if isinstance(planned, int) and planned > 0 else 0
    n = min(len(first.datamodule.val_cases), limit or len(first.datamodule.val_cases))
    log.info("ensemble of %d: validating the mean softmax on %d cases", len(results), n)
    final = ensemble_validation([r.module for r in results], loader, bf16, device, limit)
    best_modules = []
    for r in results:
        mod = copy.deepcopy(r.module)
        if r.checkpoint:
            mod.net.load_state_dict(read_checkpoint(r.checkpoint)[0])
        best_modules.append(mod)
    return final, ensemble_validation(best_modules, loader, bf16, device, limit)


def _ensemble_metrics(final: dict, bundled: dict, results: list, seeds: list, out: Path, t0: float) -> dict:
    first = results[0]
    member_metrics = [
        {k: r.metrics.get(k) for k in ("val/dice", "val/dice_best", "epochs", "global_step", "seconds")}
        | {"seed": seed, "output_dir": str(r.output_dir)}
        for seed, r in zip(seeds, results)
    ]
    return {
        **final,
        "val/dice_best": bundled["val/dice"],
        "ensemble": {"members": len(results), "bundled_weights": bundled, "member_metrics": member_metrics},
        "best_checkpoint": str(first.best_checkpoint) if first.best_checkpoint else None,
        "last_checkpoint": str(first.last_checkpoint) if first.last_checkpoint else None,
        "epochs": sum(int(r.metrics.get("epochs", 0)) for r in results),
        "global_step": sum(int(r.metrics.get("global_step", 0)) for r in results),
        "train_cases": first.metrics.get("train_cases"),
        "val_cases": first.metrics.get("val_cases"),
        "seconds": round(time.time() - t0, 1),
        "output_dir": str(out),
    }


def _check_resume(ckpt: str | None) -> None:
    """A checkpoint to resume from that is missing, truncated or foreign: one line here, not a traceback in
    Lightning."""
    if not ckpt:
        return
    if not Path(ckpt).is_file():
        raise UserError(f"{ckpt}: checkpoint to resume from does not exist")
    try:
        read_checkpoint(ckpt)
    except BundleError as e:
        raise UserError(str(e)) from None


def trainer_values(trainer_cfg) -> dict:
    """seg's vocabulary in ``trainer.*`` translated to Lightning's: ``accelerator`` cpu|cuda|auto (Lightning's gpu
    too), ``precision`` fp32|bf16 (or Lightning's own spellings), ``max_time`` as 20m, 1h30m, 90s or DD:HH:MM:SS
    (see :func:`seg.config.parse_duration`)."""
    out = {}
    if str(trainer_cfg.get("accelerator", "")).lower() == "cuda":  # seg's device name for Lightning's "gpu"
        out["accelerator"] = "gpu"
    if trainer_cfg.get("precision") is not None:
        out["precision"] = Precision.parse(trainer_cfg.precision, "trainer.precision").lightning
    if trainer_cfg.get("max_time") is not None:
        out["max_time"] = as_max_time(parse_duration(trainer_cfg.max_time, "trainer.max_time"))
    return out


def training_device(cfg) -> torch.device:
    """Where ``cfg.trainer`` trains: CUDA for gpu/cuda/auto when a GPU is present, else the CPU."""
    acc = str(cfg.trainer.get("accelerator", "auto")).lower()
    return torch.device("cuda" if acc in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu")


def _trainer(cfg, extra_callbacks: list | None) -> pl.Trainer:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    callbacks += [*list(extra_callbacks or []), StopOnSignal()]
    kw = trainer_values(cfg.trainer)
    if not sys.stderr.isatty():  # a log, not a screen: heartbeat lines instead of progress-bar frames
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.ProgressBar)] + [Heartbeat()]
        kw["enable_progress_bar"] = False
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **kw)


def train_one(cfg, extra_callbacks: list | None = None) -> TrainResult:
    """One network: the run ``train`` makes when ``ensemble.members`` is 1."""
    t0 = time.time()
    # expected on cases without foreground (negative patches only); not worth a line per batch
    warnings.filterwarnings("ignore", message="Num foregrounds 0")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # Lightning's advice when an epoch has fewer batches than log_every_n_steps (small data): not the user's concern
    warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
    _quiet_lightning()
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    dm = prepare_data(cfg)
    warn_without_plan(cfg)
    model = build_module(cfg, dm)
    trainer = _trainer(cfg, list(extra_callbacks or []))
    cuda_hygiene(trainer.strategy.root_device, fixed_shapes=dm.mode == "patch")
    if trainer.is_global_zero:
        write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    _check_resume(cfg.get("ckpt_path"))
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path") or None)
    except SystemExit:
        # Lightning's answers to Ctrl-C (a graceful shutdown, then sys.exit(1)) and to a SIGTERM it sees before
        # our callback does (at an epoch's or a validation's end: SIGTERMException, a SystemExit with no code,
        # which would exit 0 without metrics)
        stop = next(c for c in trainer.callbacks if isinstance(c, StopOnSignal))
        if stop.keyboard:
            raise StopOnSignal.interrupted(trainer, ExitCode.INTERRUPTED, "interrupted (Ctrl-C)") from None
        if trainer.received_sigterm or Signals.received is not None:
            Signals.deferred = False
            raise StopOnSignal.interrupted(trainer, ExitCode.TERMINATED, "terminated (SIGTERM)") from None
        raise
    return _finish(cfg, trainer, model, dm, out, t0)


def _finish(cfg, trainer: pl.Trainer, model, dm, out: Path, t0: float) -> TrainResult:
    """After ``fit``: metrics.json and the run's model bundle (every run is deployable: seg-predict -m RUN/model)."""
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
        if (best or last) and not cfg.trainer.get("fast_dev_run"):
            state = {k: v.detach().cpu() for k, v in model.net.state_dict().items()}  # the final weights
            records = {
                "trained": training_record(cfg, [int(trainer.global_step)]),
                "labels_always": labels_in_every_case(dm.spec, list(dm.train_cases)),
            }
            if learned_nothing(metrics["val/dice_best"]):
                records["learned_nothing"] = nothing_record(metrics["val/dice_best"], "best validation Dice")
                metrics["learned_nothing"] = True
            bundle = export_run_bundle(
                out / "model",
                state,
                best,
                model.hparams,
                dm.spec,
                dm.preprocessing,
                int(dm.fold),
                dm.augment.mirror_axes,
                Precision.parse(cfg.trainer.get("precision") or "fp32").value,
                records,
                Path(dm.previous_stage).expanduser().resolve() / "model" if dm.previous_stage else None,
            ).parent
            metrics["model_bundle"] = str(bundle)
        write_text(out / "metrics.json", json.dumps(metrics, indent=2))
        log.info("run folder: %s", out)
        log.info("val/dice_best %.4f (checkpoint %s)", metrics["val/dice_best"], metrics["best_checkpoint"])
    return TrainResult(metrics, model, dm, out, best, last, bundle)
