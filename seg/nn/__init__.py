"""Networks and blocks. Plain PyTorch: nothing here imports Lightning or Hydra."""

from __future__ import annotations

from seg.nn.registry import create_net, list_nets, register_net

__all__ = ["create_net", "list_nets", "register_net"]
