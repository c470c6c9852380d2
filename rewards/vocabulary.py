"""The label vocabulary: the 14 CheXbert observations, their class codes, and the CheXpert CSV convention.

A labeler (rewards.labeling) returns an ``(N, 14)`` int array of the codes below, columns in
``OBSERVATIONS`` order. This module imports nothing of ours: ``data`` and ``model`` may use it.

Codes follow CheXbert's class indices: 0 blank (not mentioned), 1 positive, 2 negative, 3 uncertain.
No Finding (the last column) is only ever 0 or 1.

The CheXpert CSV convention, read by R2Gen's ``compute_ce.py`` and most CE scripts, writes
positive 1, negative 0, uncertain -1 and blank as an empty cell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

OBSERVATIONS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)
NUM_OBSERVATIONS = len(OBSERVATIONS)
NO_FINDING = OBSERVATIONS.index("No Finding")
FINDINGS: tuple[str, ...] = OBSERVATIONS[:NO_FINDING]  # the 13 that enter MCCS, eq. (4)
CE5: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

BLANK, POSITIVE, NEGATIVE, UNCERTAIN = 0, 1, 2, 3
CODE_NAMES = {BLANK: "blank", POSITIVE: "positive", NEGATIVE: "negative", UNCERTAIN: "uncertain"}

# CheXbert code -> CheXpert CSV value (None = empty cell), and back.
_TO_CSV = {BLANK: None, POSITIVE: 1, NEGATIVE: 0, UNCERTAIN: -1}
_FROM_CSV = {1: POSITIVE, 0: NEGATIVE, -1: UNCERTAIN}


def validate_codes(codes: np.ndarray) -> np.ndarray:
    """Check an ``(N, 14)`` code array and return it as int64; raise ValueError naming the problem."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != NUM_OBSERVATIONS:
        raise ValueError(f"label codes must have shape (N, {NUM_OBSERVATIONS}), got {codes.shape}")
    if codes.size and (codes.min() < BLANK or codes.max() > UNCERTAIN):
        raise ValueError(f"label codes must be in 0..3, got values {sorted(set(codes.ravel().tolist()))}")
    if codes.size and np.isin(codes[:, NO_FINDING], (NEGATIVE, UNCERTAIN)).any():
        raise ValueError("No Finding may only be blank (0) or positive (1)")
    return codes.astype(np.int64, copy=False)


def code_to_csv(code: int) -> int | None:
    """One CheXbert code -> its CheXpert CSV value (1, 0, -1, or None for an empty cell)."""
    try:
        return _TO_CSV[int(code)]
    except KeyError:
        raise ValueError(
            f"unknown label code {code!r}; expected 0 blank, 1 pos, 2 neg, 3 uncertain"
        ) from None


def csv_to_code(value: object) -> int:
    """One CheXpert CSV cell (1, 0, -1, empty/NaN/None, or their strings like '1.0') -> CheXbert code."""
    if value is None:
        return BLANK
    if isinstance(value, str):
        value = value.strip()
        if value == "" or value.lower() == "nan":
            return BLANK
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"CheXpert CSV cell {value!r} is not one of 1, 0, -1 or empty") from None
    if isinstance(value, float) and math.isnan(value):
        return BLANK
    if float(value) not in (1.0, 0.0, -1.0):
        raise ValueError(f"CheXpert CSV cell {value!r} is not one of 1, 0, -1 or empty")
    return _FROM_CSV[int(value)]


def codes_to_csv_rows(codes: np.ndarray) -> list[list[int | None]]:
    """``(N, 14)`` codes -> rows of CheXpert CSV values (None = empty cell)."""
    return [[code_to_csv(c) for c in row] for row in validate_codes(codes)]


def csv_rows_to_codes(rows: Sequence[Sequence[object]]) -> np.ndarray:
    """Rows of 14 CheXpert CSV values -> ``(N, 14)`` codes."""
    out = np.zeros((len(rows), NUM_OBSERVATIONS), dtype=np.int64)
    for i, row in enumerate(rows):
        if len(row) != NUM_OBSERVATIONS:
            raise ValueError(f"row {i} has {len(row)} label values, expected {NUM_OBSERVATIONS}")
        out[i] = [csv_to_code(v) for v in row]
    return validate_codes(out)


def binarize(codes: np.ndarray, uncertain_as: str = "positive") -> np.ndarray:
    """``(N, 14)`` codes -> 0/1 presence. ``uncertain_as`` is 'positive' or 'negative' (R2Gen's policy)."""
    codes = validate_codes(codes)
    if uncertain_as not in ("positive", "negative"):
        raise ValueError(f"uncertain_as must be 'positive' or 'negative', got {uncertain_as!r}")
    present = codes == POSITIVE
    if uncertain_as == "positive":
        present |= codes == UNCERTAIN
    return present.astype(np.int64)
