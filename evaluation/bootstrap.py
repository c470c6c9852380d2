"""Paired bootstrap of the difference in CE-F1 between two models scored on the same studies.

A few points of F1 on ~100 test studies can be noise. The paired bootstrap asks how much the difference
``F1(other) - F1(base)`` moves when the test set is redrawn: each resample draws N studies with replacement,
the SAME draw is applied to both models (that is what makes it paired: a hard study counts against both),
and the F1 of each model is recomputed from the drawn studies' counts. The 95 % interval is the 2.5th and
97.5th percentiles of the resampled differences (the percentile bootstrap).

It is fast because a resample only re-weights studies: with ``W[r, i]`` = how often study ``i`` is drawn in
resample ``r``, the pooled counts of every resample are one matrix product ``W @ counts`` over the
per-study true-positive / false-positive / false-negative counts.

F1 is as in evaluation.ce, with a zero denominator counting 0: micro F1 = 2 TP / (2 TP + FP + FN) over
every (study, label) decision; macro F1 = the mean over labels of the per-label F1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.ce import SUBSETS, subset_columns
from evaluation.truth import TRUTH_FILE, read_scored_labels

F1_AVERAGES: tuple[str, ...] = ("micro", "macro")


@dataclass(frozen=True)
class PairedDifference:
    """``difference`` = F1(other) - F1(base) on the full test set, with its bootstrap interval."""

    average: str  # "micro" | "macro"
    base: float  # F1 of the base model (fraction)
    other: float  # F1 of the other model (fraction)
    difference: float
    low: float  # interval bounds of the difference
    high: float
    confidence: float
    n_studies: int
    n_resamples: int
    seed: int


def _check_binary(name: str, matrix: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or (shape is not None and matrix.shape != shape):
        expected = f"shape {shape}" if shape is not None else "a 2-D (studies, labels) array"
        raise ValueError(f"{name} must be {expected}, got shape {matrix.shape}")
    if not np.isin(matrix, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1 (binarize label codes first)")
    return matrix.astype(np.int64)


def study_counts(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """``(N, 3, L)`` per-study, per-label true-positive, false-positive and false-negative counts (0/1)."""
    truth = _check_binary("truth", truth, None)
    predicted = _check_binary("predicted", predicted, truth.shape)
    tp = truth & predicted
    fp = (1 - truth) & predicted
    fn = truth & (1 - predicted)
    return np.stack([tp, fp, fn], axis=1)


def f1_from_counts(counts: np.ndarray, average: str) -> np.ndarray:
    """F1 from pooled ``(..., 3, L)`` TP / FP / FN counts -> shape ``(...)``; a 0/0 counts as 0."""
    if average not in F1_AVERAGES:
        raise ValueError(f"average must be one of {F1_AVERAGES}, got {average!r}")
    tp, fp, fn = counts[..., 0, :], counts[..., 1, :], counts[..., 2, :]
    if average == "micro":
        tp, fp, fn = tp.sum(-1), fp.sum(-1), fn.sum(-1)
    denominator = 2.0 * tp + fp + fn
    f1 = np.divide(2.0 * tp, denominator, out=np.zeros(np.shape(denominator)), where=denominator > 0)
    return f1 if average == "micro" else f1.mean(-1)


def resample_weights(n_studies: int, n_resamples: int, seed: int) -> np.ndarray:
    """``(n_resamples, n_studies)``: how often each study is drawn in each resample (rows sum to N)."""
    if n_studies < 1:
        raise ValueError("the bootstrap needs at least one study")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    draws = np.random.default_rng(seed).integers(0, n_studies, size=(n_resamples, n_studies))
    offsets = np.arange(n_resamples)[:, None] * n_studies
    return np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_studies).reshape(
        n_resamples, n_studies
    )


def paired_bootstrap(
    truth: np.ndarray,
    predicted_base: np.ndarray,
    predicted_other: np.ndarray,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, PairedDifference]:
    """Micro and macro F1 of ``predicted_other`` minus ``predicted_base`` against ``truth`` (all ``(N, L)``
    0/1 arrays, row i = study i in all three), each with its paired percentile-bootstrap interval.

    Deterministic for a seed. Returns ``{"micro": PairedDifference, "macro": PairedDifference}``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    base_counts = study_counts(truth, predicted_base)
    other_counts = study_counts(truth, predicted_other)
    n = base_counts.shape[0]
    weights = resample_weights(n, n_resamples, seed).astype(np.float64)

    def pooled(counts: np.ndarray) -> np.ndarray:  # (R, 3, L): each resample's summed counts
        return (weights @ counts.reshape(n, -1)).reshape(n_resamples, *counts.shape[1:])

    resampled_base, resampled_other = pooled(base_counts), pooled(other_counts)
    tail = (1.0 - confidence) / 2.0
    out = {}
    for average in F1_AVERAGES:
        base = float(f1_from_counts(base_counts.sum(0), average))
        other = float(f1_from_counts(other_counts.sum(0), average))
        differences = f1_from_counts(resampled_other, average) - f1_from_counts(resampled_base, average)
        low, high = np.quantile(differences, [tail, 1.0 - tail])
        out[average] = PairedDifference(
            average, base, other, other - base, float(low), float(high), confidence, n, n_resamples, seed
        )
    return out


