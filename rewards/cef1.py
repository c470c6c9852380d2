"""Report-level clinical-efficacy F1 reward (the "+CE F1" rows of the paper's Table II ablation).

For each generated report and its reference, both ``(14,)`` label-code rows are binarized (positive = 1;
uncertain counts as positive by default, ``uncertain_as="negative"`` follows R2Gen's ``compute_ce.py``;
negative and blank = 0) and compared over all 14 observations, No Finding included:

    F1 = 2 TP / (2 TP + FP + FN)

which equals the harmonic mean of the report's precision and recall. When neither report has any present
label (both binary vectors all zero) the two agree exactly and the reward is ``both_empty`` (default 1.0).
"""

from __future__ import annotations

import numpy as np

from rewards.vocabulary import binarize


def ce_f1_reward(
    pred_codes: np.ndarray,
    ref_codes: np.ndarray,
    uncertain_as: str = "positive",
    both_empty: float = 1.0,
) -> np.ndarray:
    """Per-report F1 between binarized label vectors: ``(N, 14), (N, 14) -> (N,)`` float64 in [0, 1]."""
    pred = binarize(pred_codes, uncertain_as=uncertain_as).astype(bool)
    ref = binarize(ref_codes, uncertain_as=uncertain_as).astype(bool)
    if pred.shape != ref.shape:
        raise ValueError(
            f"pred_codes and ref_codes must have the same shape, got {pred.shape} and {ref.shape}"
        )
    true_pos = (pred & ref).sum(axis=1)
    denominator = pred.sum(axis=1) + ref.sum(axis=1)  # = 2 TP + FP + FN
    f1 = np.divide(2.0 * true_pos, denominator, out=np.zeros(len(pred)), where=denominator > 0)
    return np.where(denominator == 0, float(both_empty), f1)
