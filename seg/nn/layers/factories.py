"""Small layer factories keyed by ``spatial_dims`` and string options with "did you mean" errors."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch.nn as nn


def check_option(name: str, value: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError that suggests the nearest.

    Args:
        name: the option's name, used in the message.
        value: the given value.
        choices: the allowed values.
    """
    if value in choices:
        return value
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{name}={value!r} is not one of {sorted(choices)}{hint}")


class Option:
    """Namespaces of the string options used across the networks."""

    NORMS = ("batch", "instance", "none")
    UPSAMPLE = ("transpose", "trilinear", "wau")
    GATE = ("concat", "add")


def ensure_tuple(value: int | Sequence[int], n: int, name: str = "value") -> tuple[int, ...]:
    """Normalise ``int | Sequence[int]`` to a tuple of length ``n``."""
    if isinstance(value, int):
        return (value,) * n
    out = tuple(int(v) for v in value)
    if len(out) != n:
        raise ValueError(f"{name} needs {n} values (one per spatial axis), got {list(out)}")
    return out


def conv_layer(spatial_dims: int, *args, **kwargs) -> nn.Module:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[_dims(spatial_dims)](*args, **kwargs)


def conv_transpose_layer(spatial_dims: int, *args, **kwargs) -> nn.Module:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[_dims(spatial_dims)](*args, **kwargs)


def norm_layer(norm: str, spatial_dims: int, channels: int) -> nn.Module:
    """Batch, instance (affine) or no normalisation."""
    check_option("norm", norm, Option.NORMS)
    if norm == "none":
        return nn.Identity()
    if norm == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[_dims(spatial_dims)](channels)
    return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[_dims(spatial_dims)](channels, affine=True)


def dropout_layer(spatial_dims: int, p: float) -> nn.Module:
    """Spatial (channel) dropout, or identity when ``p == 0``."""
    if p <= 0:
        return nn.Identity()
    return {2: nn.Dropout2d, 3: nn.Dropout3d}[_dims(spatial_dims)](p)


def _dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return spatial_dims