# ------------------------------------------------------------------------------- evaluation folders
def _common_target(folders) -> str:
    """Return "truth" when every folder has true labels (truth.csv), else "reference"."""
    return "truth" if all((Path(f) / TRUTH_FILE).is_file() for f in folders) else "reference"


def _aligned(base, other) -> np.ndarray:
    """Row indices that put ``other``'s studies in ``base``'s order; errors unless both hold the same
    studies, scored against the same labels under the same uncertain policy."""
    if set(base.ids) != set(other.ids) or len(base.ids) != len(other.ids):
        only = sorted(set(base.ids) ^ set(other.ids))[:3]
        raise ValueError(
            f"{base.folder} and {other.folder} hold different studies (e.g. {only}); a paired comparison "
            "needs the same test studies, one report each"
        )
    if base.uncertain_as != other.uncertain_as:
        raise ValueError(
            f"{base.folder} counts uncertain as {base.uncertain_as}, {other.folder} as {other.uncertain_as}"
        )
    position = {id_: i for i, id_ in enumerate(other.ids)}
    order = np.array([position[id_] for id_ in base.ids])
    if not np.array_equal(base.target, other.target[order]):
        raise ValueError(
            f"{base.folder} and {other.folder} were scored against different {base.against} labels "
            "(another labeler or annotation?)"
        )
    return order


def compare_folders(
    base_folder,
    other_folder,
    *,
    against: str = "auto",
    subset: str = "14",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, PairedDifference]:
    """paired_bootstrap of two evaluation folders written by evaluate.py (other minus base), against the
    true labels when both have them (``against="auto"``), else the reference reports' labels.

    A bench script's entry: ``compare_folders("eval/sft", "eval/grpo")["micro"].low > 0``.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {tuple(SUBSETS)}, got {subset!r}")
    if against == "auto":
        against = _common_target([base_folder, other_folder])
    base, other = read_scored_labels(base_folder, against), read_scored_labels(other_folder, against)
    order = _aligned(base, other)
    columns = subset_columns(SUBSETS[subset])
    return paired_bootstrap(
        base.target[:, columns],
        base.predicted[:, columns],
        other.predicted[order][:, columns],
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
    )


def _signed(value: float) -> str:
    return f"{100.0 * value:+.2f}"


def difference_markdown(
    folders, *, subset: str = "14", n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> str:
    """Every folder's CE micro and macro F1 with the paired bootstrap interval of its difference to the
    first folder's, as a Markdown table (against the true labels when every folder has them)."""
    if not folders:
        raise ValueError("--compare needs at least one folder")
    against = _common_target(folders)
    methods = [read_scored_labels(f, against).method for f in folders]
    level = f"{100 * confidence:g} %"
    labels = "the 14 observations" if subset == "14" else "the 5-label subset"
    target = "the true labels" if against == "truth" else "the reference reports' labels"
    lines = [
        f"CE F1 over {labels} against {target}, in %; Δ = difference to the first row, with its paired "
        f"bootstrap {level} interval ({n_resamples} resamples of the test studies, seed {seed}).",
        "",
        "| Method | micro-F1 | Δ micro-F1 [interval] | macro-F1 | Δ macro-F1 [interval] |",
        "|---|---|---|---|---|",
    ]
    for i, (folder, method) in enumerate(zip(folders, methods)):
        result = compare_folders(
            folders[0],
            folder,
            against=against,
            subset=subset,
            n_resamples=n_resamples,
            seed=seed,
            confidence=confidence,
        )
        cells = [method.replace("|", "/")]
        for average in F1_AVERAGES:
            d = result[average]
            cells.append(f"{100.0 * d.other:.2f}")
            cells.append("—" if i == 0 else f"{_signed(d.difference)} [{_signed(d.low)}, {_signed(d.high)}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
