"""Lightning callbacks seg adds to Lightning's own (checkpoints, early stopping, LR monitor, progress bar)."""

from __future__ import annotations

import datetime
import logging
import math
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, RichProgressBar, Timer

from seg.errors import ExitCode, Interrupted, Signals
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


class LateValidation(Callback):
    """Skip a periodic validation that would still be running at ``max_time``: when one falls due (a time-based
    ``val_check_interval``) with less training time left than the last pass took plus ``margin_s``, it is put
    off, so it never runs; the final validation at ``max_time`` runs whatever. The plan spaces its passes with
    a validation probe's seconds; a slower minute in the run (a pass taking twice the probe's) shifts every
    later pass, and Lightning starts one whenever the interval has passed, even seconds before ``max_time``.
    Written here because Lightning has no such rule; it reads and resets the trainer's ``_last_val_time``
    (Lightning 2.6's time-based schedule: ``tests/lit/test_callbacks.py`` pins that the attributes exist)."""

    def __init__(self, margin_s: float = 30.0) -> None:
        self.margin_s = float(margin_s)
        self.last_pass_s: float | None = None
        self._start: float | None = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._start = None if trainer.sanity_checking else time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if self._start is not None:
            self.last_pass_s = time.monotonic() - self._start

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        interval, last = getattr(trainer, "_val_check_time_interval", None), getattr(trainer, "_last_val_time", None)
        if interval is None or last is None or self.last_pass_s is None or trainer.should_stop:
            return
        now, timer = time.monotonic(), _timer(trainer)
        left = None if timer is None else timer.time_remaining("train")
        if now - last >= interval and left is not None and left < self.last_pass_s + self.margin_s:
            trainer._last_val_time = now + left  # not due again before max_time: the final validation follows it
            log.info(
                "periodic validation skipped: %s of max_time left, the last pass took %s",
                _hms(left),
                _hms(self.last_pass_s),
            )


class StopOnSignal(Callback):
    """SIGTERM (``docker stop``, SLURM pre-emption, Kubernetes) and Ctrl-C end training at the next batch with
    :class:`~seg.errors.Interrupted` (exit 143 and 130), the last epoch's ``last.ckpt`` kept as it is, so the
    command can say how to resume from it. Written here because Lightning alone finishes the epoch after a
    SIGTERM and then exits 0 without metrics (its ``SIGTERMException`` is a ``SystemExit`` without a code), and
    exits 1 on Ctrl-C."""

    def __init__(self) -> None:
        self.keyboard = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module) -> None:
        Signals.deferred = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        Signals.deferred = False

    def _check(self, trainer: pl.Trainer) -> None:
        if trainer.received_sigterm or Signals.received is not None:
            Signals.deferred = False
            raise self.interrupted(trainer, ExitCode.TERMINATED, "terminated (SIGTERM)")

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        self._check(trainer)

    def on_validation_batch_end(self, trainer: pl.Trainer, *args) -> None:
        self._check(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        Signals.deferred = False
        self.keyboard = self.keyboard or isinstance(exception, KeyboardInterrupt)

    @staticmethod
    def interrupted(trainer: pl.Trainer, code: int, what: str) -> Interrupted:
        run = Path(trainer.default_root_dir)
        last = run / "checkpoints" / "last.ckpt"
        kept = f"{last} (end of epoch {_last_epoch(last)}) kept" if last.is_file() else "no epoch finished yet"
        return Interrupted(
            f"{what} in epoch {trainer.current_epoch + 1}: {kept}",
            code,
            str(last) if last.is_file() else None,
            str(run),
        )


def _last_epoch(path: Path) -> str:
    try:
        import torch

        return str(int(torch.load(path, map_location="cpu", weights_only=True)["epoch"]) + 1)
    except Exception:  # an unreadable checkpoint: the resume reports it
        return "?"


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(0.0, seconds))))


BUDGET_EPOCHS = 10000  # max_epochs at or above this is no limit (a planned run: the time budget is)


def _timer(trainer: pl.Trainer) -> Timer | None:
    return next((c for c in trainer.callbacks if isinstance(c, Timer)), None)


def epoch_label(trainer: pl.Trainer, epoch: int | None = None) -> str:
    """``epoch 12/50`` (counted from 1, as the log and the bar both say), or ``epoch 12 (0:05:01 of 0:20:00)``
    when the time budget, not ``max_epochs``, ends the run."""
    n = (trainer.current_epoch if epoch is None else epoch) + 1
    timer = _timer(trainer)
    top = trainer.max_epochs
    if timer is not None and timer.time_remaining("train") is not None and (top in (None, -1) or top >= BUDGET_EPOCHS):
        elapsed = timer.time_elapsed("train")
        total = elapsed + max(0.0, timer.time_remaining("train"))
        return f"epoch {n} ({_hms(elapsed)} of {_hms(total)})"
    return f"epoch {n}/{top}" if top not in (None, -1) else f"epoch {n}"


