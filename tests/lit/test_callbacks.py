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
