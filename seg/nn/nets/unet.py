"""The U-Net backbone of the AGUNet paper, for 2D and 3D.

Bouget et al., "Meningioma segmentation in T1-weighted MRI leveraging global context and attention
mechanisms", Front. Radiol. 2021 (arXiv 2101.07715). Backbone from the original code: conv block =
2 x (conv 3^d -> BN -> ReLU); encoder level = block (kept as skip) -> max-pool 2 (an axis of 4 voxels or
fewer is not pooled); decoder level = transposed conv (k 3, stride 2) -> concat skip -> BN -> ReLU -> block;
1x1 head. The network pads its input to the size its pooling needs and crops the output back, so it
runs on any size (e.g. 37x50x29).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from seg.nn.blocks import ConvBlock, UpConv, crop_to, pad_to_multiple, pool_plan
from seg.nn.layers import check_option, conv_layer, norm_layer, Option
from seg.nn.registry import register_net

PAPER_FILTERS = (16, 32, 128, 256, 256)


class DecoderLevel(nn.Module):
    """Upsample the deeper feature, fuse it with the skip, then a conv block.

    Without a gate this is the paper's order (up -> concat -> BN -> ReLU -> block). A subclass or a
    ``gate`` module may gate the skip with the upsampled feature (AGUNet).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        norm: str,
        dropout: float,
        upsample: str = "transpose",
    ) -> None:
        super().__init__()
        check_option("upsample", upsample, ("transpose", "trilinear"))
        self.upsample = upsample
        if upsample == "transpose":
            self.up = UpConv(spatial_dims, in_channels, out_channels)
        else:
            self.up = conv_layer(spatial_dims, in_channels, out_channels, 1)
        self.post_concat = nn.Sequential(
            norm_layer(norm, spatial_dims, out_channels + skip_channels), nn.ReLU(inplace=True)
        )
        self.block = ConvBlock(spatial_dims, out_channels + skip_channels, out_channels, norm, dropout)

    def upsample_to(self, x: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
        if self.upsample == "transpose":
            return self.up(x, stride)
        size = [s * f for s, f in zip(x.shape[2:], stride)]
        mode = "trilinear" if x.ndim == 5 else "bilinear"
        return self.up(F.interpolate(x, size=size, mode=mode, align_corners=False))

    def forward(self, x: torch.Tensor, skip: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
        g = self.upsample_to(x, stride)
        return self.block(self.post_concat(torch.cat([g, skip], dim=1)))


class UNet(nn.Module):
    """The paper's U-Net backbone.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: classes (logits out, softmax is the loss's job).
        filters: filters per level, top to bottom (paper: 16, 32, 128, 256, 256).
        norm: "batch" (paper), "instance" or "none".
        dropout: spatial dropout after each conv block.
        deep_supervision: in training, return a list of logits, one per decoder level, full
            resolution first; in eval the full-resolution tensor only.
        upsample: "transpose" (paper) or "trilinear" (interpolation then 1x1 conv).
        min_pool_size: an axis of this many voxels or fewer is not pooled.

    Shapes: ``[B, in_channels, *S] -> [B, out_channels, *S]`` for any ``S``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        filters: Sequence[int] = PAPER_FILTERS,
        norm: str = "batch",
        dropout: float = 0.0,
        deep_supervision: bool = False,
        upsample: str = "transpose",
        min_pool_size: int = 4,
    ) -> None:
        super().__init__()
        check_option("norm", norm, Option.NORMS)
        filters = [int(f) for f in filters]
        if len(filters) < 2:
            raise ValueError(f"filters needs at least 2 levels, got {filters}")
        self.spatial_dims = spatial_dims
        self.filters = filters
        self.deep_supervision = deep_supervision
        self.min_pool_size = min_pool_size
        self.encoder = nn.ModuleList()
        ch = in_channels
        for f in filters:
            self.encoder.append(ConvBlock(spatial_dims, ch, f, norm, dropout))
            ch = f
        self.decoder = nn.ModuleList()
        for level in reversed(range(len(filters) - 1)):
            self.decoder.append(
                self.make_decoder_level(level, filters[level + 1], filters[level], filters[level], norm, dropout, upsample)
            )
        n_heads = len(filters) - 1 if deep_supervision else 1
        # heads[0] is full resolution; heads[i] sits on decoder level i (top = 0).
        self.heads = nn.ModuleList(conv_layer(spatial_dims, filters[i], out_channels, 1) for i in range(n_heads))

    def make_decoder_level(self, level, in_ch, skip_ch, out_ch, norm, dropout, upsample) -> nn.Module:
        return DecoderLevel(self.spatial_dims, in_ch, skip_ch, out_ch, norm, dropout, upsample)

    def pool(self, x: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
        if all(f == 1 for f in factors):
            return x
        fn = F.max_pool3d if x.ndim == 5 else F.max_pool2d
        return fn(x, kernel_size=tuple(factors), stride=tuple(factors))

    def encode(self, x: torch.Tensor, plan: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Run the encoder; returns the features of every level, top first."""
        feats = []
        for i, block in enumerate(self.encoder):
            if i > 0:
                x = self.pool(x, plan[i - 1])
            x = block(x)
            feats.append(x)
        return feats

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        shape = tuple(x.shape[2:])
        plan = pool_plan(shape, len(self.filters) - 1, self.min_pool_size)
        multiple = [math.prod(p[a] for p in plan) for a in range(len(shape))]
        x = pad_to_multiple(x, multiple)
        feats = self.encode(x, plan)
        y = self.bottleneck(feats[-1])
        outs: list[torch.Tensor] = []
        n_levels = len(self.filters)
        for j, dec in enumerate(self.decoder):
            level = n_levels - 2 - j
            y = dec(y, feats[level], plan[level])
            if self.deep_supervision and self.training and level < len(self.heads):
                outs.append(self.heads[level](y))
        if not (self.deep_supervision and self.training):
            return crop_to(self.heads[0](y), shape)
        outs.reverse()  # full resolution first
        result = []
        for level, o in enumerate(outs):
            factor = [math.prod(p[a] for p in plan[:level]) for a in range(len(shape))]
            result.append(crop_to(o, [math.ceil(s / f) for s, f in zip(shape, factor)]))
        return result


@register_net("unet")
def unet(**kwargs) -> UNet:
    """The AGUNet paper's U-Net backbone (no attention)."""
    return UNet(**kwargs)
