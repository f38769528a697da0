"""``progress.png``: a run's training curves, as nnU-Net draws its own, redrawn while the run goes on.

Three panels: train loss and validation Dice per label against the epoch; the same Dice against the
elapsed minutes (runs are limited by time); the learning rate against the epoch. The history behind it
is kept beside it as ``progress.json`` (one record per epoch), so the k-fold run can draw all folds in
one figure. Written with matplotlib (Agg) and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from seg.io import atomic_write_bytes, write_text


def _plot(ax, xs, ys, **kw) -> None:
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None and not math.isnan(y)]
    if pts:
        ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, markersize=3, **kw)


def draw_combined(runs: dict[str, Path], path: Path, title: str) -> None:
    """One ``progress.png`` of several runs (k-fold folds, ensemble members): each run folder's
    ``progress.json`` drawn in the same figure; runs without one are left out."""
    import json

    hist = {
        name: json.loads((d / "progress.json").read_text())
        for name, d in runs.items()
        if (d / "progress.json").is_file()
    }
    if hist:
        draw_progress(hist, path, title=f"{title}: {len(hist)} runs" if len(hist) > 1 else title)


def draw_progress(histories: dict[str, list[dict]], path: Path, title: str = "") -> None:
    """Draw ``histories`` (name -> per-epoch records: epoch, minutes, loss, val_loss, lr, dice: {label: value})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a_ep, a_min, a_lr) = plt.subplots(1, 3, figsize=(13, 3.6))
    many = len(histories) > 1
    labels = sorted({lab for h in histories.values() for r in h for lab in (r.get("dice") or {})})
    styles = ["-", "--", ":", "-."]
    loss_ax = a_ep.twinx()
    for i, (name, h) in enumerate(histories.items()):
        ep = [r["epoch"] for r in h]
        pre = f"{name} " if many else ""
        _plot(loss_ax, ep, [r.get("loss") for r in h], color="grey", alpha=0.6, label=f"{pre}train loss")
        val_loss = [r.get("val_loss") for r in h]
        _plot(loss_ax, ep, val_loss, color="black", linestyle="--", alpha=0.6, label=f"{pre}val loss")
        for j, lab in enumerate(labels):
            d = [(r.get("dice") or {}).get(lab) for r in h]
            style = styles[j % len(styles)]
            _plot(a_ep, ep, d, linestyle=style, color=f"C{i}", label=f"{pre}val Dice {lab}")
            _plot(a_min, [r["minutes"] for r in h], d, linestyle=style, color=f"C{i}", label=f"{pre}{lab}")
        _plot(a_lr, ep, [r.get("lr") for r in h], color=f"C{i}", label=name if many else None)
    last_epoch = max((r["epoch"] for h in histories.values() for r in h), default=1)
    last_min = max((r["minutes"] for h in histories.values() for r in h), default=1.0)
    for ax in (a_ep, a_lr):  # a run of one epoch still gets axes from 0 to at least 2 (not a degenerate range)
        ax.set_xlim(0, max(2, last_epoch) + 0.5)
    a_min.set_xlim(0, max(last_min, 0.1) * 1.05)
    for ax, xl in ((a_ep, "epoch"), (a_min, "elapsed (min)")):
        ax.set_xlabel(xl)
        ax.set_ylabel("validation Dice")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    loss_ax.set_ylabel("loss (train, validation)")
    for ax, where in ((a_ep, "lower right"), (loss_ax, "upper right")):
        if ax.get_legend_handles_labels()[0]:  # before the first validation there is no curve to name
            ax.legend(fontsize=7, loc=where)
    a_lr.set_xlabel("epoch")
    a_lr.set_ylabel("learning rate")
    a_lr.grid(alpha=0.3)
    if many:
        a_lr.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


class ProgressPlot(Callback):
    """Record each training epoch (loss, validation Dice per label when validated, learning rate, elapsed
    minutes) to ``progress.json`` and redraw ``progress.png`` beside it: after an epoch, at most every
    ``min_interval_s`` seconds and no more often than keeps drawing under ``MAX_SHARE`` of the run's time
    (a drawing of a long history takes ~0.5 s on 2 cores: every 10 s that was 5 % of a planned run), and
    always at the end of training."""

    MAX_SHARE = 0.02

    def __init__(self, path: str, min_interval_s: float = 10.0) -> None:
        self.path = Path(path)
        self.min_interval_s = min_interval_s
        self.history: list[dict] = []
        self._validated = False
        self._drawn = 0.0
        self._draw_s = 0.0
        self._start = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._start = time.monotonic()
        run = self.path.resolve().parent  # outputs/<task>/runs/<time>: the task and the net name the figure
        task = run.parent.parent.name if run.parent.name in ("runs", "multiruns") else run.name
        self.title = f"{task}: {type(getattr(pl_module, 'net', pl_module)).__name__}, run {run.name}"
        old = self.path.with_suffix(".json")
        if trainer.ckpt_path and old.is_file():  # a resumed run continues its curves
            self.history = [r for r in json.loads(old.read_text()) if r["epoch"] <= trainer.current_epoch]
            self._start -= 60 * (self.history[-1]["minutes"] if self.history else 0.0)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._validated = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        loss = m.get("train/loss_epoch", m.get("train/loss"))
        names = list(getattr(pl_module, "label_names", []))
        from seg.lit.module import val_dice_per_label

        dice = val_dice_per_label(m, names) if self._validated else {}
        opt = trainer.optimizers[0] if trainer.optimizers else None
        self.history.append(
            {
                "epoch": trainer.current_epoch + 1,
                "minutes": round((time.monotonic() - self._start) / 60, 3),
                "loss": None if loss is None else float(loss),
                "val_loss": float(m["val/loss"]) if self._validated and "val/loss" in m else None,
                "lr": None if opt is None else float(opt.param_groups[0]["lr"]),
                "dice": dice,
            }
        )
        write_text(self.path.with_suffix(".json"), json.dumps(self.history))
        if time.monotonic() - self._drawn >= max(self.min_interval_s, self._draw_s / self.MAX_SHARE):
            self.draw()

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.is_global_zero and self.history:
            self.draw()

    def draw(self) -> None:
        t0 = time.monotonic()
        draw_progress({"run": self.history}, self.path, title=getattr(self, "title", self.path.parent.name))
        self._drawn = time.monotonic()
        self._draw_s = self._drawn - t0
