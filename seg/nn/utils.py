"""Inference-time helpers for the networks (plain PyTorch)."""

from __future__ import annotations

import copy

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


def prepare_for_inference(net: nn.Module, channels_last: bool = True) -> nn.Module:
    """A copy of ``net`` for fast inference on CPU/GPU: eval mode, conv+BN fused, channels-last 3D."""
    net = fuse_conv_bn(net)
    if channels_last:
        fmt = torch.channels_last_3d if any(isinstance(m, nn.Conv3d) for m in net.modules()) else torch.channels_last
        net = net.to(memory_format=fmt)
    return net
