"""Window Attention Upsample (WAU): Li et al., "More than Encoder: Introducing Transformer Decoder to
Upsample", BIBM 2022 (arXiv 2106.10637).

output = AttentionDecoder(queries from the high-resolution skip, keys/values from the low-resolution
decoder feature; pre-norm attention + MLP) + trilinear (bilinear) upsampling of the low-resolution
feature (the residual). Windowed: a w^d query window of the high-resolution map attends to the
spatially matching (w/f)^d window of the low-resolution map (f = the upsampling factor per axis;
block aligned, no mask). Global: every query attends to every low-resolution position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from seg.nn.blocks.conv import crop_to, pad_to_multiple
from seg.nn.layers import conv_layer, ensure_tuple


class WindowAttentionUpsample(nn.Module):
    """Upsample ``low`` to ``skip``'s grid with attention from the skip (see the module docstring).

    Args:
        spatial_dims: 2 or 3.
        low_channels: channels of the low-resolution decoder feature.
        skip_channels: channels of the high-resolution skip feature.
        out_channels: channels of the output (the attention's width; divisible by ``heads``).
        heads: attention heads.
        window: high-resolution window size per axis (even), or None for global attention.
        mlp_ratio: hidden width of the MLP.

    Shapes: ``low [B, C_low, *s]``, ``skip [B, C_skip, *S]`` with ``S = s * stride`` -> ``[B, C_out, *S]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        low_channels: int,
        skip_channels: int,
        out_channels: int,
        heads: int = 4,
        window: int | Sequence[int] | None = 8,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        if out_channels % heads:
            raise ValueError(f"WAU: out_channels={out_channels} is not divisible by heads={heads}")
        self.spatial_dims = spatial_dims
        self.window = None if window is None else ensure_tuple(window, spatial_dims, "window")
        if self.window is not None and any(w % 2 for w in self.window):
            raise ValueError(f"WAU: window sizes must be even, got {list(self.window)}")
        self.heads = heads
        self.low_proj = conv_layer(spatial_dims, low_channels, out_channels, 1)
        self.q_proj_in = conv_layer(spatial_dims, skip_channels, out_channels, 1)
        self.norm_q = nn.LayerNorm(out_channels)
        self.norm_kv = nn.LayerNorm(out_channels)
        self.attn = nn.MultiheadAttention(out_channels, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(out_channels)
        hidden = int(out_channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(out_channels, hidden), nn.GELU(), nn.Linear(hidden, out_channels))

    def interpolate(self, low: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        mode = "trilinear" if low.ndim == 5 else "bilinear"
        return F.interpolate(low, size=list(size), mode=mode, align_corners=False)

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        size = skip.shape[2:]
        factors = [max(1, round(S / s)) for S, s in zip(size, low.shape[2:])]
        low = self.low_proj(low)
        residual = self.interpolate(low, size)
        q = self.q_proj_in(skip)
        if self.window is None:
            att = self._attend_global(q, low)
        else:
            att = self._attend_windows(q, low, factors)
        y = residual + att
        t = y.flatten(2).transpose(1, 2)
        t = t + self.mlp(self.norm_mlp(t))
        return t.transpose(1, 2).reshape_as(y)

    def _mha(self, q_tokens: torch.Tensor, kv_tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(kv_tokens)
        return self.attn(self.norm_q(q_tokens), kv, kv, need_weights=False)[0]

    def _attend_global(self, q: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        b, c = q.shape[:2]
        out = self._mha(q.flatten(2).transpose(1, 2), low.flatten(2).transpose(1, 2))
        return out.transpose(1, 2).reshape(b, c, *q.shape[2:])

    def _attend_windows(self, q: torch.Tensor, low: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
        size = q.shape[2:]
        # high-res windows of w, low-res windows of w / f (a window never larger than the map)
        w_low = [max(1, min(w // f, s)) for s, w, f in zip(low.shape[2:], self.window, factors)]
        w_high = [wl * f for wl, f in zip(w_low, factors)]
        if any(S != s * f for S, s, f in zip(size, low.shape[2:], factors)):
            raise ValueError(
                f"WAU: skip grid {list(size)} is not the low-resolution grid {list(low.shape[2:])} x {factors}"
            )
        qp = pad_to_multiple(q, w_high)  # same number of windows on both maps, since S = s * f
        lp = pad_to_multiple(low, w_low)
        qt = _windows(qp, w_high)  # [B * nW, w_high^d, C]
        kt = _windows(lp, w_low)
        out = self._mha(qt, kt)
        return crop_to(_unwindows(out, w_high, qp.shape), size)


def _windows(x: torch.Tensor, w: Sequence[int]) -> torch.Tensor:
    """``[B, C, *S]`` -> ``[B * prod(S / w), prod(w), C]`` (block-aligned windows)."""
    b, c = x.shape[:2]
    d = len(w)
    shape = [b, c]
    for s, wi in zip(x.shape[2:], w):
        shape += [s // wi, wi]
    x = x.reshape(shape)
    # [B, C, n1, w1, n2, w2, ...] -> [B, n1, n2, ..., w1, w2, ..., C]
    perm = [0] + [2 + 2 * i for i in range(d)] + [3 + 2 * i for i in range(d)] + [1]
    x = x.permute(perm)
    return x.reshape(-1, math.prod(w), c)


def _unwindows(t: torch.Tensor, w: Sequence[int], shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`_windows` for a map of ``shape`` ``[B, C, *S]``."""
    b, c = shape[:2]
    d = len(w)
    n = [s // wi for s, wi in zip(shape[2:], w)]
    x = t.reshape(b, *n, *w, c)
    # [B, n1, n2, ..., w1, w2, ..., C] -> [B, C, n1, w1, n2, w2, ...]
    perm = [0, 1 + 2 * d]
    for i in range(d):
        perm += [1 + i, 1 + d + i]
    return x.permute(perm).reshape(shape)
