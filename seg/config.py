"""Small helpers every layer shares: plain containers from configs, string-enum options, user errors.

Bottom layer (beside ``seg.io``): imports nothing of seg, nor Lightning or Hydra.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from monai.utils import look_up_option

E = TypeVar("E", bound=Enum)

# conf/ sits beside the package in the source tree (editable installs); SEG_CONF_DIR points elsewhere.
CONF_DIR = os.environ.get("SEG_CONF_DIR", str(Path(__file__).resolve().parents[1] / "conf"))


class UserError(Exception):
    """A problem with the user's input or configuration; the entry points print it as one line, exit 1."""


def to_plain(x: Any) -> Any:
    """DictConfig/ListConfig or nested mappings -> plain dict/list (safe for weights-only checkpoints)."""
    if isinstance(x, Mapping):
        return {str(k): to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)) or type(x).__name__ == "ListConfig":
        return [to_plain(v) for v in x]
    if isinstance(x, Enum):
        return x.value
    return x


def check_option(name: str, value: Any, choices: type[E]) -> str:
    """The value of the member of the string enum ``choices`` that ``value`` names, else a one-line ValueError.

    MONAI's ``look_up_option`` does the look-up and the "did you mean" suggestion; its message spans three
    lines, so it is folded into one that also names the option.

    Args:
        name: the option's name, used in the message (e.g. ``"model.net.attention_gate"``).
        value: the given value (a string or a member).
        choices: a ``(str, Enum)`` class.
    """
    try:
        return look_up_option(value, choices, print_all_options=False).value
    except ValueError as e:
        hint = re.search(r"did you mean '([^']+)'", str(e))
        allowed = sorted(m.value for m in choices)
        raise ValueError(
            f"{name}={value!r} is not one of {allowed}" + (f"; did you mean {hint.group(1)!r}?" if hint else "")
        ) from None
