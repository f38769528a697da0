from __future__ import annotations

from seg.config import check_option
from seg.nn.layers.factories import (
    Bottleneck,
    Gate,
    Norm,
    Upsample,
    conv_layer,
    conv_transpose_layer,
    dropout_layer,
    ensure_tuple,
    norm_layer,
)

__all__ = [
    "Bottleneck",
    "Gate",
    "Norm",
    "Upsample",
    "check_option",
    "conv_layer",
    "conv_transpose_layer",
    "dropout_layer",
    "ensure_tuple",
    "norm_layer",
]
