from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from seg.run.train import train
from tests.conftest import DONE, REPO, TINY, compose_train


def _overrides(root: Path) -> list[str]:
    return [f"data.root={root}", *TINY]


def test_fast_dev_run_composes_real_config(synth_root, tmp_path):
    cfg = compose_train(["debug=fast_dev_run", *_overrides(synth_root)], tmp_path)
    metrics = train(cfg).metrics
    assert metrics["global_step"] == 1
    assert (tmp_path / "config.yaml").exists()


def test_run_folder_contents_and_resume(synth_root, tmp_path):
    run1 = tmp_path / "run1"
    cfg = compose_train(["trainer.max_epochs=2", *_overrides(synth_root)], run1)
    m1 = train(cfg).metrics
    for rel in (
        "config.yaml",
        "metrics.json",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
        "splits.json",
        "model/model.yaml",
        "model/fold_0/weights.pt",
    ):
        assert (run1 / rel).exists(), rel
    assert list((run1 / "tensorboard").glob("events.*"))
    # the bundle records the axes training mirrored: the only ones seg-predict --tta may mirror
    from seg.data.transforms import Augment

    progress = json.loads((run1 / "progress.json").read_text())
    assert any(r["val_loss"] is not None for r in progress)  # the validation loss is kept beside the Dice
    model_yaml = yaml.safe_load((run1 / "model" / "model.yaml").read_text())
    assert model_yaml["trained"]["steps_made"] == [m1["global_step"]] and m1["global_step"] > 0
    recorded = model_yaml["mirror_axes"]
    assert recorded == Augment.from_mapping(cfg.data.augment).mirror_axes == [0, 1, 2]
    assert (run1 / "csv" / "metrics.csv").exists()
    saved = json.loads((run1 / "metrics.json").read_text())
    assert saved["epochs"] == 2 and "val/dice_meningioma" in saved
    # README: "final and best metrics, epochs, steps, seconds"
    assert {"val/dice", "val/dice_best", "epochs", "global_step", "seconds"} <= set(saved) and saved["seconds"] > 0
    # metrics.json reports the last validation the CSV logger wrote, not a constant or a stale value
    logged = [r for r in csv.DictReader((run1 / "csv" / "metrics.csv").open()) if r.get("val/dice")]
    assert len(logged) == 2 and saved["val/dice"] == pytest.approx(float(logged[-1]["val/dice"]), abs=1e-6)
    # checkpoints hold plain data: loadable with weights_only=True, net stored as {name, kwargs}
    ck = torch.load(run1 / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["hyper_parameters"]["net"]["name"] == "unet"
    assert ck["epoch"] == 1 and ck["optimizer_states"] and ck["lr_schedulers"]
    # resume: continues from epoch 2 to 3 with the optimiser and scheduler state
    run2 = tmp_path / "run2"
    cfg2 = compose_train(
        [
            "trainer.max_epochs=3",
            f"ckpt_path={run1 / 'checkpoints' / 'last.ckpt'}",
            f"data.splits_file={run1 / 'splits.json'}",
            *_overrides(synth_root),
        ],
        run2,
    )
    import pytorch_lightning as pl

    class FirstStepState(pl.Callback):  # what only a resumed run holds before its first step
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if not hasattr(self, "state"):
                opt = trainer.optimizers[0]
                self.state = {k: {n: v.clone() for n, v in st.items()} for k, st in enumerate(opt.state.values())}
                self.weights = {n: p.detach().clone() for n, p in pl_module.state_dict().items()}
                self.epoch = trainer.current_epoch

    first = FirstStepState()
    m2 = train(cfg2, extra_callbacks=[first]).metrics
    assert m2["epochs"] == 3
    assert m2["global_step"] == m1["global_step"] * 3 // 2
    # before its first step the resumed run holds the checkpoint's epoch, weights and Adam moments
    assert first.epoch == 2
    saved_state = ck["optimizer_states"][0]["state"]
    assert len(first.state) == len(saved_state) > 0
    for k, st in saved_state.items():
        for n, v in st.items():
            assert torch.equal(first.state[int(k)][n].cpu(), v), (k, n)
    for n, v in ck["state_dict"].items():
        assert torch.equal(first.weights[n].cpu(), v), n
    lr1 = ck["lr_schedulers"][0]["last_epoch"]
    ck2 = torch.load(run2 / "checkpoints" / "last.ckpt", weights_only=True)
    # the schedule steps after every optimiser step and continued from the checkpoint's count
    assert lr1 == m1["global_step"] and ck2["lr_schedulers"][0]["last_epoch"] == m2["global_step"]


def _cli(args: list[str], **kw) -> subprocess.Popen:
    # every progress line on the console (its once-a-minute throttle is tested in tests/lit/test_callbacks.py)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "SEG_CONSOLE_EVERY_S": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "seg.cli.train", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_killed_mid_epoch_run_resumes_and_finishes(synth_root, tmp_path):
    run = tmp_path / "killed"
    args = [f"data.root={synth_root}", *TINY, "trainer.max_epochs=40", f"hydra.run.dir={run}"]
    p = _cli(args, start_new_session=True)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    assert last.exists(), p.communicate()[1][-2000:]
    time.sleep(1.0)  # into the next epoch
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    ck = torch.load(last, weights_only=True)
    assert ck["epoch"] < 39
    run2 = tmp_path / "resumed"
    q = _cli(
        [
            f"data.root={synth_root}",
            *TINY,
            "trainer.max_epochs=" + str(ck["epoch"] + 3),
            f"ckpt_path={last}",
            f"data.splits_file={run / 'splits.json'}",
            f"hydra.run.dir={run2}",
        ]
    )
    out, err = q.communicate(timeout=300)
    assert q.returncode in DONE, err[-2000:]
    assert json.loads((run2 / "metrics.json").read_text())["epochs"] == ck["epoch"] + 3
    # the schedule continued from the checkpoint (no restart at the base rate) and reached its end value
    base_lr = ck["optimizer_states"][0]["param_groups"][0]["initial_lr"]
    rows = list(csv.DictReader(open(run2 / "csv" / "metrics.csv")))
    lr_col = next(k for k in rows[0] if k.startswith("lr-"))
    first_lr = next(float(r[lr_col]) for r in rows if r.get(lr_col))
    ck_lr = ck["optimizer_states"][0]["param_groups"][0]["lr"]
    assert ck_lr < base_lr and first_lr == pytest.approx(ck_lr)  # resumed at the checkpoint's LR, not the base
    ck2 = torch.load(run2 / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck2["global_step"] > ck["global_step"]
    assert ck2["optimizer_states"][0]["param_groups"][0]["lr"] == 0.0
    # one line per epoch in train.log and on the (non-terminal) console, numbered from after the checkpoint
    top = ck["epoch"] + 3
    line = re.compile(rf"epoch (\d+)/{top} train/loss \d+\.\d{{4}} .*\d+\.\d s, elapsed \d+:\d\d:\d\d")
    logged = [int(m.group(1)) for m in map(line.search, (run2 / "train.log").read_text().splitlines()) if m]
    assert logged == [ck["epoch"] + 2, ck["epoch"] + 3]
    assert [int(m.group(1)) for m in map(line.search, (out + err).splitlines()) if m] == logged
    assert re.search(rf"epoch {top}/{top} .*val/dice \d\.\d{{4}}", (run2 / "train.log").read_text())
    assert "Tip:" not in out + err and "Total FLOPs" not in out + err


def test_bad_dataset_stops_with_one_line_per_error(synth_copy, tmp_path):
    (synth_copy / "labelsTr" / "synth_001.nii.gz").write_bytes(b"not a nifti")
    p = _cli([f"data.root={synth_copy}", *TINY, f"hydra.run.dir={tmp_path / 'r'}"])
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2  # refused before any training
    lines = [line for line in err.splitlines() if line.startswith("ERROR ")]
    assert len(lines) == 1 and "labelsTr/synth_001.nii.gz" in lines[0]
    assert "Traceback" not in err


def test_missing_dataset_one_line(tmp_path):
    p = _cli(["data=hippocampus", f"data.root={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'r'}"])
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "dataset folder does not exist" in err and "Traceback" not in err


@pytest.mark.slow  # two processes of Lightning start-up (~20 s); the DDP plan's config is in the default tier
def test_ddp_two_cpu_processes(synth_root, tmp_path):
    run = tmp_path / "ddp"
    p = _cli([f"data.root={synth_root}", *TINY, "trainer=ddp", "trainer.max_epochs=2", f"hydra.run.dir={run}"])
    out, err = p.communicate(timeout=400)
    assert p.returncode in DONE, err[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["epochs"] == 2
    # 6 train cases split over 2 ranks (3 each), batch 2 with drop_last: 1 step per epoch on each rank
    assert m["global_step"] == 2
    assert "rank 0/2: 3 train" in err + out and "rank 1/2: 3 train" in err + out


def test_bf16_mixed_precision_step(synth_root, tmp_path):
    # the net really runs in bf16 under bf16 (autocast), and its first loss is fp32's within bf16's precision
    import pytorch_lightning as pl

    class OutputDtype(pl.Callback):
        def __init__(self):
            self.dtypes = set()

        def on_train_start(self, trainer, pl_module):
            pl_module.net.register_forward_hook(lambda mod, inp, out: self.dtypes.add(first(out).dtype))

    def first(out):
        return out[0] if isinstance(out, (list, tuple)) else out

    losses = {}
    for precision in ("fp32", "bf16"):
        seen = OutputDtype()
        over = ["debug=fast_dev_run", f"trainer.precision={precision}", "seed=5", *_overrides(synth_root)]
        m = train(compose_train(over, tmp_path / precision), extra_callbacks=[seen]).metrics
        assert m["global_step"] == 1
        losses[precision] = m["train/loss"]
        assert seen.dtypes == ({torch.bfloat16} if precision == "bf16" else {torch.float32})
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)


@pytest.mark.slow  # torch.compile's first compilation takes a minute on the CPU
def test_model_compile_true_trains_through_the_compiled_net(synth_root, tmp_path):
    from torch._dynamo.utils import counters

    counters.clear()
    cfg = compose_train(["debug=fast_dev_run", "model.compile=true", *_overrides(synth_root)], tmp_path)
    res = train(cfg)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo captured (and inductor compiled) the forward
    compiled = res.module._compiled
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule) and compiled._orig_mod is res.module.net
    assert res.metrics["global_step"] == 1 and np.isfinite(res.metrics["train/loss"])
