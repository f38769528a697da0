"""Signals as an operator sends them: SIGTERM (docker stop, SLURM pre-emption, Kubernetes) and Ctrl-C.

A stopped command exits 143 (SIGTERM) or 130 (Ctrl-C), prints one line with how to resume, leaves no
traceback, and a training run keeps its last epoch's ``last.ckpt``; the printed resume command runs to the
end.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from seg.errors import Terminated
from tests.conftest import DONE, REPO, TINY, tiny_cv

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _foreground_signals() -> None:
    """In the child, before exec: SIGINT as a foreground job has it. A shell without job control starts a
    background job (``cmd &``, what a CI script may do) with SIGINT ignored, the child inherits that, and a
    Ctrl-C test would then see the command, rightly, run on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(module: str, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_foreground_signals,
    )


def _wait_for(path, p, seconds=240):
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    assert path.exists(), p.communicate()[1][-2000:]


@pytest.mark.parametrize(
    "sig, code, what",
    [
        (signal.SIGTERM, 143, "terminated (SIGTERM)"),
        pytest.param(signal.SIGINT, 130, "interrupted (Ctrl-C)", marks=pytest.mark.slow),  # the same path
    ],
)
def test_training_stopped_by_a_signal_keeps_last_ckpt_and_resumes_to_the_end(synth_root, tmp_path, sig, code, what):
    run = tmp_path / "run"
    args = [f"data.root={synth_root}", *TINY, "trainer.max_epochs=12", f"hydra.run.dir={run}"]
    p = _start("seg.cli.train", args)
    last = run / "checkpoints" / "last.ckpt"
    _wait_for(last, p)
    time.sleep(0.5)  # into the next epoch
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == code, err[-3000:]
    assert "Traceback" not in err and not (run / "metrics.json").exists()
    stopped = [line for line in err.splitlines() if what in line]
    assert len(stopped) == 1 and str(last) in stopped[0] and "kept" in stopped[0], err[-2000:]
    epoch = torch.load(last, weights_only=True)["epoch"]  # the kept checkpoint is whole and readable
    resume = next(line for line in err.splitlines() if line.startswith("resume: "))
    cmd = shlex.split(resume[len("resume: ") :])
    assert cmd[0] == "seg-train" and f"ckpt_path={last}" in cmd and f"hydra.run.dir={run}" in cmd
    q = _start("seg.cli.train", cmd[1:])
    out, err = q.communicate(timeout=300)
    assert q.returncode in DONE, err[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 12 and epoch < 11


def test_kfold_stopped_by_sigterm_says_how_to_resume(synth_root, tmp_path):
    run = tmp_path / "cv"
    args = [*tiny_cv(synth_root, run, folds=2, epochs=30), f"hydra.run.dir={run}"]
    p = _start("seg.cli.kfold", args)
    _wait_for(run / "fold_0" / "checkpoints" / "last.ckpt", p)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143 and "Traceback" not in err, err[-3000:]
    resume = next(line for line in err.splitlines() if line.startswith("resume: "))
    assert shlex.split(resume[len("resume: ") :])[0] == "seg-kfold" and f"cv.run_dir={run}" in resume


def test_predict_interrupted_by_ctrl_c_exits_130_without_a_traceback(synth_root, tmp_path):
    from tests.inference.conftest import make_bundle

    tiny_bundle = make_bundle(tmp_path / "model")
    inp, out_dir = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for i in range(40):
        shutil.copy(synth_root / "imagesTr" / "synth_000.nii.gz", inp / f"c{i:02d}.nii.gz")
    p = _start("seg.cli.predict", ["-i", str(inp), "-o", str(out_dir), "-m", str(tiny_bundle), "-q"])
    _wait_for(out_dir / "c00.nii.gz", p)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, err[-3000:]
    *logged, last = err.strip().splitlines()  # the cases done so far (log lines), then the one line that says why
    assert last.startswith("interrupted (Ctrl-C)") and "--continue" in last
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO ", x) for x in logged), logged
    assert not list(out_dir.glob(".*part*"))  # no half-written file left behind


def test_sigterm_that_lightning_sees_first_at_an_epoch_end_still_exits_143(synth_root, tmp_path):
    """A SIGTERM that lands after an epoch's last batch is seen by Lightning's fit loop first: it raises its
    ``SIGTERMException`` (a ``SystemExit`` with no code, exit 0). seg turns it into the same stop as ours:
    exit 143, the kept checkpoint named, no metrics.json (CI met this race once)."""
    import pytorch_lightning as pl

    from seg.errors import ExitCode, Interrupted, Signals
    from seg.run.train import train
    from tests.conftest import compose_train

    class SigtermAtEpochEnd(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                trainer._signal_connector.received_sigterm = True  # what Lightning's handler records

    run = tmp_path / "run"
    cfg = compose_train([f"data.root={synth_root}", *TINY, "trainer.max_epochs=4"], run)
    try:
        with pytest.raises(Interrupted) as e:
            train(cfg, extra_callbacks=[SigtermAtEpochEnd()])
    finally:
        Signals.deferred, Signals.received = False, None
    assert e.value.code == ExitCode.TERMINATED == 143 and "terminated (SIGTERM)" in str(e.value)
    assert "last.ckpt" in str(e.value) and not (run / "metrics.json").exists()


# -- one exit rule in every command and phase (in-process: the signal raised at a point of the work) --------------
def test_a_pool_stopped_by_a_signal_starts_nothing_more():
    """``seg.config.pool``: a block ended by a signal drops the queued tasks. The standard executor ran all 40
    (a ``docker stop`` of a batch whose inputs were queued for checking read them all first)."""
    from concurrent.futures import ThreadPoolExecutor

    from seg.config import pool

    for make, most in ((pool, 4), (ThreadPoolExecutor, 40)):
        ran = []
        with pytest.raises(KeyboardInterrupt):
            with make(2) as ex:
                futures = [ex.submit(lambda i=i, ran=ran: (ran.append(i), time.sleep(0.02))) for i in range(40)]
                futures[0].result()
                raise KeyboardInterrupt
        time.sleep(0.1)  # the running tasks end
        assert (len(ran) <= most) and (len(ran) == 40) is (make is ThreadPoolExecutor), (make, len(ran))


def _cases_dir(synth_root, tmp_path, n=6):
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(n):
        shutil.copy(synth_root / "imagesTr" / "synth_000.nii.gz", inp / f"c{i}.nii.gz")
    return inp


def _predict(synth_root, tmp_path):
    from seg.cli.predict import main
    from tests.inference.conftest import make_bundle

    args = ["-i", str(_cases_dir(synth_root, tmp_path)), "-o", str(tmp_path / "out"), "-q"]
    return main, [*args, "-m", str(make_bundle(tmp_path / "model"))]


def _check_data(synth_root, tmp_path):
    from seg.cli.check_data import main

    return main, [str(synth_root), "--workers", "2"]


def _eval(synth_root, tmp_path):
    from seg.cli.eval import main

    labels = synth_root / "labelsTr"
    shutil.copytree(labels, tmp_path / "pred")
    return main, ["-p", str(tmp_path / "pred"), "-l", str(labels), "-o", str(tmp_path / "ev"), "--no-surface"]


def _export(synth_root, tmp_path):
    from seg.cli.export import main
    from tests.inference.conftest import make_bundle

    return main, ["-m", str(make_bundle(tmp_path / "model")), "-o", str(tmp_path / "exported")]


SIGNALLED = [  # (command, where the signal lands)
    (_predict, "seg.inference.batch.predict_one"),
    (_check_data, "seg.data.check.check_case"),
    (_eval, "seg.eval.evaluate.evaluate_case"),
    (_export, "seg.inference.export.export_fold"),
]


@pytest.fixture
def ctrl_c_as_a_terminal_has_it():
    """This process's SIGINT as a foreground command has it (Python's KeyboardInterrupt): pytest started as a
    background job of a shell without job control inherits it ignored (see :func:`_foreground_signals`)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("sig, code, what", [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGINT, 130, "")])
@pytest.mark.parametrize("make, where", SIGNALLED, ids=["predict", "check-data", "eval", "export"])
def test_every_command_exits_143_on_sigterm_and_130_on_ctrl_c(
    synth_root, tmp_path, monkeypatch, capsys, make, where, sig, code, what, ctrl_c_as_a_terminal_has_it
):
    import importlib

    module, name = where.rsplit(".", 1)
    mod = importlib.import_module(module)
    original = getattr(mod, name)

    calls = itertools.count()

    def signalled(*a, **k):
        if next(calls) == 0:  # one signal: a second, from a worker thread still running, could land in a later test
            signal.raise_signal(sig)
            time.sleep(0.5)  # the handler runs in the main thread; a worker thread's call goes on meanwhile
        return original(*a, **k)

    monkeypatch.setattr(mod, name, signalled)
    main, argv = make(synth_root, tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (what or "interrupted (Ctrl-C)") in err.strip().splitlines()[-1]


def test_the_kfold_evaluation_phase_exits_143_on_sigterm(synth_root, tmp_path, monkeypatch, capsys):
    """After the folds, while the out-of-fold cases are evaluated: the same rule (Lightning's handlers are gone)."""
    import seg.run.kfold as kf
    from seg.cli.kfold import main

    run = tmp_path / "cv"
    (run / "fold_0").mkdir(parents=True)
    (run / "fold_0" / "done.json").write_text("{}")
    monkeypatch.setattr(kf, "run_fold", lambda *a, **k: {})
    monkeypatch.setattr(kf, "evaluate_cv", lambda *a, **k: (signal.raise_signal(signal.SIGTERM), time.sleep(1)))
    monkeypatch.setattr(sys, "argv", ["seg-kfold", *tiny_cv(synth_root, run), f"hydra.run.dir={run}"])
    import logging

    from hydra.core.global_hydra import GlobalHydra

    handlers, level = list(logging.root.handlers), logging.root.level
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:  # Hydra's job logging bound the root logger to this test's captured streams: put it back
        for h in logging.root.handlers:
            if h not in handlers:
                logging.root.removeHandler(h)
                h.close()
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)
        GlobalHydra.instance().clear()
    assert e.value.code == 143
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("terminated (SIGTERM)")


def test_a_second_sigterm_while_the_first_is_answered_is_noted_not_raised(monkeypatch, capsys):
    """Worker threads may each raise SIGTERM: the second one lands while the command is answering the first
    (in its ``except`` or ``finally``) and must not escape as a traceback; after the command, none is left."""
    from seg.cli.common import command
    from seg.errors import Signals

    def main() -> int:
        signal.raise_signal(signal.SIGTERM)  # the first: ends the command
        return 0

    def answering_the_first(*a, **k):  # the second lands while the first is answered
        signal.raise_signal(signal.SIGTERM)
        return "how to resume"

    monkeypatch.setattr("seg.cli.common.resume_hint", answering_the_first)
    monkeypatch.setattr(sys, "argv", ["seg-x"])
    previous = signal.getsignal(signal.SIGTERM)
    assert command(main)() == 143
    assert capsys.readouterr().err.strip() == "terminated (SIGTERM): how to resume"
    assert Signals.received is None and signal.getsignal(signal.SIGTERM) is previous


@pytest.mark.parametrize(
    "stop, code, line", [(KeyboardInterrupt, 130, "interrupted (Ctrl-C)"), (Terminated, 143, "terminated (SIGTERM)")]
)
def test_a_stop_hidden_in_a_locks_runtime_error_is_still_a_stop(capsys, stop, code, line):
    """Ctrl-C landing while a thread pool starts a worker (``threading.Condition.wait`` taking its lock back) left
    ``RuntimeError: release unlocked lock``, the KeyboardInterrupt its context, and a traceback (seen once in the
    parallel tier: check-data's Ctrl-C test). Still a stop: its exit code and line. A plain RuntimeError is a bug
    and stays one."""
    from seg.cli.common import command

    def stopped_in_a_lock():
        try:
            raise stop()
        except BaseException:
            raise RuntimeError("release unlocked lock")  # noqa: B904 (as threading raises it: the stop its context)

    assert command(stopped_in_a_lock)() == code
    assert line in capsys.readouterr().err

    def a_bug():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        command(a_bug)()
