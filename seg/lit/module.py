"""The LightningModule: a registry network, a MONAI loss, optimiser and scheduler from config."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

from seg.config import to_plain
from seg.lit.losses import SegLoss
from seg.lit.schedules import ProgressLR
from seg.nn import create_net
from seg.nn.inferer import InfererSpec, class_index, first_output, sliding_window

log = logging.getLogger(__name__)


def metric_key(name: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def val_dice_per_label(metrics, label_names) -> dict[str, float]:
    """Label name -> its logged validation Dice, for the labels Lightning's ``callback_metrics`` holds."""
    keys = [(n, f"val/dice_{metric_key(n)}") for n in label_names]
    return {n: float(metrics[k]) for n, k in keys if k in metrics}


def dice_terms(scores: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per foreground class, the sum of the cases' Dice of the argmax mask and the number of cases counted.

    ``scores`` ``[B, K, ...]`` (logits or probabilities), ``y`` ``[B, 1, ...]`` label ids. A case whose
    reference lacks the class is not counted for it (MONAI's ``ignore_empty``): the mean over cases is
    ``sum / count``, as validation logs it.
    """
    k = scores.shape[1]
    pred = one_hot(class_index(scores, 1, keepdim=True), k)
    dice = compute_dice(pred, one_hot(y.long(), k), include_background=False, ignore_empty=True)  # [B, K-1]
    valid = ~torch.isnan(dice)
    return torch.where(valid, dice, 0).sum(0).double(), valid.sum(0).double()


def per_label_means(total: torch.Tensor, count: torch.Tensor, label_names: Sequence[str]) -> dict[str, float]:
    """``val/dice`` (mean over the classes some case has) and ``val/dice_<label>`` from :func:`dice_terms` sums."""
    per_class = torch.where(count > 0, total / count.clamp(min=1), torch.nan)
    out = {f"val/dice_{metric_key(n)}": float(v) for n, v in zip(label_names, per_class)}
    out["val/dice"] = float(torch.nanmean(per_class)) if bool((count > 0).any()) else 0.0
    return out


@torch.no_grad()
def ensemble_validation(
    modules: Sequence[SegModule], loader, bf16: bool = False, device: torch.device | str = "cpu", limit: int = 0
) -> dict[str, float]:
    """Validation Dice of the members' mean softmax, exactly as one module's validation scores its logits
    (same loader, inferer and argmax), so an ensemble's figure reads beside a single run's. It runs on
    ``device``, the training device (Lightning hands the modules back on the CPU after ``fit``); ``limit``: at
    most that many batches (0: all), as Lightning's ``fast_dev_run`` validates one."""
    device = torch.device(device)
    names = modules[0].label_names
    total = torch.zeros(len(names), dtype=torch.float64)
    count = torch.zeros(len(names), dtype=torch.float64)
    for m in modules:
        m.to(device).eval()
    for i, batch in enumerate(loader):
        if limit and i >= limit:
            break
        x, y = batch["image"].to(device), batch["label"].to(device)
        y = y.as_tensor() if hasattr(y, "as_tensor") else y
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            probs = sum(torch.softmax(m.predict_logits(x).float(), 1) for m in modules) / len(modules)
        t, c = dice_terms(probs, y)
        total += t.cpu()
        count += c.cpu()
    return per_label_means(total, count, names)


class SegModule(pl.LightningModule):
    """Trains a segmentation network.

    Args:
        net: ``{name, **kwargs}`` of a registered network (stored as such in checkpoints); no ``_target_``.
        label_names: foreground label names, in class order (class 1 first).
        loss: ``{name, include_background, batch, ...}`` for :func:`seg.lit.losses.build_loss`.
        optimizer: a partial optimiser (Hydra ``_partial_: true``) taking the parameters.
        scheduler: a partial LR scheduler taking the optimiser, or None.
        deep_supervision_weights: "equal", "exp" or a list, for nets that return a list in training.
        deep_supervision_label_mode: how labels reach coarse heads: "nearest" or "area" (soft one-hot).
        inferer: the :class:`~seg.nn.inferer.InfererSpec` (or its mapping) validation slides; the same spec
            goes into the model bundle, so seg-predict and out-of-fold prediction use it too.
        compile: wrap the network's forward in ``torch.compile``.
        channels_last: use the channels-last memory format (faster 3D convs on CPU).
    """

    def __init__(
        self,
        net: Mapping,
        label_names: Sequence[str] = ("foreground",),
        loss: Mapping | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        deep_supervision_weights: str | Sequence[float] = "equal",
        deep_supervision_label_mode: str = "nearest",
        inferer: InfererSpec | Mapping | None = None,
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        net = to_plain(net)
        if "_target_" in net:
            raise ValueError("SegModule: net is the plain {name, kwargs} of a registered network, without _target_")
        inferer = inferer if isinstance(inferer, InfererSpec) else InfererSpec.from_mapping(to_plain(inferer or {}))
        self.save_hyperparameters(
            {
                "net": net,
                "label_names": list(label_names),
                "loss": to_plain(loss or {}),
                "deep_supervision_weights": to_plain(deep_supervision_weights),
                "deep_supervision_label_mode": deep_supervision_label_mode,
                "inferer": inferer.as_dict(),
                "compile": compile,
                "channels_last": channels_last,
            }
        )
        kwargs = dict(net)
        self.net = create_net(kwargs.pop("name"), **kwargs)
        self.loss_fn = SegLoss(to_plain(loss or {}), to_plain(deep_supervision_weights), deep_supervision_label_mode)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_names = list(label_names)
        self.inferer = inferer
        self.channels_last = channels_last
        self._compiled = None
        self.dice_best = 0.0
        self._val_sum = None
        self._val_count = None

    # -- forward --------------------------------------------------------------------------------
    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        if self.channels_last and x.ndim == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        fn = self._compiled if self._compiled is not None else self.net  # no bool(): OptimizedModule has no len()
        return fn(self._prep(x))

    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last_3d)
        if self.hparams.compile and self._compiled is None:
            # not registered as a submodule: state-dict keys stay those of the plain net
            object.__setattr__(self, "_compiled", torch.compile(self.net))

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Whole-volume logits through the model's inferer spec; eval mode returns one tensor."""
        return sliding_window(lambda t: first_output(self(t)), self._prep(x), self.inferer)

    # -- steps --------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch["image"], batch["label"]
        y = y.as_tensor() if hasattr(y, "as_tensor") else y
        loss = self.loss_fn(self(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0], sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        n = len(self.label_names)
        self._val_sum = torch.zeros(n, dtype=torch.float64, device=self.device)
        self._val_count = torch.zeros(n, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x, y = batch["image"], batch["label"]
        y = y.as_tensor() if hasattr(y, "as_tensor") else y
        logits = self.predict_logits(x)
        self.log("val/loss", self.loss_fn(logits, y), batch_size=1, sync_dist=True)
        total, count = dice_terms(logits, y)
        self._val_sum += total.to(self._val_sum.device)
        self._val_count += count.to(self._val_count.device)

    def on_validation_epoch_end(self) -> None:
        s, c = self._val_sum, self._val_count
        if self.trainer.world_size > 1:  # ranks hold different cases: add sums and counts
            s = self.all_gather(s).reshape(-1, s.numel()).sum(0)
            c = self.all_gather(c).reshape(-1, c.numel()).sum(0)
        means = per_label_means(s, c, self.label_names)
        mean = means.pop("val/dice")
        for key, v in means.items():
            self.log(key, v, sync_dist=False)
        self.log("val/dice", mean, prog_bar=True, sync_dist=False)
        if not self.trainer.sanity_checking:
            self.dice_best = max(self.dice_best, mean)
        self.log("val/dice_best", self.dice_best, prog_bar=True, sync_dist=False)

    # -- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        if self.optimizer_factory is None:
            opt = torch.optim.Adam(self.parameters(), lr=1e-3)
        else:
            opt = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(optimizer=opt)
        if isinstance(sched, ProgressLR):  # keyed on the fraction of training done: stepped after every step
            sched.progress = self.training_progress
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def training_progress(self) -> float:
        """Fraction of training done: of ``trainer.max_time`` (Lightning's Timer, which a resumed run continues)
        or of the estimated optimiser steps, whichever limit is nearer, so the schedule ends with the run."""
        from pytorch_lightning.callbacks import Timer

        trainer = self.trainer
        f = 0.0
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        remaining = timer.time_remaining("train") if timer is not None else None
        if remaining is not None:
            elapsed = timer.time_elapsed("train")
            f = elapsed / max(elapsed + remaining, 1e-9)
        total = trainer.estimated_stepping_batches
        if total and math.isfinite(total):
            f = max(f, trainer.global_step / total)
        return f

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["seg_dice_best"] = float(self.dice_best)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.dice_best = float(checkpoint.get("seg_dice_best", 0.0))
