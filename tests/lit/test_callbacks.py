"""Log lines on a terminal share the progress bar's rich console; epoch lines stay off the terminal."""

from __future__ import annotations

import io
import logging

import pytest

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
        seen["legend"] = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        real_close(fig)

    monkeypatch.setattr(plt, "close", keep)
    hist = {"run": [{"epoch": 1, "minutes": 0.2, "loss": 0.9, "val_loss": 0.7, "lr": 1e-3, "dice": {"lesion": 0.4}}]}
    progress.draw_progress(hist, tmp_path / "p.png", "one epoch")
    assert (tmp_path / "p.png").stat().st_size > 5000
    assert "val loss" in seen["legend"] and "train loss" in seen["legend"]  # #41: the validation loss is drawn
    (e0, e1), (m0, m1) = seen["axes"][0], seen["axes"][1]
    assert (e0, e1) == (0, 2.5) and m0 == 0 and m1 == pytest.approx(0.21)


def test_off_a_terminal_the_console_gets_progress_lines_once_a_minute(tmp_path, monkeypatch):
    """#41: a 3-minute run of 1-s epochs printed ~100 console lines. A piped console handler passes one progress
    line (epoch or heartbeat) a minute, and every other line; train.log (a file handler) keeps every epoch."""
    import io
    import logging

    import seg.lit.callbacks as cb

    now = [1000.0]
    monkeypatch.setattr(cb.time, "monotonic", lambda: now[0])
    monkeypatch.delenv("SEG_CONSOLE_EVERY_S", raising=False)
    pipe, file = logging.StreamHandler(io.StringIO()), logging.FileHandler(tmp_path / "train.log")
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [pipe, file])
    cb.share_terminal_console()
    log = logging.getLogger("seg.epoch.test")
    log.setLevel(logging.INFO)
    for t in range(0, 150):  # an epoch a second for 150 s
        now[0] = 1000.0 + t
        log.info("epoch %d", t, extra={"seg_epoch": True})
    log.info("not a progress line")
    file.close()
    shown = pipe.stream.getvalue().splitlines()
    assert shown == ["epoch 0", "epoch 60", "epoch 120", "not a progress line"]
    assert len((tmp_path / "train.log").read_text().splitlines()) == 151


class _Clock:
    now = 1000.0


def _late(monkeypatch, *, left, last_pass, due=True, should_stop=False):
    """A trainer at a time-based periodic validation (due or not) with ``left`` seconds of max_time left."""
    from types import SimpleNamespace

    from pytorch_lightning.callbacks import Timer

    from seg.lit import callbacks

    class _Timer(Timer):
        def time_remaining(self, stage="train"):
            return left

    monkeypatch.setattr(callbacks.time, "monotonic", lambda: _Clock.now)
    trainer = SimpleNamespace(
        _val_check_time_interval=60.0, _last_val_time=_Clock.now - (61.0 if due else 59.0),
        should_stop=should_stop, sanity_checking=False, callbacks=[_Timer(duration="00:00:10:00")],
    )  # fmt: skip
    cb = callbacks.LateValidation(margin_s=30)
    cb.last_pass_s = last_pass
    before = trainer._last_val_time
    cb.on_train_batch_end(trainer, None, None, None, 0)
    return trainer._last_val_time != before, trainer._last_val_time


@pytest.mark.parametrize(
    "left, last_pass, due, stop, skipped",
    [
        (14.0, 40.0, True, False, True),  # the proxy's run: 14 s left, the last pass took 40 s
        (69.0, 40.0, True, False, True),  # under the last pass plus the 30-s margin
        (71.0, 40.0, True, False, False),  # over it: the pass runs
        (14.0, None, True, False, False),  # no pass measured yet: the plan's spacing stands
        (14.0, 40.0, False, False, False),  # not due
        (14.0, 40.0, True, True, False),  # stopping: the final validation is Lightning's, untouched
    ],
)
def test_a_periodic_validation_that_would_run_past_max_time_is_skipped(
    monkeypatch, left, last_pass, due, stop, skipped
):
    moved, last = _late(monkeypatch, left=left, last_pass=last_pass, due=due, should_stop=stop)
    assert moved is skipped
    if skipped:  # not due again before max_time
        assert last == _Clock.now + left


def test_late_validation_reads_lightnings_time_based_schedule(tmp_path):
    """The attributes LateValidation reads exist in this Lightning (2.6): a real fit with a time-based
    ``val_check_interval`` sets them and measures a pass; the default config's margin is the planner's
    ``validation_margin_s``."""
    import datetime

    import pytorch_lightning as pl
    import torch
    import yaml
    from torch.utils.data import DataLoader, TensorDataset

    from seg.lit.callbacks import LateValidation
    from seg.plan.settings import SETTINGS

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, i):
            return self.lin(batch[0]).sum()

        def validation_step(self, batch, i):
            self.log("v", self.lin(batch[0]).sum())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    cb = LateValidation()
    trainer = pl.Trainer(
        max_epochs=1, val_check_interval=datetime.timedelta(microseconds=1), max_time="00:00:10:00", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[cb],
    )  # fmt: skip
    trainer.fit(Tiny(), data, data)
    assert trainer._val_check_time_interval == 1e-6 and isinstance(trainer._last_val_time, float)
    assert cb.last_pass_s is not None and cb.last_pass_s >= 0  # a periodic validation, measured
    conf = yaml.safe_load(open("conf/callbacks/default.yaml"))["late_validation"]
    assert conf == {"_target_": "seg.lit.callbacks.LateValidation", "margin_s": SETTINGS.validation_margin_s}
