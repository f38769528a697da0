"""Speed, FLOPs and peak memory of the U-Net family on one 1x1x128x128x144 volume (the paper's size), CPU.

    python scripts/bench_nets.py [--shape 128 128 144] [--reps 2] [--quick]

Rows: seg's unet, agunet (and each switch off), daunet (and DAGUNet), against MONAI's AttentionUnet
with the same filters (16, 32, 128, 256, 256), all in this process. "seg inference" is the path seg
uses to predict (eval, conv+BN folded, channels-last 3D, inference_mode); "eager" is the plain module.
GFLOP/s is forward FLOPs (torch FlopCounterMode) / forward time, also as a fraction of a large sgemm's
rate measured in the same run (the CPU's practical FP32 roof). Ratios are to MONAI's AttentionUnet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import peak_memory_mb, print_table, sgemm_gflops, threads_note, timeit  # noqa: E402

FILTERS = [16, 32, 128, 256, 256]


def configs(quick: bool):
    from seg.nn import create_net

    def seg(name, **kw):
        return lambda: create_net(name, spatial_dims=3, in_channels=1, out_channels=2, filters=FILTERS, **kw)

    rows = [
        # MONAI's AttentionUnet behind seg's pad-to-16 wrapper (a no-op at 128x128x144)
        (
            "monai AttentionUnet",
            lambda: create_net("monai_attention_unet", spatial_dims=3, in_channels=1, out_channels=2, channels=FILTERS),
        ),
        ("unet", seg("unet")),
        ("agunet", seg("agunet")),
        ("agunet gate=add", seg("agunet", attention_gate="add")),
        ("agunet no attention", seg("agunet", attention_gate="none")),
        ("agunet no ms", seg("agunet", multiscale_input=False)),
        ("agunet no ds", seg("agunet", deep_supervision=False)),
        ("daunet", seg("daunet")),
        ("dagunet (guided)", seg("daunet", guided=True)),
        ("unet upsample=wau (w8)", seg("unet", upsample="wau", wau_window=8)),
        ("agunet upsample=wau (w8)", seg("agunet", upsample="wau", wau_window=8)),
        ("transdae light3d", lambda: create_net("transdae", spatial_dims=3, in_channels=1, out_channels=2)),
    ]
    return rows[:4] if quick else rows


def wau_memory(shape) -> list[dict]:
    """Windowed vs global WAU at the top decoder level (full resolution, 16 channels, from 32 at half size)."""
    from seg.nn.blocks.window_attention_upsample import WindowAttentionUpsample

    rows = []
    low = torch.randn(1, 32, *[s // 2 for s in shape])
    skip = torch.randn(1, 16, *shape)
    for name, window in (("WAU windowed (w=8)", 8), ("WAU global", None)):
        wau = WindowAttentionUpsample(3, 32, 16, 16, heads=4, window=window).eval()
        with torch.inference_mode():
            try:
                t = timeit(lambda: wau(low, skip), reps=1)
                mem = peak_memory_mb(lambda: wau(low, skip))
            except RuntimeError as e:  # the global N x N map does not fit
                t, mem = None, None
                print(f"{name}: {type(e).__name__}: {str(e)[:80]}")
        rows.append({"block": name, "shape": "x".join(map(str, shape)), "s": t, "mb": mem})
    return rows


def measure(name, make, shape, reps, roof, fwd_bwd: bool):
    from seg.nn.utils import prepare_for_inference

    torch.manual_seed(0)
    net = make()
    x = torch.randn(1, 1, *shape)
    row = {"net": name, "params_m": sum(p.numel() for p in net.parameters()) / 1e6}
    net.eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(x)
    row["gflop"] = fc.get_total_flops() / 1e9
    with torch.inference_mode():
        row["fwd_eager"] = timeit(lambda: net(x), reps=1, warmup=0)  # the FLOP-counting pass was the warm-up
        fast = prepare_for_inference(net)
        xc = x.contiguous(memory_format=torch.channels_last_3d)
        row["fwd"] = timeit(lambda: fast(xc), reps=reps)
        row["mem_fwd"] = peak_memory_mb(lambda: fast(xc))
    row["gflops"] = row["gflop"] / row["fwd"]
    row["roof"] = row["gflops"] / roof
    if fwd_bwd:
        net.train()
        net = net.to(memory_format=torch.channels_last_3d)

        def step():
            out = net(xc)
            out = out if isinstance(out, list) else [out]
            sum(o.float().mean() for o in out).backward()
            net.zero_grad(set_to_none=True)

        row["mem_train"] = peak_memory_mb(step)  # doubles as the warm-up step
        row["fwd_bwd"] = timeit(step, reps=1, warmup=0)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", type=int, nargs=3, default=[128, 128, 144])
    ap.add_argument("--reps", type=int, default=2, help="timed repetitions of the seg inference forward (best of)")
    ap.add_argument("--quick", action="store_true", help="first 4 rows, forward only")
    a = ap.parse_args()
    roof = sgemm_gflops()
    rows = []
    for n, m in configs(a.quick):
        rows.append(measure(n, m, a.shape, a.reps, roof, not a.quick))
        print(f"measured {n}: fwd {rows[-1]['fwd']:.2f} s, fwd peak {rows[-1]['mem_fwd']:.0f} MB", flush=True)
    base = rows[0]
    for r in rows:
        r["x_fwd"] = r["fwd"] / base["fwd"]
        r["x_mem"] = r["mem_fwd"] / base["mem_fwd"]
        if "fwd_bwd" in r:
            r["x_fb"] = r["fwd_bwd"] / base["fwd_bwd"]
    print(
        f"\ninput 1x1x{'x'.join(map(str, a.shape))}, filters {FILTERS}; {threads_note()}; "
        f"sgemm roof {roof:.0f} GFLOP/s (measured now)"
    )
    cols = [
        ("net", "net", "s"),
        ("params_m", "params M", ".2f"),
        ("gflop", "fwd GFLOP", ".1f"),
        ("fwd_eager", "fwd eager s", ".2f"),
        ("fwd", "fwd s", ".2f"),
        ("x_fwd", "x AttUnet", ".2f"),
        ("gflops", "GFLOP/s", ".0f"),
        ("roof", "of roof", ".0%"),
        ("mem_fwd", "fwd peak MB", ".0f"),
        ("x_mem", "x AttUnet", ".2f"),
    ]
    if not a.quick:
        cols += [("fwd_bwd", "fwd+bwd s", ".2f"), ("x_fb", "x AttUnet", ".2f"), ("mem_train", "train peak MB", ".0f")]
    print_table(rows, cols)
    # a quarter of the input per axis: the global variant's N x N/8 scores at full resolution would not fit
    wshape = [s // 4 for s in a.shape] if not a.quick else [16, 16, 16]
    print(f"\nWAU windowed vs global on a {'x'.join(map(str, wshape))} map (16 channels, from 32 at half size):")
    print_table(
        wau_memory(wshape),
        [("block", "block", "s"), ("shape", "map", "s"), ("s", "fwd s", ".3f"), ("mb", "peak MB", ".0f")],
    )
    print(
        "fwd = seg inference path (eval, conv+BN folded, channels-last 3D, inference_mode); "
        "fwd eager = the plain module in eval mode; ratios x AttUnet are to MONAI's AttentionUnet (row 1), "
        "timed the same way."
    )


if __name__ == "__main__":
    main()
