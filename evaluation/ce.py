"""Clinical-efficacy (CE) metrics and polarity analysis from labeler outputs (pure numpy).

CE compares the labels a labeler (rule-based or CheXbert) gives a generated report with the labels it gives
the reference report of the same study, over the 14 CheXbert observations and the 5-label subset
(Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion); these are the figures of the paper's
Tables I and II. The codes are first made binary by the *uncertain policy*: R2Gen's ``compute_ce.py`` maps
blank and uncertain to 0 ("negative"); some papers count uncertain as present ("positive").

Definitions, with tp / fp / fn counted on the binary matrices (reference = truth) and a "zero division"
value z (0 by default) used wherever a denominator is 0:

- precision = tp / (tp + fp), recall = tp / (tp + fn), F1 = 2 tp / (2 tp + fp + fn).
- micro: pool every (report, label) decision, then apply the formulas once.
- macro: apply them per label, then take the unweighted mean over labels. A label with no positive in
  either matrix has precision = recall = F1 = z (so it pulls the mean down when z = 0).
- example-based: apply them per report, then take the mean over reports. A report with no positive in the
  prediction has precision z; with no positive in the reference, recall z; with neither, F1 z as well.

These match scikit-learn's ``precision_recall_fscore_support`` with ``average="micro" | "macro" |
"samples"`` and the same ``zero_division`` (0 or 1); R2Gen's ``compute_mlc`` reports the micro and macro
ones with z = 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rewards.vocabulary import (
    BLANK,
    CE5,
    NEGATIVE,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
    binarize,
    validate_codes,
)

AVERAGES: tuple[str, ...] = ("micro", "macro", "example")
UNCERTAIN_POLICIES: tuple[str, ...] = ("negative", "positive")
# Label subsets keyed as in metrics.json: "14" = every observation, "5" = the CE5 subset.
SUBSETS: dict[str, tuple[str, ...]] = {"14": OBSERVATIONS, "5": CE5}

# Polarity categories: every (report, label) pair falls in exactly one of these.
POLARITY_CATEGORIES: tuple[str, ...] = (
    "both_blank",  # neither report mentions the label
    "agree",  # both mention it with the same polarity
    "reversal_pos_to_neg",  # reference positive, prediction negative (a present finding denied)
    "reversal_neg_to_pos",  # reference negative, prediction positive (an absent finding asserted)
    "uncertainty_mismatch",  # one says uncertain, the other positive or negative
    "omission",  # reference mentions it, prediction blank
    "unsupported",  # prediction mentions it, reference blank
)
# Sub-counts reported alongside (not part of the partition): the clinically sharpest cases.
POLARITY_SUBCOUNTS: tuple[str, ...] = (
    "reversals",  # reversal_pos_to_neg + reversal_neg_to_pos
    "omitted_positive",  # omissions where the reference is positive (under-calling)
    "unsupported_positive",  # unsupported mentions that are positive (hallucinated findings)
)


def _check_uncertain_policy(uncertain_as: str) -> str:
    if uncertain_as not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain_as must be one of {UNCERTAIN_POLICIES}, got {uncertain_as!r}")
    return uncertain_as


def _check_binary_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate two (N, L) 0/1 matrices of the same shape with N >= 1; return them as int64."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 2 or y_true.shape != y_pred.shape:
        raise ValueError(
            f"reference and prediction must be 2-D of one shape, got {y_true.shape} and {y_pred.shape}"
        )
    if y_true.shape[0] == 0:
        raise ValueError("CE metrics need at least one report, got 0")
    for name, m in (("reference", y_true), ("prediction", y_pred)):
        if not np.isin(m, (0, 1)).all():
            raise ValueError(
                f"{name} matrix must hold only 0 and 1, got values {sorted(set(m.ravel().tolist()))}"
            )
    return y_true.astype(np.int64), y_pred.astype(np.int64)


def _check_zero_division(zero_division: float) -> float:
    if zero_division not in (0, 1):
        raise ValueError(f"zero_division must be 0 or 1, got {zero_division!r}")
    return float(zero_division)


def _divide(numerator: np.ndarray, denominator: np.ndarray, zero_division: float) -> np.ndarray:
    """Element-wise numerator / denominator, with ``zero_division`` where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, zero_division, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _prf_from_counts(tp, fp, fn, zero_division: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    precision = _divide(tp, tp + fp, zero_division)
    recall = _divide(tp, tp + fn, zero_division)
    f1 = _divide(2 * tp, 2 * tp + fp + fn, zero_division)
    return precision, recall, f1


def _counts(y_true: np.ndarray, y_pred: np.ndarray, axis: int | None):
    tp = ((y_true == 1) & (y_pred == 1)).sum(axis=axis)
    fp = ((y_true == 0) & (y_pred == 1)).sum(axis=axis)
    fn = ((y_true == 1) & (y_pred == 0)).sum(axis=axis)
    return tp, fp, fn


def _as_dict(precision, recall, f1) -> dict[str, float]:
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def micro_prf(y_true: np.ndarray, y_pred: np.ndarray, zero_division: float = 0) -> dict[str, float]:
    """Micro average: one precision / recall / F1 over every (report, label) decision pooled."""
    y_true, y_pred = _check_binary_pair(y_true, y_pred)
    return _as_dict(*_prf_from_counts(*_counts(y_true, y_pred, None), _check_zero_division(zero_division)))


def per_label_prf(y_true: np.ndarray, y_pred: np.ndarray, zero_division: float = 0) -> dict[str, np.ndarray]:
    """Per-label (column) precision, recall, F1, support (reference positives) and predicted positives."""
    y_true, y_pred = _check_binary_pair(y_true, y_pred)
    tp, fp, fn = _counts(y_true, y_pred, 0)
    precision, recall, f1 = _prf_from_counts(tp, fp, fn, _check_zero_division(zero_division))
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": y_true.sum(axis=0),
        "predicted": y_pred.sum(axis=0),
    }


