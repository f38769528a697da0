"""Postprocessing of a predicted label map, per foreground label, as a k-fold run decided it.

Two operations, as nnU-Net's ``find_best_configuration`` considers them: keep only the largest connected
component of a label, or remove the components of a label smaller than a volume (ml). Removed voxels become
background. Connectivity is 26 (the components seg counts everywhere, and MONAI's
``KeepLargestConnectedComponent`` default). Written with scipy here because MONAI's transform needs
scikit-image for its labelling, a dependency seg has no other use for; the result is the same (tested
against a by-hand count in tests/eval/test_postprocess.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from seg.config import UserError, check_option, finite_number
from seg.data.components import component_sizes, label_components


class Operation(str, Enum):
    LARGEST = "largest"  # keep the largest component
    MIN_ML = "min_ml"  # remove components under ``ml``


@dataclass(frozen=True)
class Postprocessing:
    """Per label id: ``{"op": "largest"}`` or ``{"op": "min_ml", "ml": 0.5}``; labels not named are left as
    predicted. The empty one (no label named) changes nothing."""

    rules: Mapping[int, Mapping] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for label, rule in self.rules.items():
            op = check_option(f"postprocessing[{label}].op", rule.get("op"), Operation)
            ml = rule.get("ml", 0)
            if op == Operation.MIN_ML and not (finite_number(ml) and ml > 0):  # .inf would empty every mask
                raise UserError(f"postprocessing[{label}]: min_ml needs a finite volume ml > 0, got {ml!r}")

    @classmethod
    def from_mapping(cls, m: Mapping | None) -> Postprocessing:
        return cls({int(k): dict(v) for k, v in dict(m or {}).items()})

    def as_dict(self) -> dict:
        return {int(k): dict(v) for k, v in self.rules.items()}

    def __bool__(self) -> bool:
        return bool(self.rules)

    def describe(self, names: Mapping[int, str] | None = None) -> str:
        names = names or {}
        parts = []
        for label, r in sorted(self.rules.items()):
            what = "largest component" if r["op"] == Operation.LARGEST else f"components >= {r['ml']:g} ml"
            parts.append(f"{names.get(label, label)}: {what}")
        return "; ".join(parts) or "none"

    def apply(self, labels: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, dict[int, int]]:
        """The postprocessed label map and, per label, how many components were removed."""
        out = labels.copy()
        voxel_ml = float(np.prod(spacing)) / 1000.0
        removed: dict[int, int] = {}
        for label, rule in self.rules.items():
            lab, n = label_components(labels == label, 26)
            if n == 0:
                continue
            sizes = component_sizes(lab, n)
            if rule["op"] == Operation.LARGEST:
                drop = [i + 1 for i in range(n) if i != int(np.argmax(sizes))]
            else:
                drop = [i + 1 for i in range(n) if sizes[i] * voxel_ml < float(rule["ml"])]
            if drop:
                out[np.isin(lab, drop)] = 0
                removed[int(label)] = len(drop)
        return out, removed
