"""Signals as an operator sends them: SIGTERM (docker stop, SLURM pre-emption, Kubernetes) and Ctrl-C.

A stopped command exits 143 (SIGTERM) or 130 (Ctrl-C), prints one line with how to resume, leaves no
traceback, and a training run keeps its last epoch's ``last.ckpt``; the printed resume command runs to the
end.
"""

from __future__ import annotations

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
