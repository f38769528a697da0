"""Training throughput, two tables, each against a baseline run in the same process.

    python scripts/bench_train.py [--steps 30] [--data synthetic|hippocampus]
                                  [--table loop|precision|pipeline|both|all] [--device cpu|cuda]

``loop``: seg-train's loop (Hydra config -> Lightning Trainer) against a plain PyTorch + MONAI loop on the
same network, data, transforms and batch: samples/s, their ratio (the Lightning/Hydra overhead) and the
share of step time spent waiting for data.
``precision``: seg-train's loop in fp32 (baseline) and under bf16 autocast (``trainer.precision=bf16``)
for unet, agunet, daunet and unet_local_attn with the hippocampus experiments' settings (their data when
``--data hippocampus``): s/step, the bf16/fp32 ratio and the data share.
``pipeline``: seg-train's loop with the worker pipeline in fp32 (baseline: the path before the device
pipeline) against the device pipeline (``data.pipeline=device``: cached volumes on the device, augmentation on
its tensors, no worker processes), each in fp32 and bf16: s/step, steps/s relative to the baseline and the
data share (time a step waited for its batch).
Validation is off in every loop (it is not part of a step's cost).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def plain_loop(dm, net_kwargs, loss_cfg, lr, steps, warmup):
    from seg.lit.losses import SegLoss
    from seg.nn import create_net

    torch.manual_seed(0)
    net = create_net(**net_kwargs).to(memory_format=torch.channels_last_3d)
    loss_fn = SegLoss(loss_cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-5)
    net.train()
    done, data_t, t_start = 0, 0.0, None
    while done < steps + warmup:
        t_fetch = time.perf_counter()
        for batch in dm.train_dataloader():
            t_got = time.perf_counter()
            if done == warmup:
                t_start, data_t = t_got, 0.0
            elif done > warmup:
                data_t += t_got - t_fetch
            x = batch["image"].as_tensor().contiguous(memory_format=torch.channels_last_3d)
            y = batch["label"].as_tensor()
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            t_fetch = time.perf_counter()
            if done >= steps + warmup:
                break
    return time.perf_counter() - t_start, data_t


def seg_loop(root, overrides, steps, warmup, out, device="cpu"):
    import pytorch_lightning as pl
    from hydra import compose, initialize_config_dir

    from seg.config import CONF_DIR
    from seg.run.train import train

    class Timer(pl.Callback):
        def __init__(self):
            self.t_start = None
            self.data_t = 0.0
            self.last_end = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            now = time.perf_counter()
            step = trainer.global_step
            if step == warmup:
                self.t_start, self.data_t = now, 0.0
            elif step > warmup and self.last_end is not None:
                self.data_t += now - self.last_end

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.last_end = time.perf_counter()
            if trainer.global_step == steps + warmup:
                self.t_end = self.last_end

    timer = Timer()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(
            "train",
            overrides=[
                f"paths.output_dir={out}",
                f"data.root={root}",
                *overrides,
                f"+trainer.max_steps={steps + warmup}",
                "+trainer.limit_val_batches=0",
                f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
            ],
        )
    train(cfg, extra_callbacks=[timer])
    return timer.t_end - timer.t_start, timer.data_t


EXPERIMENTS = {
    "unet": "hippocampus_unet",
    "agunet": "hippocampus_agunet",
    "daunet": "hippocampus_daunet",
    "unet_local_attn": "hippocampus_local_attn",
}


def precision_table(a, root, overrides, tmp) -> None:
    """fp32 (baseline) vs bf16 s/step of each net through seg-train's loop, best of ``a.repeats``."""
    base = [o for o in overrides if not o.startswith("experiment=")]
    if a.data == "synthetic":  # the hippocampus nets' widths on the synthetic volumes, at their 40x56x40 patch
        base += ["data=synthetic", "data.patch_size=[40,56,40]", "data.num_samples=1"]
    print(
        f"\nprecision: seg-train loop, {a.steps} steps after {a.warmup} warm-up, best of {a.repeats}, "
        f"device {a.device}, data {a.data}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'net':16s} {'precision':10s} {'s/step':>8s} {'x fp32':>7s} {'data share':>11s}")
    for net in a.nets:
        runs = {}
        for prec in ("fp32", "bf16"):
            ov = [f"experiment={EXPERIMENTS[net]}", *base, f"trainer.precision={prec}"]
            if a.data == "synthetic":
                ov = [o for o in ov if o != "data.num_workers=1"] + ["data.num_workers=1"]
            res = [seg_loop(root, ov, a.steps, a.warmup, tmp / f"{net}_{prec}_{r}", a.device) for r in range(a.repeats)]
            runs[prec] = min(res)
        t32 = runs["fp32"][0] / a.steps
        for prec, (t, d) in runs.items():
            name = "fp32 (base)" if prec == "fp32" else "bf16"
            print(f"{net:16s} {name:10s} {t / a.steps:8.3f} {t / a.steps / t32:7.2f} {d / t:10.1%}")


