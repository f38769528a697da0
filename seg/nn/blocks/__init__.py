from __future__ import annotations

from seg.nn.blocks.conv import ConvBlock, UpConv, crop_to, pad_to_multiple, pool_plan

__all__ = ["ConvBlock", "UpConv", "crop_to", "pad_to_multiple", "pool_plan"]
