"""Convolution blocks of the AGUNet paper's backbone, and the size bookkeeping that lets it run on any size."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from seg.nn.layers import conv_layer, conv_transpose_layer, dropout_layer, norm_layer


class ConvBlock(nn.Sequential):
    """``n`` x (Conv 3^d 'same' -> Norm -> ReLU), then optional spatial dropout (the paper's block, n=2).

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        norm: "batch", "instance" or "none".
        dropout: spatial dropout probability after the block.
        n_convs: number of conv-norm-ReLU units.

    Shapes: ``[B, C_in, *S] -> [B, C_out, *S]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm: str = "batch",
        dropout: float = 0.0,
        n_convs: int = 2,
    ) -> None:
        layers: list[nn.Module] = []
        ch = in_channels
        for _ in range(n_convs):
            layers += [
                conv_layer(spatial_dims, ch, out_channels, 3, padding=1, bias=norm == "none"),
                norm_layer(norm, spatial_dims, out_channels),
                nn.ReLU(inplace=True),
            ]
            ch = out_channels
        if dropout > 0:
            layers.append(dropout_layer(spatial_dims, dropout))
        super().__init__(*layers)


class UpConv(nn.Module):
    """Transposed convolution (kernel 3) whose stride is chosen per call and per axis (2 or 1).

    The paper does not pool an axis of 4 voxels or fewer, so which axes are upsampled depends on the
    input size; the weights do not, so one module serves every size.

    Shapes: ``[B, C_in, *S] -> [B, C_out, *(S * stride)]``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.conv = conv_transpose_layer(spatial_dims, in_channels, out_channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
        fn = F.conv_transpose3d if self.spatial_dims == 3 else F.conv_transpose2d
        stride = tuple(stride)
        return fn(
            x,
            self.conv.weight,
            self.conv.bias,
            stride=stride,
            padding=1,
            output_padding=tuple(s - 1 for s in stride),
        )


def pool_plan(shape: Sequence[int], n_pools: int, min_size: int = 4) -> list[tuple[int, ...]]:
    """Per-level pooling factors (2 or 1 per axis): an axis of ``min_size`` voxels or fewer is not pooled.

    Args:
        shape: spatial input shape.
        n_pools: number of pooling steps (levels - 1).
        min_size: axes at or below this size are left alone.

    Returns:
        ``n_pools`` tuples of per-axis factors.
    """
    plan = []
    size = list(shape)
    for _ in range(n_pools):
        factors = tuple(2 if s > min_size else 1 for s in size)
        size = [math.ceil(s / f) for s, f in zip(size, factors)]
        plan.append(factors)
    return plan


def pad_to_multiple(x: torch.Tensor, multiple: Sequence[int], mode: str = "constant") -> torch.Tensor:
    """Pad the spatial axes of ``x`` ([B, C, *S]) at the end up to a multiple of ``multiple``."""
    pads: list[int] = []
    for s, m in zip(reversed(x.shape[2:]), reversed(tuple(multiple))):
        pads += [0, (-s) % m]
    if not any(pads):
        return x
    return F.pad(x, pads, mode=mode)


def crop_to(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Crop the spatial axes of ``x`` ([B, C, *S]) to ``shape`` from the start."""
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    return x[(slice(None), slice(None)) + tuple(slice(0, s) for s in shape)]
