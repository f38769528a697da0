"""Network registry: ``register_net``, ``create_net(name, **kwargs)``, ``list_nets()``.

Checkpoints and model bundles store the plain ``{name, kwargs}`` of a network, never a pickled module,
so a network is rebuilt through this registry. The registry imports no network module: the built-in
networks register themselves when ``seg.nn`` is imported (``seg/nn/__init__.py`` imports ``seg.nn.nets``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_net(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a network class or factory under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise KeyError(f"network {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_nets() -> list[str]:
    """Names of all registered networks, sorted."""
    return sorted(_REGISTRY)


def create_net(name: str, **kwargs) -> nn.Module:
    """Build the registered network ``name``.

    Every network takes MONAI's ``spatial_dims``, ``in_channels`` and ``out_channels`` keywords.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown network {name!r}{hint} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name](**kwargs)
