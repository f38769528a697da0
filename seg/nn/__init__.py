"""Networks and blocks. Plain PyTorch: nothing here imports Lightning or Hydra.

Importing ``seg.nn`` registers the built-in networks (``seg.nn.nets``) with the registry.
"""

from __future__ import annotations

import seg.nn.nets  # noqa: F401  (registers the built-in networks)
from seg.nn.registry import create_net, list_nets, register_net

__all__ = ["create_net", "list_nets", "register_net"]
