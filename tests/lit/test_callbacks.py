"""Log lines on a terminal share the progress bar's rich console; epoch lines stay off the terminal."""

from __future__ import annotations

import io
import logging
import time

import pytest
import pytorch_lightning as pl
import torch

from seg.lit.callbacks import share_terminal_console


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_handler_becomes_rich_and_pipes_stay(tmp_path):
    from rich import get_console
    from rich.logging import RichHandler

    root = logging.getLogger()
    saved = list(root.handlers)
    tty, pipe = logging.StreamHandler(_Tty()), logging.StreamHandler(io.StringIO())
    file = logging.FileHandler(tmp_path / "train.log")
    for h in saved:
        root.removeHandler(h)
    try:
        for h in (tty, pipe, file):
            root.addHandler(h)
        share_terminal_console()
        share_terminal_console()  # idempotent
        rich = [h for h in root.handlers if isinstance(h, RichHandler)]
        assert len(rich) == 1 and rich[0].console is get_console() and tty not in root.handlers
        assert pipe in root.handlers and file in root.handlers
        epoch = logging.LogRecord("seg.epoch", logging.INFO, __file__, 1, "epoch 1/2", None, None)
        epoch.seg_epoch = True
        other = logging.LogRecord("seg", logging.INFO, __file__, 1, "a warning", None, None)
        assert not rich[0].filter(epoch) and rich[0].filter(other)  # epoch lines: file and pipes only
        assert pipe.filter(epoch) and file.filter(epoch)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)
        file.close()


def test_a_one_epoch_progress_plot_has_real_axes(tmp_path, monkeypatch):
    """One point: the epoch axis runs from 0 to 2.5 and the minutes axis from 0 (not a zero-width range)."""
    import matplotlib.pyplot as plt

    from seg.lit import progress

    seen = {}
    real_close = plt.close

    def keep(fig):
        seen["axes"] = [ax.get_xlim() for ax in fig.axes]
        real_close(fig)

    monkeypatch.setattr(plt, "close", keep)
    hist = {"run": [{"epoch": 1, "minutes": 0.2, "loss": 0.9, "lr": 1e-3, "dice": {"lesion": 0.4}}]}
    progress.draw_progress(hist, tmp_path / "p.png", "one epoch")
    assert (tmp_path / "p.png").stat().st_size > 5000
    (e0, e1), (m0, m1) = seen["axes"][0], seen["axes"][1]
    assert (e0, e1) == (0, 2.5) and m0 == 0 and m1 == pytest.approx(0.21)


class _Sleeper(pl.LightningModule):
    """Training steps of ``train_s`` and validation batches of ``val_s`` seconds (sleeps), a real optimiser."""

    def __init__(self, train_s: float, val_s: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.train_s, self.val_s = train_s, val_s

    def training_step(self, batch, batch_idx):
        time.sleep(self.train_s)
        return (self.w - batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        time.sleep(self.val_s)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_step_clock_counts_training_seconds_per_step_and_leaves_validation_out():
    """A run's step for the next plan (seg.run.steps): 20 steps of 0.02 s, validated twice for 0.4 s each (and
    sanity-checked before): the clock reads ~0.02 s a step, not the ~0.06 s of the run's wall time per step."""
    from torch.utils.data import DataLoader, TensorDataset

    from seg.lit.callbacks import StepClock

    data = DataLoader(TensorDataset(torch.ones(10, 1)), batch_size=1)
    clock = StepClock()
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[clock],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        limit_val_batches=2,
        accelerator="cpu",
    )
    t0 = time.perf_counter()
    trainer.fit(_Sleeper(0.02, 0.2), data, data)
    wall = time.perf_counter() - t0
    assert clock.steps == 20 and trainer.global_step == 20
    assert 20 * 0.02 <= clock.seconds < wall - 2 * 2 * 0.2 - 0.2  # neither validation nor the sanity check
    assert clock.step_s == pytest.approx(clock.seconds / 20)
    assert StepClock().step_s is None  # no step made: no figure
