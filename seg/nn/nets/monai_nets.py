"""MONAI's UNet, AttentionUnet and SwinUNETR registered by name as baselines.

They need sizes divisible by their total stride; the wrapper pads the input and crops the output so
they run on any size, like the project's own networks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from seg.nn.blocks import crop_to, pad_to_multiple
from seg.nn.registry import NetCard, filters_rule, register_net


class PadCrop(nn.Module):
    """Pad the input's spatial axes to a multiple of ``multiple`` (and at least ``min_size``), run ``net``,
    crop its output back."""

    def __init__(self, net: nn.Module, multiple: int, min_size: int = 0) -> None:
        super().__init__()
        self.net = net
        self.multiple = multiple
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[2:]
        if self.min_size and min(shape) < self.min_size:
            pads = [p for s in reversed(shape) for p in (0, max(0, self.min_size - s))]
            x = torch.nn.functional.pad(x, pads)
        y = self.net(pad_to_multiple(x, [self.multiple] * len(shape)))
        return crop_to(y, shape)


@register_net(
    "monai_unet",
    NetCard(
        filters_rule("channels"),
        defaults={"spatial_dims": 3, "channels": [16, 32, 64, 128, 256], "num_res_units": 2, "norm": "batch"},
        summary="MONAI's residual UNet",
    ),
)
def monai_unet(
    spatial_dims: int = 3,
    in_channels: int = 1,
    out_channels: int = 2,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    num_res_units: int = 2,
    norm: str = "batch",
    dropout: float = 0.0,
) -> nn.Module:
    from monai.networks.nets import UNet as MonaiUNet

    net = MonaiUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=num_res_units,
        norm=norm,
        dropout=dropout,
    )
    return PadCrop(net, 2 ** (len(channels) - 1))


@register_net(
    "monai_attention_unet",
    NetCard(
        filters_rule("channels"),
        defaults={"spatial_dims": 3, "channels": [16, 32, 128, 256, 256]},
        summary="MONAI's AttentionUnet (Oktay et al.)",
    ),
)
def monai_attention_unet(
    spatial_dims: int = 3,
    in_channels: int = 1,
    out_channels: int = 2,
    channels: Sequence[int] = (16, 32, 128, 256, 256),
    dropout: float = 0.0,
) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    net = AttentionUnet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=(2,) * (len(channels) - 1),
        dropout=dropout,
    )
    return PadCrop(net, 2 ** (len(channels) - 1))


def _swin_width(base: int, levels: int) -> dict:
    """feature_size divisible by 12 (its heads); base 8 -> 24, MONAI's default."""
    return {"feature_size": max(12, 12 * round(3 * base / 12))}


@register_net(
    "swinunetr",
    NetCard(
        _swin_width,
        export="MONAI's SwinUNETR export takes ~4 minutes and its softmax differs from PyTorch's by up to "
        "3e-4 (> 1e-4) at random weights",
        defaults={"spatial_dims": 3, "feature_size": 24},
        summary="MONAI's SwinUNETR",
    ),
)
def swinunetr(
    spatial_dims: int = 3,
    in_channels: int = 1,
    out_channels: int = 2,
    feature_size: int = 24,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    use_checkpoint: bool = False,
) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    net = SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        feature_size=feature_size,
        depths=tuple(depths),
        num_heads=tuple(num_heads),
        spatial_dims=spatial_dims,
        use_checkpoint=use_checkpoint,
    )
    # its instance-normed bottleneck needs more than one voxel: at least 64 per axis
    return PadCrop(net, 32, min_size=64)
