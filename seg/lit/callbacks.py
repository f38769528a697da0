"""Lightning callbacks seg adds to Lightning's own (checkpoints, early stopping, LR monitor, progress bar)."""

from __future__ import annotations

import datetime
import logging
import math
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, Timer

from seg.lit.module import val_dice_per_label

log = logging.getLogger("seg.epoch")


class FinalValidation(Callback):
    """Validate at the end of training whatever the validation cadence, so the best checkpoint and the
    final metrics always include the last weights.

    Lightning validates when training is asked to stop mid-epoch (``max_time``'s Timer, a kill handled as
    a stop), but only on an epoch its cadence (``check_val_every_n_epoch``) marks for validation. When the
    end comes (the budget is spent, a stop was requested, or the last batch of ``max_epochs``), this makes
    the current epoch a validation epoch. Written here because Lightning has no "validate on the way out".
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.check_val_every_n_epoch in (None, 1) or trainer.limit_val_batches == 0:
            return
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        remaining = timer.time_remaining("train") if timer is not None else None
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs - 1
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if trainer.should_stop or (remaining is not None and remaining <= 0) or (last_epoch and last_batch):
            trainer.check_val_every_n_epoch = 1


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(0.0, seconds))))


class _NotOnTerminals(logging.Filter):
    """Keeps epoch lines off console handlers that write to a terminal (the progress bar is there)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "seg_epoch", False)


def share_terminal_console() -> None:
    """On a terminal, log lines go through rich's console, the one Lightning's progress bar draws on, so
    they print above the bar instead of through it; epoch lines stay off the terminal (the bar shows them).
    Handlers that write to files or pipes are left as they are."""
    from rich import get_console
    from rich.logging import RichHandler

    root = logging.getLogger()
    for h in list(root.handlers):
        stream = getattr(h, "stream", None)
        tty = not isinstance(h, logging.FileHandler) and bool(getattr(stream, "isatty", lambda: False)())
        if not tty:
            continue
        if not isinstance(h, RichHandler):
            rh = RichHandler(console=get_console(), level=h.level, show_path=False, markup=False)
            root.removeHandler(h)
            root.addHandler(rh)
            h = rh
        if not any(isinstance(f, _NotOnTerminals) for f in h.filters):
            h.addFilter(_NotOnTerminals())


class EpochLog(Callback):
    """One line per training epoch to the log: ``train.log`` in the run folder (Hydra's file handler) and
    the console when it is not a terminal (nohup, SLURM, ``docker logs``); on a terminal the progress bar
    shows the same and the line goes to the file only. Written here because Lightning's own loggers write
    metrics files, not a line a person reads while the run goes on::

        epoch 3/100 train/loss 0.4123 val/dice 0.8512 (anterior 0.8610 posterior 0.8414) 23.1 s, elapsed 0:01:12,
        left 0:18:48   (one line)

    ``left`` is the time left of ``trainer.max_time`` (absent without one); validation figures appear on
    the epochs in which validation ran (sanity checks excluded).
    """

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._start = self._t0
        self._validated = False

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        share_terminal_console()

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._start = time.monotonic()
        if trainer.is_global_zero:  # in place of Lightning's model summary (its FLOPs column reads 0 here)
            n = sum(p.numel() for p in pl_module.parameters())
            net = getattr(pl_module, "net", pl_module)
            log.info("net %s: %.2f M parameters, %s", type(net).__name__, n / 1e6, trainer.precision)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._t0 = time.monotonic()
        self._validated = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def line(self, trainer: pl.Trainer, pl_module) -> str:
        m = trainer.callback_metrics
        top = trainer.max_epochs if trainer.max_epochs not in (None, -1) else "-"
        parts = [f"epoch {trainer.current_epoch + 1}/{top}"]
        loss = m.get("train/loss_epoch", m.get("train/loss"))
        if loss is not None:
            parts.append(f"train/loss {float(loss):.4f}")
        if self._validated and "val/dice" in m:
            names = getattr(pl_module, "label_names", [])
            per = [f"{n} {v:.4f}" for n, v in val_dice_per_label(m, names).items()]
            parts.append(f"val/dice {float(m['val/dice']):.4f}" + (f" ({' '.join(per)})" if len(per) > 1 else ""))
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        now = time.monotonic()
        elapsed = timer.time_elapsed("train") if timer is not None else now - self._start
        tail = f"{now - self._t0:.1f} s, elapsed {_hms(elapsed)}"
        left = timer.time_remaining("train") if timer is not None else None
        if left is not None and math.isfinite(left):
            tail += f", left {_hms(left)}"
        return " ".join(parts) + " " + tail

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            log.info(self.line(trainer, pl_module), extra={"seg_epoch": True})
