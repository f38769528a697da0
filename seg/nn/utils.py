"""Inference-time helpers for the networks (plain PyTorch)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONVS = (nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm2d, nn.BatchNorm3d)


def fuse_conv_bn(net: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution inside an ``nn.Sequential`` into it.

    Valid in eval mode only (BN then is an affine map per channel); the result computes the same
    function with one pass over memory less per conv. Returns the fused network in eval mode.
    """
    if not inplace:
        net = copy.deepcopy(net)
    net.eval()
    for module in list(net.modules()):
        if hasattr(module, "fold_bn"):  # modules that know their own conv -> BN pairs (e.g. DecoderLevel)
            module.fold_bn()
    for module in net.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, _CONVS) and isinstance(bn, _BNS) and bn.track_running_stats:
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = nn.Identity()
    return net


class TwoChannelConv3d(nn.Module):
    """A 3D conv with one input channel, run as a conv with two (the second all zeros, its weights zero).

    Why: PyTorch 2.13 sends a 1-channel 3D convolution on the CPU to ``slow_conv3d`` (im2col + gemm,
    ~9 GFLOP/s here) instead of oneDNN; with a zero second channel oneDNN takes it, and the first conv of
    the paper's U-Net at 128x128x144 drops from ~0.33 s to ~0.10 s. Same outputs (the extra channel adds 0).
    """

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            2, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=conv.bias is not None
        ).to(conv.weight.device, conv.weight.dtype)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :1].copy_(conv.weight)
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x, torch.zeros_like(x)], 1))


def _widen_single_channel_convs(net: nn.Module) -> None:
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if (
                isinstance(child, nn.Conv3d)
                and child.in_channels == 1
                and child.groups == 1
                and child.padding_mode == "zeros"
                and math.prod(child.kernel_size) > 1
            ):
                setattr(parent, name, TwoChannelConv3d(child))


def prepare_for_inference(net: nn.Module, channels_last: bool = True) -> nn.Module:
    """A copy of ``net`` for fast inference on CPU/GPU: eval mode, conv+BN fused, 1-channel 3D convs widened
    to 2 (see :class:`TwoChannelConv3d`), channels-last 3D."""
    net = fuse_conv_bn(net)
    _widen_single_channel_convs(net)
    if channels_last:
        fmt = torch.channels_last_3d if any(isinstance(m, nn.Conv3d) for m in net.modules()) else torch.channels_last
        net = net.to(memory_format=fmt)
    return net


def cuda_hygiene(device: torch.device | str, fixed_shapes: bool = True) -> None:
    """On CUDA: TF32 for float32 matmuls and convolutions (``high``: ~3x the fp32 rate on Ampere/Hopper at a
    precision segmentation does not notice) and cuDNN's autotuner when the input shapes are fixed (training
    patches: it picks the fastest convolution algorithm once per shape). Nothing on the CPU."""
    if torch.device(device).type != "cuda":
        return
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = bool(fixed_shapes)
