"""Attention gate of AGUNet (Bouget et al. 2021), after Oktay et al. (Attention U-Net, 2018)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from seg.nn.layers import Gate, check_option, conv_layer, norm_layer


class AttentionGate(nn.Module):
    """Gate a skip feature with the (already upsampled) decoder feature.

    ``g1 = N(W_g g)``, ``x1 = N(W_x x)``, ``psi = sigmoid(N(W_psi ReLU(combine(g1, x1))))`` with one
    channel, ``out = x * psi`` (one coefficient per voxel, broadcast over channels). ``combine`` is
    concatenation (the original AGUNet code) or addition (Oktay et al., MONAI's AttentionUnet).

    Args:
        spatial_dims: 2 or 3.
        g_channels: channels of the gating (decoder) feature.
        x_channels: channels of the skip feature.
        inter_channels: F_int (the paper: half the level's filters).
        mode: "concat" or "add".
        norm: normalisation after each 1x1 conv.

    Shapes: ``g [B, Cg, *S]``, ``x [B, Cx, *S]`` -> ``[B, Cx, *S]``; ``last_psi`` keeps ``[B, 1, *S]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        g_channels: int,
        x_channels: int,
        inter_channels: int,
        mode: str = "concat",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.mode = check_option("gate_mode", mode, Gate)
        if self.mode == Gate.NONE:
            raise ValueError("gate_mode='none' means no gate: do not build an AttentionGate")
        self.w_g = nn.Sequential(
            conv_layer(spatial_dims, g_channels, inter_channels, 1, bias=False),
            norm_layer(norm, spatial_dims, inter_channels),
        )
        self.w_x = nn.Sequential(
            conv_layer(spatial_dims, x_channels, inter_channels, 1, bias=False),
            norm_layer(norm, spatial_dims, inter_channels),
        )
        psi_in = 2 * inter_channels if mode == "concat" else inter_channels
        self.psi = nn.Sequential(conv_layer(spatial_dims, psi_in, 1, 1, bias=True), norm_layer(norm, spatial_dims, 1))
        self.last_psi: torch.Tensor | None = None

    def coefficients(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # ReLU and the add are in place (norm and conv backward do not need their outputs): fewer F_int maps
        g1, x1 = self.w_g(g), self.w_x(x)
        if self.mode == "add":
            h = self.psi[0](torch.relu_(g1.add_(x1)))
        else:
            # psi's 1x1 conv over concat[g1, x1] is the sum of its two halves applied to g1 and x1: no
            # concatenated 2 * F_int map is ever built (same weights, same result, less memory and time)
            conv = self.psi[0]
            conv_fn = F.conv3d if g1.ndim == 5 else F.conv2d
            w = conv.weight
            h = conv_fn(torch.relu_(g1), w[:, : g1.shape[1]]) + conv_fn(torch.relu_(x1), w[:, g1.shape[1] :], conv.bias)
        del g1, x1
        return torch.sigmoid(self.psi[1:](h))

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        psi = self.coefficients(g, x)
        self.last_psi = psi.detach()
        return x * psi
