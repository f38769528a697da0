"""TransDAE: Azad, Adibfar, Fu, "TransDAE: Dual Attention Mechanism in a Hierarchical Transformer for
Efficient Medical Image Segmentation", arXiv 2409.02018 (2024), built on DAE-Former (Azad et al., 2023).

A hierarchical transformer U-shape, in 2D or 3D (``spatial_dims``): overlapping patch embeddings
(kernels 7, 3, 3; strides 4, 2, 2); stages of dual-attention blocks (efficient attention with spatially
reduced keys/values, then transposed channel attention, each followed by a Mix-FFN with a depthwise
convolution); on the skips an inter-scale interaction module (decomposed large-kernel convolution,
LKA-style, plus efficient cross-attention with queries/keys from the skip and values from the decoder);
a patch-expanding decoder; a final 4x expansion and a 1x1 head. Any input size: the net pads to a
multiple of its total stride and crops the output back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from seg.nn.blocks.conv import crop_to, pad_to_multiple
from seg.nn.layers import conv_layer
from seg.nn.registry import NetCard, register_net


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # [B, C, *S] -> [B, N, C]


def _to_map(t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *size)


class EfficientAttention(nn.Module):
    """Shen et al.'s efficient attention (softmax of queries over channels, of keys over tokens; context
    K^T V, linear in tokens), keys/values from a map reduced by a strided conv (``reduction``).
    With ``cross=True`` values come from a second input (the decoder feature)."""

    def __init__(self, spatial_dims: int, dim: int, heads: int, reduction: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.reduce = conv_layer(spatial_dims, dim, dim, reduction, stride=reduction) if reduction > 1 else None
        self.norm = nn.LayerNorm(dim) if reduction > 1 else nn.Identity()

    def _kv_source(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if self.reduce is None:
            return x
        m = _to_map(x, size)
        if any(s < self.reduce.stride[0] for s in size):
            return x
        return self.norm(_to_tokens(self.reduce(m)))

    def forward(self, x: torch.Tensor, size: Sequence[int], values: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        h = self.heads
        q = self.q(x).reshape(b, n, h, c // h).transpose(1, 2)  # [B, h, N, d]
        src = self._kv_source(x, size)
        k, v = self.kv(src).chunk(2, dim=-1)
        if values is not None:  # cross-attention: values from the decoder feature
            v = self.kv(self._kv_source(values, size)).chunk(2, dim=-1)[1]
        m = k.shape[1]
        k = k.reshape(b, m, h, c // h).transpose(1, 2)
        v = v.reshape(b, m, h, c // h).transpose(1, 2)
        q = q.softmax(dim=-1)  # over channels
        k = k.softmax(dim=-2)  # over tokens
        context = k.transpose(-2, -1) @ v  # [B, h, d, d]
        out = (q @ context).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class TransposedChannelAttention(nn.Module):
    """Transposed (XCiT) attention across channels: L2-normalised q, k, a learned per-head temperature."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        b, n, c = x.shape
        h = self.heads
        q, k, v = self.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 4, 1)  # each [B, h, d, N]
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)  # [B, h, d, d]
        return self.proj((attn @ v).permute(0, 3, 1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """Linear -> depthwise conv 3^d on the token map -> GELU -> Linear."""

    def __init__(self, spatial_dims: int, dim: int, ratio: int = 4) -> None:
        super().__init__()
        hidden = dim * ratio
        self.fc1 = nn.Linear(dim, hidden)
        self.dw = conv_layer(spatial_dims, hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.fc2(F.gelu(_to_tokens(self.dw(_to_map(self.fc1(x), size)))))


class DualAttentionBlock(nn.Module):
    """x += EA(LN x); x += FFN(LN x); x += CA(LN x); x += FFN(LN x)."""

    def __init__(self, spatial_dims: int, dim: int, heads: int, reduction: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.n1, self.n2, self.n3, self.n4 = (nn.LayerNorm(dim) for _ in range(4))
        self.ea = EfficientAttention(spatial_dims, dim, heads, reduction)
        self.ffn1 = MixFFN(spatial_dims, dim, mlp_ratio)
        self.ca = TransposedChannelAttention(dim, heads)
        self.ffn2 = MixFFN(spatial_dims, dim, mlp_ratio)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        x = x + self.ea(self.n1(x), size)
        x = x + self.ffn1(self.n2(x), size)
        x = x + self.ca(self.n3(x), size)
        return x + self.ffn2(self.n4(x), size)


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: conv (kernel k, stride s, padding k//2) -> tokens -> LayerNorm."""

    def __init__(self, spatial_dims: int, in_ch: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = conv_layer(spatial_dims, in_ch, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        y = self.conv(x)
        return self.norm(_to_tokens(y)), tuple(y.shape[2:])


class PatchExpand(nn.Module):
    """Linear to ``out * factor^d`` channels, then pixel shuffle by ``factor`` on every axis, LayerNorm."""

    def __init__(self, spatial_dims: int, dim: int, out: int, factor: int) -> None:
        super().__init__()
        self.d, self.factor, self.out = spatial_dims, factor, out
        self.expand = nn.Linear(dim, out * factor**spatial_dims)
        self.norm = nn.LayerNorm(out)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
        b, f, d = x.shape[0], self.factor, self.d
        t = self.expand(x).reshape(b, *size, *([f] * d), self.out)
        # [B, s1, s2, (s3), f, f, (f), C] -> [B, s1, f, s2, f, (s3, f), C]
        perm = [0] + [i for a in range(d) for i in (1 + a, 1 + d + a)] + [1 + 2 * d]
        new = tuple(s * f for s in size)
        t = t.permute(perm).reshape(b, math.prod(new), self.out)
        return self.norm(t), new


class LargeKernelAttention(nn.Module):
    """LKA-style decomposed large kernel: depthwise 5^d, depthwise 7^d dilated 3, 1x1; ``x * attn``."""

    def __init__(self, spatial_dims: int, dim: int) -> None:
        super().__init__()
        self.dw = conv_layer(spatial_dims, dim, dim, 5, padding=2, groups=dim)
        self.dw_d = conv_layer(spatial_dims, dim, dim, 7, padding=9, dilation=3, groups=dim)
        self.pw = conv_layer(spatial_dims, dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.pw(self.dw_d(self.dw(x)))


class InterScaleInteraction(nn.Module):
    """Fuse a skip (encoder) feature with the decoder feature at its resolution: LKA on the skip plus
    efficient cross-attention (queries/keys from the skip, values from the decoder), then a linear fusion
    of [decoder, interaction]."""

    def __init__(self, spatial_dims: int, dim: int, heads: int) -> None:
        super().__init__()
        self.lka = LargeKernelAttention(spatial_dims, dim)
        self.norm_s, self.norm_d = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.cross = EfficientAttention(spatial_dims, dim, heads, 1)
        self.fuse = nn.Linear(2 * dim, dim)

    def forward(self, skip: torch.Tensor, dec: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        lka = _to_tokens(self.lka(_to_map(skip, size)))
        cross = self.cross(self.norm_s(skip), size, values=self.norm_d(dec))
        return self.fuse(torch.cat([dec, lka + cross], dim=-1))


class TransDAE(nn.Module):
    """TransDAE for 2D or 3D segmentation (see the module docstring).

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: input channels, classes.
        dims: embedding width per stage (paper 2D: 128, 320, 512).
        depths: dual-attention blocks per encoder stage (paper: 2, 2, 2).
        heads: attention heads per stage.
        reductions: spatial reduction of keys/values per stage (efficient attention).
        patch_kernels, patch_strides: the overlapping patch embeddings (7, 3, 3 / 4, 2, 2).
        decoder_depth: dual-attention blocks per decoder stage.
        mlp_ratio: Mix-FFN width factor.

    Shapes: ``[B, in_channels, *S] -> [B, out_channels, *S]`` for any ``S``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        dims: Sequence[int] = (128, 320, 512),
        depths: Sequence[int] = (2, 2, 2),
        heads: Sequence[int] = (2, 5, 8),
        reductions: Sequence[int] = (4, 2, 1),
        patch_kernels: Sequence[int] = (7, 3, 3),
        patch_strides: Sequence[int] = (4, 2, 2),
        decoder_depth: int = 1,
        mlp_ratio: int = 4,
    ) -> None:
        super().__init__()
        n = len(dims)
        if not (len(depths) == len(heads) == len(reductions) == len(patch_kernels) == len(patch_strides) == n):
            raise ValueError(
                "TransDAE: dims, depths, heads, reductions, patch_kernels, patch_strides need one value per stage"
            )
        for d, h in zip(dims, heads):
            if d % h:
                raise ValueError(f"TransDAE: dim {d} not divisible by heads {h}")
        self.spatial_dims = spatial_dims
        self.multiple = math.prod(patch_strides)
        self.embeds = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.norms = nn.ModuleList()
        ch = in_channels
        for i in range(n):
            self.embeds.append(PatchEmbed(spatial_dims, ch, dims[i], patch_kernels[i], patch_strides[i]))
            self.stages.append(
                nn.ModuleList(
                    DualAttentionBlock(spatial_dims, dims[i], heads[i], reductions[i], mlp_ratio)
                    for _ in range(depths[i])
                )
            )
            self.norms.append(nn.LayerNorm(dims[i]))
            ch = dims[i]
        self.expands = nn.ModuleList()
        self.fusions = nn.ModuleList()
        self.dec_stages = nn.ModuleList()
        for i in reversed(range(n - 1)):  # from the deepest stage up to stage 0
            self.expands.append(PatchExpand(spatial_dims, dims[i + 1], dims[i], patch_strides[i + 1]))
            self.fusions.append(InterScaleInteraction(spatial_dims, dims[i], heads[i]))
            self.dec_stages.append(
                nn.ModuleList(
                    DualAttentionBlock(spatial_dims, dims[i], heads[i], reductions[i], mlp_ratio)
                    for _ in range(decoder_depth)
                )
            )
        self.final = PatchExpand(spatial_dims, dims[0], dims[0], patch_strides[0])
        self.head = conv_layer(spatial_dims, dims[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[2:])
        x = pad_to_multiple(x, [self.multiple] * len(shape))
        skips = []
        for embed, blocks, norm in zip(self.embeds, self.stages, self.norms):
            t, size = embed(x)
            for blk in blocks:
                t = blk(t, size)
            t = norm(t)
            skips.append((t, size))
            x = _to_map(t, size)
        t, size = skips[-1]
        for j, (expand, fuse, blocks) in enumerate(zip(self.expands, self.fusions, self.dec_stages)):
            skip, skip_size = skips[-2 - j]
            t, size = expand(t, size)
            t = fuse(skip, t, size)
            for blk in blocks:
                t = blk(t, size)
        t, size = self.final(t, size)
        return crop_to(self.head(_to_map(t, size)), shape)


def _transdae_width(base: int, levels: int) -> dict:
    """Stage widths 4b, 8b, 16b (b = 8: the light3d preset's 32, 64, 128), 32 per head at b >= 8."""
    h = max(1, base // 8)
    return {"dims": [4 * base, 8 * base, 16 * base], "heads": [h, 2 * h, 4 * h]}


@register_net(
    "transdae",
    NetCard(
        _transdae_width,
        export="its window partition exports with the first input's sizes baked in: ONNX Runtime fails at a "
        "second input size (Transpose shape mismatch), so no dynamic spatial axes",
        defaults={
            "spatial_dims": 3,
            "preset": "light3d",
            "patch_kernels": [7, 3, 3],
            "patch_strides": [4, 2, 2],
            "decoder_depth": 1,
            "mlp_ratio": 4,
        },
        summary="TransDAE (Azad et al. 2024), the light 3D preset",
    ),
)
def transdae(spatial_dims: int = 2, preset: str | None = None, **kwargs) -> TransDAE:
    """TransDAE; ``preset="light3d"`` is the lighter 3D configuration for CPU-sized volumes."""
    if preset == "light3d" or (preset is None and spatial_dims == 3):
        defaults = {"dims": (32, 64, 128), "depths": (1, 1, 1), "heads": (1, 2, 4), "reductions": (4, 2, 1)}
        kwargs = {**defaults, **kwargs}
    elif preset not in (None, "paper2d"):
        raise ValueError(f"transdae: unknown preset {preset!r} (paper2d, light3d)")
    return TransDAE(spatial_dims=spatial_dims, **kwargs)
