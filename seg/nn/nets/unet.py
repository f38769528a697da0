"""The U-Net family of the AGUNet paper: U-Net backbone, AGUNet, DAUNet (and DAGUNet), in 2D and 3D.

Bouget et al., "Meningioma segmentation in T1-weighted MRI leveraging global context and attention
mechanisms", Front. Radiol. 2021 (arXiv 2101.07715). Backbone from the original code: conv block =
2 x (conv 3^d -> BN -> ReLU); encoder level = block (kept as skip) -> max-pool 2 (an axis of 4 voxels or
fewer is not pooled); decoder level = transposed conv (k 3, stride 2) -> concat skip -> BN -> ReLU ->
block; 1x1 head. Each concept of the paper is a switch, so every ablation is one flag:

- ``attention_gate``: gate every skip with the upsampled decoder feature ("concat" as in the original
  code, "add" as in Oktay et al.), F_int = half the level's filters (AGUNet).
- ``bottleneck_attention``: position + channel attention at the bottleneck (DAUNet), or one of them.
- ``guided``: bottleneck output upsampled to every decoder level and concatenated there (DAGUNet).
- ``multiscale_input``: average-pooled input pyramid, conv 3^d + ReLU, concatenated at each encoder level.
- ``deep_supervision``: a 1x1 head per decoder level; a list (full resolution first) in training, the
  full-resolution tensor in eval.

The network pads its input to the size its pooling needs and crops the output back, so it runs on any
size (e.g. 37x50x29).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from seg.nn.blocks import AttentionGate, ConvBlock, DualAttention, UpConv, crop_to, pad_to_multiple, pool_plan
from seg.nn.blocks.local_attention import LocalAttention3d
from seg.nn.blocks.window_attention_upsample import WindowAttentionUpsample
from seg.nn.layers import Bottleneck, Gate, Norm, Upsample, check_option, conv_layer, conv_transpose_layer, norm_layer
from seg.nn.registry import NetCard, filters_rule, register_net

PAPER_FILTERS = (16, 32, 128, 256, 256)


class DecoderLevel(nn.Module):
    """Upsample the deeper feature, (gate the skip,) concatenate, conv block.

    Without a gate: the paper's order up -> concat -> BN -> ReLU -> block. With a gate: up -> BN -> ReLU
    (= g) -> gate(g, skip) -> concat[g, gated] -> block. A guide feature (DAGUNet) joins the concat.
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
        gate: str = "none",
        guide_channels: int = 0,
        wau_heads: int = 4,
        wau_window: int | None = 8,
    ) -> None:
        super().__init__()
        check_option("upsample", upsample, Upsample)
        gate = check_option("attention_gate", gate, Gate)
        self.upsample = upsample
        if upsample == "transpose":
            self.up = UpConv(spatial_dims, in_channels, out_channels)
        elif upsample == "wau":
            heads = max(1, min(wau_heads, out_channels // 4))
            while out_channels % heads:
                heads -= 1
            self.up = WindowAttentionUpsample(spatial_dims, in_channels, skip_channels, out_channels, heads, wau_window)
        else:
            self.up = conv_layer(spatial_dims, in_channels, out_channels, 1)
        cat_ch = out_channels + skip_channels + guide_channels
        if gate != "none":
            self.up_act = nn.Sequential(norm_layer(norm, spatial_dims, out_channels), nn.ReLU(inplace=True))
            self.gate = AttentionGate(spatial_dims, out_channels, skip_channels, max(1, out_channels // 2), gate, norm)
            self.post_concat = nn.Identity()
        else:
            self.up_act = nn.Identity()
            self.gate = None
            self.post_concat = nn.Sequential(norm_layer(norm, spatial_dims, cat_ch), nn.ReLU(inplace=True))
        self.block = ConvBlock(spatial_dims, cat_ch, out_channels, norm, dropout)

    def fold_bn(self) -> None:
        """Eval only: fold the BatchNorm after the transposed conv (gated levels) into its weights."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        if (
            self.upsample == "transpose"
            and isinstance(self.up_act, nn.Sequential)
            and isinstance(self.up_act[0], (nn.BatchNorm2d, nn.BatchNorm3d))
        ):
            self.up.conv = fuse_conv_bn_eval(self.up.conv, self.up_act[0], transpose=True)
            self.up_act[0] = nn.Identity()

    def upsample_to(self, x: torch.Tensor, stride: Sequence[int], skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.upsample == "transpose":
            return self.up(x, stride)
        if self.upsample == "wau":
            return self.up(x, skip)
        size = [s * f for s, f in zip(x.shape[2:], stride)]
        mode = "trilinear" if x.ndim == 5 else "bilinear"
        return self.up(F.interpolate(x, size=size, mode=mode, align_corners=False))

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor, stride: Sequence[int], guide: torch.Tensor | None = None
    ) -> torch.Tensor:
        g = self.up_act(self.upsample_to(x, stride, skip))
        if self.gate is not None:
            skip = self.gate(g, skip)
        h = self.post_concat(torch.cat([g, skip] if guide is None else [g, skip, guide], 1))
        # Memory: drop the parts before the block runs and step through the block by hand, so the
        # concatenation is freed as soon as the first conv has read it (calling self.block(h) would keep
        # it alive in the call's argument tuple until the whole block returns). At the top level of a
        # 128x128x144 volume this is ~300 MB of the inference peak; autograd keeps what it needs anyway.
        del g, skip, guide
        for layer in self.block:
            h = layer(h)
        return h


class GuideUp(nn.Module):
    """DAGUNet: transposed conv from the bottleneck straight to a decoder level (kernel = stride = 2^k).

    A 1x1 conv first reduces the bottleneck to ``reduced`` channels: a 16^3 kernel from 256 channels
    would cost ~16 M parameters per level. Axes that were not pooled get a smaller stride; the extra
    border is cropped centrally.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, factor: int, reduced: int = 16) -> None:
        super().__init__()
        self.factor = factor
        reduced = min(reduced, in_channels)
        self.reduce = conv_layer(spatial_dims, in_channels, reduced, 1)
        self.conv = conv_transpose_layer(spatial_dims, reduced, out_channels, factor, stride=factor)
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
        fn = F.conv_transpose3d if self.spatial_dims == 3 else F.conv_transpose2d
        y = fn(self.reduce(x), self.conv.weight, self.conv.bias, stride=tuple(stride))
        target = [s * f for s, f in zip(x.shape[2:], stride)]
        sl = tuple(slice((o - t) // 2, (o - t) // 2 + t) for o, t in zip(y.shape[2:], target))
        return y[(slice(None), slice(None)) + sl]


class UNet(nn.Module):
    """The paper's U-Net with every attention concept as a switch (see the module docstring).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: classes (logits; softmax is the loss's job).
        filters: filters per level, top to bottom (paper: 16, 32, 128, 256, 256).
        norm: "batch" (paper), "instance" or "none".
        dropout: spatial dropout after each conv block.
        deep_supervision: list of logits in training (full resolution first), tensor in eval.
        upsample: "transpose" (paper), "trilinear" (interpolation then 1x1 conv) or "wau" (window
            attention upsampling, Li et al. 2022).
        min_pool_size: an axis of this many voxels or fewer is not pooled.
        attention_gate: "concat", "add" or "none".
        bottleneck_attention: "dual" (PAM + CAM), "position", "channel" or "none".
        attention_dropout: dropout inside the dual-attention head (paper 0.5).
        guided: DAGUNet's bottleneck-to-every-decoder-level connections.
        multiscale_input: the input pyramid injected at every encoder level.
        wau_heads: attention heads of WAU (capped so each head has >= 4 channels).
        wau_window: WAU's high-resolution window size, or None for global attention.
        local_attention_levels: encoder levels (0 = full resolution) followed by a 3D local attention block.
        local_attention_heads: heads of those blocks (capped so each head has >= 8 channels).
        local_attention_kernel: their neighbourhood (odd), shrunk on axes too short for it.

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
        attention_gate: str = "none",
        bottleneck_attention: str = "none",
        attention_dropout: float = 0.5,
        guided: bool = False,
        multiscale_input: bool = False,
        wau_heads: int = 4,
        wau_window: int | None = 8,
        local_attention_levels: Sequence[int] | None = None,
        local_attention_heads: int = 4,
        local_attention_kernel: int | Sequence[int] = 7,
    ) -> None:
        super().__init__()
        check_option("norm", norm, Norm)
        check_option("attention_gate", attention_gate, Gate)
        check_option("bottleneck_attention", bottleneck_attention, Bottleneck)
        filters = [int(f) for f in filters]
        if len(filters) < 2:
            raise ValueError(f"filters needs at least 2 levels, got {filters}")
        self.spatial_dims = spatial_dims
        self.filters = filters
        self.deep_supervision = deep_supervision
        self.min_pool_size = min_pool_size
        self.multiscale_input = multiscale_input
        n = len(filters)
        self.encoder = nn.ModuleList()
        self.ms_convs = nn.ModuleList()
        ch = in_channels
        for i, f in enumerate(filters):
            extra = 0
            if multiscale_input and i > 0:
                self.ms_convs.append(
                    nn.Sequential(conv_layer(spatial_dims, in_channels, f, 3, padding=1), nn.ReLU(inplace=True))
                )
                extra = f
            self.encoder.append(ConvBlock(spatial_dims, ch + extra, f, norm, dropout))
            ch = f
        # 3D local attention after the conv block of the chosen encoder levels (0 = full resolution)
        self.local_attn = nn.ModuleDict()
        for lv in local_attention_levels or []:
            if not 0 <= lv < n:
                raise ValueError(f"local_attention_levels: level {lv} does not exist (levels 0..{n - 1})")
            heads = max(1, min(local_attention_heads, filters[lv] // 8))
            while filters[lv] % heads:
                heads -= 1
            self.local_attn[str(lv)] = LocalAttention3d(
                filters[lv], heads, local_attention_kernel, spatial_dims=spatial_dims
            )
        if bottleneck_attention == "none":
            self.bottleneck = nn.Identity()
        else:
            self.bottleneck = DualAttention(
                spatial_dims,
                filters[-1],
                norm,
                attention_dropout,
                position=bottleneck_attention in ("dual", "position"),
                channel=bottleneck_attention in ("dual", "channel"),
            )
        self.guides = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in reversed(range(n - 1)):
            guide_ch = 0
            if guided and level < n - 2:  # the level right under the bottleneck already gets it as input
                guide_ch = max(4, filters[level] // 2)
                self.guides.append(GuideUp(spatial_dims, filters[-1], guide_ch, 2 ** (n - 1 - level)))
            self.decoder.append(
                DecoderLevel(
                    spatial_dims,
                    filters[level + 1],
                    filters[level],
                    filters[level],
                    norm,
                    dropout,
                    upsample,
                    attention_gate,
                    guide_ch,
                    wau_heads,
                    wau_window,
                )
            )
        self.guided = guided
        n_heads = n - 1 if deep_supervision else 1
        self.heads = nn.ModuleList(conv_layer(spatial_dims, filters[i], out_channels, 1) for i in range(n_heads))

    def pool(self, x: torch.Tensor, factors: Sequence[int], avg: bool = False) -> torch.Tensor:
        if all(f == 1 for f in factors):
            return x
        if avg:
            fn = F.avg_pool3d if x.ndim == 5 else F.avg_pool2d
        else:
            fn = F.max_pool3d if x.ndim == 5 else F.max_pool2d
        return fn(x, kernel_size=tuple(factors), stride=tuple(factors))

    def encode(self, x: torch.Tensor, plan: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Run the encoder; returns the features of every level, top first."""
        feats = []
        inp = x
        for i, block in enumerate(self.encoder):
            if i > 0:
                x = self.pool(x, plan[i - 1])
                if self.multiscale_input:
                    inp = self.pool(inp, plan[i - 1], avg=True)
                    x = torch.cat([x, self.ms_convs[i - 1](inp)], 1)
            x = block(x)
            if str(i) in self.local_attn:
                x = self.local_attn[str(i)](x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        shape = tuple(x.shape[2:])
        n = len(self.filters)
        plan = pool_plan(shape, n - 1, self.min_pool_size)
        multiple = [math.prod(p[a] for p in plan) for a in range(len(shape))]
        x = pad_to_multiple(x, multiple)
        feats = self.encode(x, plan)
        bottom = self.bottleneck(feats[-1])
        y = bottom
        ds = self.deep_supervision and self.training
        outs: list[torch.Tensor] = []
        guides = iter(self.guides)
        for j, dec in enumerate(self.decoder):
            level = n - 2 - j
            guide = None
            if self.guided and level < n - 2:
                stride = [math.prod(p[a] for p in plan[level:]) for a in range(len(shape))]
                guide = next(guides)(bottom, stride)
            y = dec(y, feats[level], plan[level], guide)
            if ds and level < len(self.heads):
                outs.append(self.heads[level](y))
        if not ds:
            return crop_to(self.heads[0](y), shape)
        outs.reverse()  # full resolution first
        result = []
        for level, o in enumerate(outs):
            factor = [math.prod(p[a] for p in plan[:level]) for a in range(len(shape))]
            result.append(crop_to(o, [math.ceil(s / f) for s, f in zip(shape, factor)]))
        return result


_BACKBONE = {"spatial_dims": 3, "filters": list(PAPER_FILTERS), "norm": "batch"}
_LOCAL_ATTN_EXPORT = (
    "its 3D local attention (seg::local_attn3d, a torch custom op whose torch path loops over blocks in "
    "Python) has no ONNX decomposition or custom-op kernel; the conversion fails"
)


@register_net(
    "unet",
    NetCard(
        filters_rule(),
        defaults={**_BACKBONE, "dropout": 0.0, "deep_supervision": False, "upsample": "transpose"},
        summary="the AGUNet paper's U-Net backbone",
    ),
)
def unet(**kwargs) -> UNet:
    """The AGUNet paper's U-Net backbone (no attention, by default no MS or DS)."""
    return UNet(**kwargs)


@register_net(
    "agunet",
    NetCard(
        filters_rule(),
        defaults={
            **_BACKBONE,
            "dropout": 0.0,
            "attention_gate": "concat",
            "multiscale_input": True,
            "deep_supervision": True,
            "upsample": "transpose",
        },
        summary="AGUNet: attention-gated skips, multi-scale input, deep supervision",
        whole_volume=True,
    ),
)
def agunet(
    attention_gate: str = "concat", multiscale_input: bool = True, deep_supervision: bool = True, **kwargs
) -> UNet:
    """AGUNet: attention gates on every skip, multi-scale input, deep supervision (each can be switched off)."""
    return UNet(
        attention_gate=attention_gate, multiscale_input=multiscale_input, deep_supervision=deep_supervision, **kwargs
    )


@register_net(
    "daunet",
    NetCard(
        filters_rule(),
        defaults={
            **_BACKBONE,
            "dropout": 0.0,
            "bottleneck_attention": "dual",
            "attention_dropout": 0.5,
            "guided": False,
            "multiscale_input": True,
            "deep_supervision": True,
            "upsample": "transpose",
        },
        summary="DAUNet: position + channel attention at the bottleneck",
        whole_volume=True,
    ),
)
def daunet(
    bottleneck_attention: str = "dual",
    multiscale_input: bool = True,
    deep_supervision: bool = True,
    guided: bool = False,
    **kwargs,
) -> UNet:
    """DAUNet: position + channel attention at the bottleneck; ``guided=True`` gives DAGUNet."""
    return UNet(
        bottleneck_attention=bottleneck_attention,
        multiscale_input=multiscale_input,
        deep_supervision=deep_supervision,
        guided=guided,
        **kwargs,
    )


@register_net(
    "unet_local_attn",
    NetCard(
        filters_rule(),
        export=_LOCAL_ATTN_EXPORT,
        defaults={
            **_BACKBONE,
            "local_attention_levels": None,
            "local_attention_heads": 4,
            "local_attention_kernel": 7,
            "attention_gate": "none",
            "deep_supervision": False,
            "upsample": "transpose",
        },
        summary="the U-Net with 3D local attention below full resolution",
    ),
)
def unet_local_attn(
    local_attention_levels: Sequence[int] | None = None, filters: Sequence[int] = PAPER_FILTERS, **kwargs
) -> UNet:
    """The "3D attention" U-Net: the paper's backbone with 3D local attention blocks at every level below
    full resolution by default (combine with ``attention_gate="concat"`` for gated skips)."""
    levels = list(range(1, len(filters))) if local_attention_levels is None else list(local_attention_levels)
    return UNet(filters=filters, local_attention_levels=levels, **kwargs)
