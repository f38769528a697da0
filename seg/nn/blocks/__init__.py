from __future__ import annotations

from seg.nn.blocks.attention_gate import AttentionGate
from seg.nn.blocks.conv import ConvBlock, UpConv, crop_to, pad_to_multiple, pool_plan
from seg.nn.blocks.dual_attention import ChannelAttention, DualAttention, PositionAttention

__all__ = [
    "AttentionGate",
    "ChannelAttention",
    "ConvBlock",
    "DualAttention",
    "PositionAttention",
    "UpConv",
    "crop_to",
    "pad_to_multiple",
    "pool_plan",
]