def pipeline_table(a, root, overrides, tmp) -> None:
    """workers fp32 (baseline) vs device pipeline, fp32 and bf16, through seg-train's loop, best of ``a.repeats``."""
    net = a.nets[0]
    base = [o for o in overrides if not o.startswith(("experiment=", "data.num_workers"))]
    if a.data == "synthetic":
        base += ["data=synthetic", "data.patch_size=[40,56,40]", "data.num_samples=1"]
    workers = max(1, min(4, (torch.get_num_threads() or 2) - 1)) if a.device == "cpu" else 8
    precisions = ("fp32", "bf16") if a.device == "cuda" or _cpu_bf16() else ("fp32",)
    print(
        f"\npipeline: seg-train loop, {net}, {a.steps} steps after {a.warmup} warm-up, best of {a.repeats}, "
        f"device {a.device}, data {a.data}, torch threads {torch.get_num_threads()}, {workers} workers"
    )
    print(f"{'pipeline':10s} {'precision':10s} {'s/step':>8s} {'steps/s':>8s} {'x base':>7s} {'data share':>11s}")
    rows = [("workers", p) for p in precisions] + [("device", p) for p in precisions]
    t_base = None
    for pipe, prec in rows:
        nw = workers if pipe == "workers" else 0
        ov = [f"experiment={EXPERIMENTS[net]}", *base, f"data.pipeline={pipe}", f"data.num_workers={nw}"]
        ov.append(f"trainer.precision={prec}")
        res = [seg_loop(root, ov, a.steps, a.warmup, tmp / f"p_{pipe}_{prec}_{r}", a.device) for r in range(a.repeats)]
        t, d = min(res)
        t_base = t_base or t
        name = "fp32" if prec == "fp32" else "bf16"
        label = f"{pipe} (base)" if t_base == t and pipe == "workers" and name == "fp32" else pipe
        print(f"{label:10s} {name:10s} {t / a.steps:8.3f} {a.steps / t:8.2f} {t_base / t:7.2f} {d / t:10.1%}")


def _cpu_bf16() -> bool:
    from seg.plan.machine import cpu_has_bf16

    return cpu_has_bf16()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--data", choices=["synthetic", "hippocampus"], default="synthetic")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--table", choices=["loop", "precision", "pipeline", "both", "all"], default="both")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--nets", nargs="+", default=["unet", "agunet", "daunet", "unet_local_attn"])
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is available")
    from seg.cli.args import register_resolvers
    from seg.config import configure_threads

    configure_threads()
    register_resolvers()
    from omegaconf import OmegaConf

    from seg.data.datamodule import SegDataModule

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    if a.data == "synthetic":
        from seg.data.synthetic import write_dataset

        root = write_dataset(tmp / "synth", n=16, seed=0, shape=(64, 64, 64))
        overrides = ["experiment=synthetic_unet", "data.num_workers=1", "data.cache=cache"]
    else:
        import os

        root = Path(os.environ.get("SEG_SHARED_DATA", REPO.parent / "shared" / "data")) / "hippocampus"
        if not root.exists():
            sys.exit(f"{root} not found")
        overrides = ["experiment=hippocampus_unet", "data.num_workers=1"]
    overrides += [
        "~callbacks.rich_progress_bar",
        "trainer.enable_model_summary=false",
        "check_data=false",
        f"data.splits_file={tmp / 'splits.json'}",
    ]
    from hydra import compose, initialize_config_dir

    from seg.config import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp / 'x'}", f"data.root={root}", *overrides])
    dcfg = OmegaConf.to_container(cfg.data, resolve=True)
    dcfg.pop("_target_")
    dm = SegDataModule(**dcfg)
    dm.setup("fit")
    net_kwargs = OmegaConf.to_container(cfg.model.net, resolve=True)
    net_kwargs.pop("_target_")
    net_kwargs.update(in_channels=dm.spec.in_channels, out_channels=dm.spec.out_channels)
    loss_cfg = OmegaConf.to_container(cfg.model.loss, resolve=True)
    if a.table in ("pipeline", "all"):
        pipeline_table(a, root, overrides, tmp)
    if a.table in ("precision", "both", "all"):
        precision_table(a, root, overrides, tmp)
    if a.table in ("precision", "pipeline"):
        return
    per_step = dm.batch_size * dm.num_samples
    rows = {"plain PyTorch+MONAI loop": [], "seg-train loop (Lightning+Hydra)": []}
    for r in range(a.repeats):
        rows["plain PyTorch+MONAI loop"].append(
            plain_loop(dm, net_kwargs, loss_cfg, cfg.model.optimizer.lr, a.steps, a.warmup)
        )
        rows["seg-train loop (Lightning+Hydra)"].append(seg_loop(root, overrides, a.steps, a.warmup, tmp / f"run{r}"))
    base = None
    print(
        f"\ndata={a.data} net={net_kwargs['name']} filters={net_kwargs.get('filters')} "
        f"batch={dm.batch_size}x{dm.num_samples} "
        f"patch={dm.patch_size} steps={a.steps} (best of {a.repeats}), torch threads={torch.get_num_threads()}"
    )
    print(f"{'loop':36s} {'s/step':>8s} {'samples/s':>10s} {'ratio':>7s} {'data share':>11s}")
    for name, runs in rows.items():
        t, d = min(runs)
        sps = a.steps * per_step / t
        if base is None:
            base = sps
        print(f"{name:36s} {t / a.steps:8.3f} {sps:10.2f} {sps / base:7.3f} {d / t:10.1%}")
    print("ratio = samples/s relative to the plain loop (baseline); overhead = 1 - ratio")


if __name__ == "__main__":
    main()
