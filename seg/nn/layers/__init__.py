from __future__ import annotations

from seg.nn.layers.factories import (
    Option,
    check_option,
    conv_layer,
    conv_transpose_layer,
    dropout_layer,
    ensure_tuple,
    norm_layer,
)

__all__ = [
    "Option",
    "check_option",
    "conv_layer",
    "conv_transpose_layer",
    "dropout_layer",
    "ensure_tuple",
    "norm_layer",
]
