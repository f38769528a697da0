"""Networks and blocks. Plain PyTorch: nothing here imports Lightning or Hydra.

Importing ``seg.nn`` registers the built-in networks (``seg.nn.nets``) with the registry.
"""

from __future__ import annotations

import seg.nn.nets  # noqa: F401  (registers the built-in networks)
from seg.nn.registry import NetCard, create_net, list_nets, net_card, register_net

__all__ = ["NetCard", "create_net", "list_nets", "net_card", "register_net"]
