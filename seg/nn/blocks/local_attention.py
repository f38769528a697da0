"""3D local (neighbourhood) attention block for any U-Net level: norm, qkv, ``seg.ops.local_attn3d``,
output projection, residual. The block owns the channels-first <-> heads-last permutes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from seg.nn.layers import ensure_tuple
from seg.ops import local_attn3d


class LocalAttention3d(nn.Module):
    """``x + proj(NA(norm(x)))`` with neighbourhood attention in a ``kernel_size`` window.

    Args:
        channels: C (divisible by ``heads``).
        heads: attention heads.
        kernel_size: odd window per axis; on an axis shorter than the window the window shrinks to the
            largest odd size that fits (deep levels of small inputs).
        dilation: window dilation.
        spatial_dims: 3, or 2 (run as a one-slice volume with a window of 1 on that axis).
        backend: passed to :func:`seg.ops.local_attn3d` (None: by capability).

    Shapes: ``[B, C, *S] -> [B, C, *S]``.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 4,
        kernel_size: int | Sequence[int] = 7,
        dilation: int = 1,
        spatial_dims: int = 3,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"LocalAttention3d: channels={channels} not divisible by heads={heads}")
        self.heads, self.spatial_dims, self.dilation, self.backend = heads, spatial_dims, dilation, backend
        self.kernel = ensure_tuple(kernel_size, spatial_dims, "kernel_size")
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def _fit_kernel(self, sizes: Sequence[int]) -> tuple[int, ...]:
        out = []
        for k, n in zip(self.kernel, sizes):
            fit = max(1, n // self.dilation)
            k = min(k, fit if fit % 2 else fit - 1)
            out.append(max(1, k))
        return tuple(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.spatial_dims == 3 else x.unsqueeze(2)  # [B, C, 1, H, W] in 2D
        b, c = y.shape[:2]
        sizes = y.shape[2:]
        kernel = self._fit_kernel(sizes) if self.spatial_dims == 3 else (1, *self._fit_kernel(sizes[1:]))
        t = y.permute(0, 2, 3, 4, 1)  # [B, D, H, W, C]
        qkv = self.qkv(self.norm(t)).reshape(b, *sizes, 3, self.heads, c // self.heads)
        q, k, v = qkv.unbind(4)
        dilation = (1, self.dilation, self.dilation) if self.spatial_dims == 2 else (self.dilation,) * 3
        o = local_attn3d(q, k, v, kernel, dilation=dilation, backend=self.backend)
        o = self.proj(o.reshape(b, *sizes, c)).permute(0, 4, 1, 2, 3)
        out = y + o
        return out if self.spatial_dims == 3 else out.squeeze(2)
