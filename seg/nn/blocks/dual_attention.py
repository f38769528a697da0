"""Position and channel attention (DANet, Fu et al. 2019) as used at DAUNet's bottleneck (Bouget et al. 2021).

Global attention over all N voxels costs N x N: affordable at the bottleneck only (8x8x9 at the paper's
input size), which is where DAUNet puts it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from seg.nn.layers import conv_layer, dropout_layer, norm_layer


class PositionAttention(nn.Module):
    """PAM: ``q, k = W x`` (C/8 channels, no bias), ``v = W x`` (C); ``att = softmax_keys(q^T k)``;
    ``out = gamma * (v att^T) + x`` with ``gamma`` a learned scalar starting at 0 (identity at init).

    Shapes: ``[B, C, *S] -> [B, C, *S]``.
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 8) -> None:
        super().__init__()
        inter = max(1, channels // reduction)
        self.q = conv_layer(spatial_dims, channels, inter, 1, bias=False)
        self.k = conv_layer(spatial_dims, channels, inter, 1, bias=False)
        self.v = conv_layer(spatial_dims, channels, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        q = self.q(x).flatten(2).transpose(1, 2)  # [B, N, C']
        k = self.k(x).flatten(2)  # [B, C', N]
        v = self.v(x).flatten(2)  # [B, C, N]
        att = torch.softmax(torch.bmm(q, k), dim=-1)  # [B, N(query), N(key)]
        out = torch.bmm(v, att.transpose(1, 2)).view_as(x)
        return self.gamma * out + x


class ChannelAttention(nn.Module):
    """CAM: ``energy = A A^T`` over channels (C x C), ``att = softmax(energy)``,
    ``out = gamma * (att A) + x`` with ``gamma`` starting at 0.

    Shapes: ``[B, C, *S] -> [B, C, *S]``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.flatten(2)  # [B, C, N]
        att = torch.softmax(torch.bmm(a, a.transpose(1, 2)), dim=-1)  # [B, C, C]
        return self.gamma * torch.bmm(att, a).view_as(x) + x


class DualAttention(nn.Module):
    """DAUNet's bottleneck: PAM and CAM branches, each followed by conv-N-ReLU-dropout-conv, summed,
    dropout, 1x1 conv, N.

    Shapes: ``[B, C, *S] -> [B, C, *S]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        norm: str = "batch",
        dropout: float = 0.5,
        position: bool = True,
        channel: bool = True,
    ) -> None:
        super().__init__()
        if not (position or channel):
            raise ValueError("DualAttention needs the position or the channel branch (or both)")

        def head() -> nn.Sequential:
            return nn.Sequential(
                conv_layer(spatial_dims, channels, channels, 3, padding=1, bias=False),
                norm_layer(norm, spatial_dims, channels),
                nn.ReLU(inplace=True),
                dropout_layer(spatial_dims, dropout),
                conv_layer(spatial_dims, channels, channels, 3, padding=1),
            )

        self.pam = PositionAttention(spatial_dims, channels) if position else None
        self.cam = ChannelAttention() if channel else None
        self.pam_head = head() if position else None
        self.cam_head = head() if channel else None
        self.out = nn.Sequential(
            dropout_layer(spatial_dims, dropout),
            conv_layer(spatial_dims, channels, channels, 1, bias=False),
            norm_layer(norm, spatial_dims, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = 0
        if self.pam is not None:
            y = y + self.pam_head(self.pam(x))
        if self.cam is not None:
            y = y + self.cam_head(self.cam(x))
        return self.out(y)