def macro_prf(y_true: np.ndarray, y_pred: np.ndarray, zero_division: float = 0) -> dict[str, float]:
    """Macro average: the unweighted mean over labels of the per-label figures."""
    per_label = per_label_prf(y_true, y_pred, zero_division)
    return _as_dict(per_label["precision"].mean(), per_label["recall"].mean(), per_label["f1"].mean())


def example_prf(y_true: np.ndarray, y_pred: np.ndarray, zero_division: float = 0) -> dict[str, float]:
    """Example-based average: per-report precision / recall / F1, then the mean over reports.

    F1 is the mean of per-report F1 values, not the harmonic mean of the averaged precision and recall.
    """
    y_true, y_pred = _check_binary_pair(y_true, y_pred)
    precision, recall, f1 = _prf_from_counts(*_counts(y_true, y_pred, 1), _check_zero_division(zero_division))
    return _as_dict(precision.mean(), recall.mean(), f1.mean())


_AVERAGE_FUNCTIONS = {"micro": micro_prf, "macro": macro_prf, "example": example_prf}


def subset_columns(labels: Sequence[str]) -> list[int]:
    """Column indices (in OBSERVATIONS order) of the named labels; unknown names raise ValueError."""
    unknown = [name for name in labels if name not in OBSERVATIONS]
    if unknown:
        raise ValueError(f"unknown observation name(s) {unknown}; expected names from {OBSERVATIONS}")
    return [OBSERVATIONS.index(name) for name in labels]


def ce_metrics(
    reference_codes: np.ndarray,
    predicted_codes: np.ndarray,
    uncertain_as: str = "negative",
    zero_division: float = 0,
) -> dict:
    """CE figures from two ``(N, 14)`` label-code arrays (reference, prediction).

    Returns ``{"14" | "5": {"micro" | "macro" | "example": {"precision", "recall", "f1"}}, "per_label":
    {label: {"precision", "recall", "f1", "support", "predicted"}}, "uncertain_as": ...}``, as fractions.
    """
    reference_codes, predicted_codes = _check_code_pair(reference_codes, predicted_codes)
    uncertain_as = _check_uncertain_policy(uncertain_as)
    y_true = binarize(reference_codes, uncertain_as)
    y_pred = binarize(predicted_codes, uncertain_as)
    out: dict = {}
    for key, labels in SUBSETS.items():
        columns = subset_columns(labels)
        t, p = y_true[:, columns], y_pred[:, columns]
        out[key] = {name: fn(t, p, zero_division) for name, fn in _AVERAGE_FUNCTIONS.items()}
    per_label = per_label_prf(y_true, y_pred, zero_division)
    out["per_label"] = {
        label: {
            "precision": float(per_label["precision"][i]),
            "recall": float(per_label["recall"][i]),
            "f1": float(per_label["f1"][i]),
            "support": int(per_label["support"][i]),
            "predicted": int(per_label["predicted"][i]),
        }
        for i, label in enumerate(OBSERVATIONS)
    }
    out["uncertain_as"] = uncertain_as
    return out


def _check_code_pair(
    reference_codes: np.ndarray, predicted_codes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    reference_codes, predicted_codes = validate_codes(reference_codes), validate_codes(predicted_codes)
    if reference_codes.shape != predicted_codes.shape:
        raise ValueError(
            f"reference and prediction label arrays differ in shape: {reference_codes.shape} vs {predicted_codes.shape}"
        )
    return reference_codes, predicted_codes


def polarity_masks(reference_codes: np.ndarray, predicted_codes: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean ``(N, 14)`` masks, one per POLARITY_CATEGORIES entry (a partition) and per sub-count."""
    ref, pred = _check_code_pair(reference_codes, predicted_codes)
    ref_blank, pred_blank = ref == BLANK, pred == BLANK
    masks = {
        "both_blank": ref_blank & pred_blank,
        "agree": ~ref_blank & (ref == pred),
        "reversal_pos_to_neg": (ref == POSITIVE) & (pred == NEGATIVE),
        "reversal_neg_to_pos": (ref == NEGATIVE) & (pred == POSITIVE),
        "uncertainty_mismatch": ~ref_blank
        & ~pred_blank
        & (ref != pred)
        & ((ref == UNCERTAIN) | (pred == UNCERTAIN)),
        "omission": ~ref_blank & pred_blank,
        "unsupported": ref_blank & ~pred_blank,
    }
    masks["reversals"] = masks["reversal_pos_to_neg"] | masks["reversal_neg_to_pos"]
    masks["omitted_positive"] = masks["omission"] & (ref == POSITIVE)
    masks["unsupported_positive"] = masks["unsupported"] & (pred == POSITIVE)
    return masks


def polarity_analysis(reference_codes: np.ndarray, predicted_codes: np.ndarray) -> dict[str, dict[str, int]]:
    """Per-label counts of polarity agreement and errors, plus a ``"total"`` row over all 14 labels.

    This is the behaviour the paper credits MCCS with improving (its Discussion): fewer reversed polarities,
    fewer omitted findings and fewer unsupported statements. Counts use the raw codes, so the uncertain
    policy does not apply here.
    """
    masks = polarity_masks(reference_codes, predicted_codes)
    keys = POLARITY_CATEGORIES + POLARITY_SUBCOUNTS
    out = {label: {key: int(masks[key][:, i].sum()) for key in keys} for i, label in enumerate(OBSERVATIONS)}
    out["total"] = {key: int(masks[key].sum()) for key in keys}
    return out
