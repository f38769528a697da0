"""Network registry: ``register_net``, ``create_net(name, **kwargs)``, ``list_nets()``, ``net_card(name)``.

Checkpoints and model bundles store the plain ``{name, kwargs}`` of a network, never a pickled module,
so a network is rebuilt through this registry. The registry imports no network module: the built-in
networks register themselves when ``seg.nn`` is imported (``seg/nn/__init__.py`` imports ``seg.nn.nets``).

Every network registers a :class:`NetCard` beside it, as timm keeps model metadata beside each model:
what the planner and the exporter need to know of it. No room outside ``seg/nn`` names a network, so a
new network touches its own module (and its config) only.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch.nn as nn

FILTER_CAP = 320  # nnU-Net's cap on the widest level's filters


def doubling_widths(base: int, levels: int, cap: int = FILTER_CAP) -> list[int]:
    """``base`` filters at the first level, doubling per level, capped at ``cap``: [8, 16, 32, ...]."""
    return [min(int(base) * 2**i, cap) for i in range(int(levels))]


@dataclass(frozen=True)
class NetCard:
    """What the rest of seg knows of a registered network.

    Args:
        width: ``(base, levels) -> kwargs`` that set the network's width from ``base`` (filters of the first
            level, doubling per level) for a ``levels``-level network; what ``seg-plan`` writes into a plan.
            None: the planner cannot size this network.
        export: None when the network exports to ONNX and TorchScript with the parity check; else the
            reason it cannot (``seg-export`` refuses it with this line, before loading any weights).
        defaults: the keyword arguments ``seg-train`` builds it with (``conf/model/net/<name>.yaml`` holds
            the same; a test keeps the two equal), without ``in_channels``/``out_channels``.
        summary: one line for listings.
        whole_volume: made for a whole volume resized to its input (the AGUNet paper's mode, ``data.mode:
            resize``): where ``seg-plan`` trains whole cases at a coarser spacing, it resizes them instead.
    """

    width: Callable[[int, int], dict] | None
    export: str | None = None
    defaults: Mapping = field(default_factory=dict)
    summary: str = ""
    whole_volume: bool = False

    def width_kwargs(self, base: int, levels: int) -> dict:
        if self.width is None:
            raise KeyError("no width rule")
        return self.width(int(base), int(levels))


def filters_rule(key: str = "filters") -> Callable[[int, int], dict]:
    """The width rule of a U-Net that takes its per-level widths as one list under ``key``."""

    def rule(base: int, levels: int) -> dict:
        return {key: doubling_widths(base, levels)}

    return rule


_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_CARDS: dict[str, NetCard] = {}


def register_net(name: str, card: NetCard) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a network class or factory under ``name``, with its card."""
    if not isinstance(card, NetCard):
        raise TypeError(f"register_net({name!r}): card must be a NetCard")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise KeyError(f"network {name!r} is already registered")
        _REGISTRY[name] = fn
        _CARDS[name] = card
        return fn

    return deco


def list_nets() -> list[str]:
    """Names of all registered networks, sorted."""
    return sorted(_REGISTRY)


def _unknown(name: str) -> KeyError:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return KeyError(f"unknown network {name!r}{hint} (known: {', '.join(sorted(_REGISTRY))})")


def net_card(name: str) -> NetCard:
    """The card of the registered network ``name``."""
    if name not in _CARDS:
        raise _unknown(name)
    return _CARDS[name]


def plannable_nets() -> list[str]:
    """The networks whose card has a width rule (what ``seg-plan --net`` takes)."""
    return [n for n in list_nets() if _CARDS[n].width is not None]


def create_net(name: str, **kwargs) -> nn.Module:
    """Build the registered network ``name``.

    Every network takes MONAI's ``spatial_dims``, ``in_channels`` and ``out_channels`` keywords.
    """
    if name not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[name](**kwargs)


def build_sized(name: str, base: int, levels: int, in_channels: int, out_channels: int, **extra) -> nn.Module:
    """The network ``name`` with its card's defaults at the width ``(base, levels)``: what a plan trains."""
    card = net_card(name)
    kw = {**card.defaults, **card.width_kwargs(base, levels), **extra}
    return create_net(name, in_channels=in_channels, out_channels=out_channels, **kw)


__all__: Sequence[str] = (
    "FILTER_CAP",
    "NetCard",
    "build_sized",
    "create_net",
    "doubling_widths",
    "filters_rule",
    "list_nets",
    "net_card",
    "plannable_nets",
    "register_net",
)
