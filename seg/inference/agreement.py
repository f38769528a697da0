"""Whether reduced precision gives the same masks: the bf16 check ``seg-predict --precision bf16`` runs first.

Agreement is the Dice between the fp32 mask and the bf16 mask of the same case, averaged over the
foreground labels; a label empty in both masks counts 1.0 (they agree). bf16 is used only when the
agreement on the check case is at least ``MIN_AGREEMENT``; otherwise the command stops before any case is
predicted (exit code 2, one line with the figure).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_AGREEMENT = 0.999


def mask_agreement(a: np.ndarray, b: np.ndarray, label_ids: Sequence[int]) -> float:
    """Mean Dice over the foreground ``label_ids`` (all but the first, the background) of two label maps."""
    scores = []
    for lab in list(label_ids)[1:]:
        pa, pb = a == lab, b == lab
        total = int(pa.sum()) + int(pb.sum())
        scores.append(1.0 if total == 0 else 2.0 * int((pa & pb).sum()) / total)
    return float(np.mean(scores)) if scores else 1.0


def bf16_agreement(predictor, files: Sequence[str]) -> float:
    """Agreement of one predictor's fp32 and bf16 masks on one case's files (the same nets, loaded once);
    the predictor is left at bf16."""
    masks = []
    for precision in ("fp32", "bf16"):
        predictor.precision = precision
        masks.append(predictor.predict(list(files)).labels)
    return mask_agreement(*masks, predictor.label_ids)


def check_bf16(predictor, model: str, cases) -> str | None:
    """bf16 only if its masks agree with fp32's on the first readable case (Dice >= ``MIN_AGREEMENT``); else a
    one-line :class:`~seg.errors.UserError`. Returns the line to print (None when no case is readable: the
    batch reports every case)."""
    from seg.errors import UserError

    checked = first_case_agreement(predictor, cases)
    if checked is None:
        return None
    agree, case_id = checked
    if agree < MIN_AGREEMENT:
        raise UserError(f"{model}: --precision bf16 refused for this net: {disagreement(agree, case_id)}")
    return agreement_line(agree, case_id)


def agreement_line(agree: float, case_id: str) -> str:
    return f"bf16 agreement: Dice {agree:.4f} between fp32 and bf16 masks on {case_id} (>= {MIN_AGREEMENT})"


def first_case_agreement(predictor, cases) -> tuple[float, str] | None:
    """``(agreement, case id)`` on the first readable case, the predictor left at bf16; None: no readable case."""
    from seg.inference.cases import validate

    case = next((c for c in cases if validate(c)[0] is None), None)
    return None if case is None else (bf16_agreement(predictor, case.files), case.case_id)


def disagreement(agree: float, case_id: str) -> str:
    return f"Dice between its fp32 and bf16 masks is {agree:.4f} < {MIN_AGREEMENT} on {case_id}"
