"""Estimates for what is not timed: a step on a device that is not present (FLOPs over a documented rate), and
the training memory of a candidate. Nothing here runs a network: FLOPs are counted on the meta device."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from seg.nn.registry import build_sized, doubling_widths
from seg.plan.records import Candidate

# Effective training throughput (useful FLOP/s of 3D U-Net forward+backward, not peak) for planning a
# device that is not present. Estimates: a datacenter GPU of the A100 class sustains ~30-40 % of its
# dense peak on 3D convolutions (fp32 via TF32 ~50 TFLOP/s, bf16 ~100 TFLOP/s, with cuDNN); the CPU row is
# an estimate for a 2-core AVX512-BF16 VM (on the present CPU the planner measures instead).
COST_TABLE = {
    "cuda": {"fp32": 20e12, "bf16": 35e12},
    "cpu": {"fp32": 60e9, "bf16": 90e9},
}


def step_flops(net: str, cand: Candidate, levels: int, in_ch: int, out_ch: int) -> float:
    """FLOPs of one training step (forward + backward), counted on the meta device.

    Convolutions' FLOPs are linear in the output voxels once every level is at least 3 voxels a side (at 2 the
    counted figure is 1-17 % above the linear one), so where every patch axis is a multiple of the deepest
    level's stride and at least 3 of them, the count is one counted per-voxel figure of the net (cached) times
    the patch's voxels and the batch: the same number for unet and agunet, within 0.2 % for daunet
    (``tests/plan/test_resolution.py``), without a 0.2-0.4-s meta forward and backward per candidate; the
    others are counted once each (cached: a whole-scan plan asks for its full patch at every resolution)."""
    stride = 2 ** (levels - 1)
    if all(p % stride == 0 and p >= 3 * stride for p in cand.patch):
        return _flops_per_voxel(net, cand.base, levels, in_ch, out_ch, stride) * cand.batch * math.prod(cand.patch)
    return _count_flops(net, cand.base, levels, in_ch, out_ch, cand.batch, tuple(cand.patch))


@functools.lru_cache(maxsize=256)
def _flops_per_voxel(net: str, base: int, levels: int, in_ch: int, out_ch: int, stride: int) -> float:
    edge = 4 * stride  # a patch whose deepest level is 4 voxels a side
    return _count_flops(net, base, levels, in_ch, out_ch, 1, (edge,) * 3) / edge**3


@functools.lru_cache(maxsize=256)
def _count_flops(net: str, base: int, levels: int, in_ch: int, out_ch: int, batch: int, patch: tuple) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_sized(net, base, levels, in_ch, out_ch).train()
        x = torch.randn(batch, in_ch, *patch)
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x)
        out = out if isinstance(out, torch.Tensor) else sum(o.sum() for o in out)
        out.sum().backward()
    return float(counter.get_total_flops())


def estimate_step(net: str, cand: Candidate, levels: int, in_ch: int, out_ch: int, device: str) -> float:
    """Seconds of one bare training step on a device that is not present (from :data:`COST_TABLE`)."""
    return step_flops(net, cand, levels, in_ch, out_ch) / COST_TABLE[device][cand.precision]


def activation_gb(base: int, levels: int, patch: Sequence[int], batch: int, precision: str, in_ch: int = 1) -> float:
    """A rough training memory estimate of a U-Net: ~12 stored tensors of each level's features (two convs,
    their norms and activations, the skip and the decoder's), plus their gradients."""
    voxels = float(torch.tensor(patch).prod())
    per_level = sum(w * voxels / 8**i for i, w in enumerate(doubling_widths(base, levels)))
    bytes_per = 2 if precision == "bf16" else 4
    return 2 * 12 * per_level * batch * bytes_per / 1e9