class ProgressBar(RichProgressBar):
    """Lightning's rich bar on a terminal, its epoch counted as the log counts it (:func:`epoch_label`)."""

    def _get_train_description(self, current_epoch: int) -> str:
        return epoch_label(self.trainer, current_epoch)


class Heartbeat(Callback):
    """Off a terminal (nohup, SLURM, ``docker logs``: no progress bar there), a line every ``every_s`` seconds
    inside a long epoch and a long validation, so a log shows that the run is alive and where it is::

        step 1520, epoch 12 (0:05:01 of 0:20:00), train/loss 0.4123
        validating: 3 of 5 cases, 0:00:41
    """

    def __init__(self, every_s: float | None = None) -> None:
        import os

        self.every_s = float(os.environ.get("SEG_HEARTBEAT_S", 30.0)) if every_s is None else every_s
        self._last = time.monotonic()
        self._val_start = self._last

    def _due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return False
        self._last = now
        return True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.is_global_zero and self._due():
            loss = trainer.callback_metrics.get("train/loss_step", trainer.callback_metrics.get("train/loss"))
            tail = f", train/loss {float(loss):.4f}" if loss is not None else ""
            log.info("step %d, %s%s", trainer.global_step, epoch_label(trainer), tail, extra={"seg_progress": True})

    def on_validation_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._val_start = time.monotonic()

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx, dl_idx=0) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking and self._due():
            total = trainer.num_val_batches[0] if trainer.num_val_batches else "?"
            log.info(
                "validating: %d of %s cases, %s",
                *(batch_idx + 1, total, _hms(time.monotonic() - self._val_start)),
                extra={"seg_progress": True},
            )


class _NotOnTerminals(logging.Filter):
    """Keeps epoch lines off console handlers that write to a terminal (the progress bar is there)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "seg_epoch", False)


class _AtMostEvery(logging.Filter):
    """Off a terminal, the console gets the progress lines (an epoch's, a heartbeat's) at most once every
    ``every_s`` seconds (``SEG_CONSOLE_EVERY_S``, default 60): a 3-minute run of 1-s epochs printed ~100
    lines. ``train.log`` keeps every epoch's line."""

    def __init__(self, every_s: float) -> None:
        super().__init__()
        self.every_s, self._last = every_s, -math.inf

    def filter(self, record: logging.LogRecord) -> bool:
        if not (getattr(record, "seg_epoch", False) or getattr(record, "seg_progress", False)):
            return True
        now = time.monotonic()
        if now - self._last < self.every_s:
            return False
        self._last = now
        return True


def share_terminal_console() -> None:
    """On a terminal, log lines go through rich's console, the one Lightning's progress bar draws on, so
    they print above the bar instead of through it; epoch lines stay off the terminal (the bar shows them).
    Console handlers that write to pipes get their progress lines at most once a minute (:class:`_AtMostEvery`);
    handlers that write to files are left as they are."""
    import os

    from rich import get_console
    from rich.logging import RichHandler

    root = logging.getLogger()
    every = float(os.environ.get("SEG_CONSOLE_EVERY_S", 60.0))
    for h in list(root.handlers):
        stream = getattr(h, "stream", None)
        tty = not isinstance(h, logging.FileHandler) and bool(getattr(stream, "isatty", lambda: False)())
        if not tty:
            if not isinstance(h, logging.FileHandler) and not any(isinstance(f, _AtMostEvery) for f in h.filters):
                h.addFilter(_AtMostEvery(every))
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
        parts = [epoch_label(trainer)]
        loss = m.get("train/loss_epoch", m.get("train/loss"))
        if loss is not None:
            parts.append(f"train/loss {float(loss):.4f}")
        if self._validated and "val/dice" in m:
            names = getattr(pl_module, "label_names", [])
            per = [f"{n} {v:.4f}" for n, v in val_dice_per_label(m, names).items()]
            parts.append(f"val/dice {float(m['val/dice']):.4f}" + (f" ({' '.join(per)})" if len(per) > 1 else ""))
        timer = _timer(trainer)
        now = time.monotonic()
        tail = f"{now - self._t0:.1f} s"
        if timer is None or timer.time_remaining("train") is None:  # the label holds the budget's time otherwise
            tail += f", elapsed {_hms(now - self._start)}"
        return " ".join(parts) + " " + tail

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            log.info(self.line(trainer, pl_module), extra={"seg_epoch": True})
