"""CE metrics (evaluation.ce): hand-computed cases per average, agreement with scikit-learn, the uncertain
policies, empty predictions and the polarity partition."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.ce import (
    POLARITY_CATEGORIES,
    ce_metrics,
    example_prf,
    macro_prf,
    micro_prf,
    per_label_prf,
    polarity_analysis,
    subset_columns,
)
from rewards.vocabulary import BLANK, CE5, NEGATIVE, NO_FINDING, OBSERVATIONS, POSITIVE, UNCERTAIN

# Three reports x three labels; reference (truth) and prediction.
#            label:  a  b  c
Y_TRUE = np.array(
    [
        [1, 1, 0],  # report 0: tp a, fn b
        [0, 1, 0],  # report 1: tp b, fp c
        [0, 0, 0],
    ]
)  # report 2: fp a           (no positive in the reference)
Y_PRED = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0]])


def test_micro_pools_every_decision_hand_computed():
    # tp = 2 (0a, 1b), fp = 2 (1c, 2a), fn = 1 (0b)
    assert micro_prf(Y_TRUE, Y_PRED) == pytest.approx({"precision": 2 / 4, "recall": 2 / 3, "f1": 4 / 7})


def test_macro_is_unweighted_mean_of_labels_hand_computed():
    # a: tp1 fp1 fn0 -> P 1/2 R 1 F1 2/3; b: tp1 fp0 fn1 -> P 1 R 1/2 F1 2/3; c: tp0 fp1 fn0 -> P 0, R 0 (no
    # reference positive: zero_division), F1 0.
    expected = {"precision": (0.5 + 1 + 0) / 3, "recall": (1 + 0.5 + 0) / 3, "f1": (2 / 3 + 2 / 3 + 0) / 3}
    assert macro_prf(Y_TRUE, Y_PRED) == pytest.approx(expected)


def test_example_based_is_mean_over_reports_hand_computed():
    # report 0: tp1 fp0 fn1 -> P 1 R 1/2 F1 2/3; report 1: tp1 fp1 fn0 -> P 1/2 R 1 F1 2/3;
    # report 2: tp0 fp1 fn0 -> P 0, R 0 (no reference positive), F1 0.
    expected = {"precision": 1.5 / 3, "recall": 1.5 / 3, "f1": (4 / 3) / 3}
    assert example_prf(Y_TRUE, Y_PRED) == pytest.approx(expected)


def test_example_f1_is_mean_of_report_f1_not_harmonic_mean_of_averages():
    result = example_prf(Y_TRUE, Y_PRED)
    harmonic = 2 * result["precision"] * result["recall"] / (result["precision"] + result["recall"])
    assert result["f1"] != pytest.approx(harmonic)


def test_zero_division_one_scores_empty_reports_and_labels_as_perfect():
    both_empty_true = np.array([[1, 0], [0, 0]])
    both_empty_pred = np.array([[1, 0], [0, 0]])
    # report 1 and label 1 have no positive anywhere: they count 1 with zero_division=1, 0 with 0.
    assert example_prf(both_empty_true, both_empty_pred, zero_division=1)["f1"] == pytest.approx(1.0)
    assert example_prf(both_empty_true, both_empty_pred, zero_division=0)["f1"] == pytest.approx(0.5)
    assert macro_prf(both_empty_true, both_empty_pred, zero_division=1)["f1"] == pytest.approx(1.0)
    assert macro_prf(both_empty_true, both_empty_pred, zero_division=0)["f1"] == pytest.approx(0.5)


@pytest.mark.parametrize("zero_division", [0, 1])
@pytest.mark.parametrize("seed", range(6))
def test_averages_agree_with_scikit_learn_on_random_matrices(seed, zero_division):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n, labels = rng.integers(1, 40), rng.integers(1, 15)
    density = rng.uniform(0.05, 0.6)
    y_true = (rng.random((n, labels)) < density).astype(int)
    y_pred = (rng.random((n, labels)) < density).astype(int)
    y_true[:, 0] = 0  # a label with no reference positive
    y_pred[0] = 0  # a report with no predicted positive
    ours = {"micro": micro_prf, "macro": macro_prf, "samples": example_prf}
    for average, ours_fn in ours.items():
        p, r, f, _ = sklearn_metrics.precision_recall_fscore_support(
            y_true, y_pred, average=average, zero_division=zero_division
        )
        got = ours_fn(y_true, y_pred, zero_division)
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f), abs=1e-12), average
    p, r, f, s = sklearn_metrics.precision_recall_fscore_support(
        y_true, y_pred, average=None, zero_division=zero_division
    )
    got = per_label_prf(y_true, y_pred, zero_division)
    np.testing.assert_allclose(got["precision"], p)
    np.testing.assert_allclose(got["recall"], r)
    np.testing.assert_allclose(got["f1"], f)
    np.testing.assert_array_equal(got["support"], s)


def _codes(n: int, entries: dict[tuple[int, str], int]) -> np.ndarray:
    codes = np.zeros((n, len(OBSERVATIONS)), dtype=np.int64)
    for (row, label), code in entries.items():
        codes[row, OBSERVATIONS.index(label)] = code
    return codes


def test_uncertain_policy_changes_what_counts_as_positive():
    # Reference: Edema uncertain; prediction: Edema positive.
    ref = _codes(1, {(0, "Edema"): UNCERTAIN})
    pred = _codes(1, {(0, "Edema"): POSITIVE})
    as_negative = ce_metrics(ref, pred, uncertain_as="negative")
    as_positive = ce_metrics(ref, pred, uncertain_as="positive")
    # As negative: the predicted positive is a false positive -> P = R = F1 = 0 (no reference positive).
    assert as_negative["14"]["micro"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0})
    assert as_negative["per_label"]["Edema"]["support"] == 0
    # As positive: a true positive -> 1, and Edema has support 1.
    assert as_positive["14"]["micro"] == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0})
    assert as_positive["per_label"]["Edema"]["support"] == 1
    assert as_negative["uncertain_as"] == "negative" and as_positive["uncertain_as"] == "positive"


def test_negative_mentions_never_count_as_positive_under_either_policy():
    ref = _codes(2, {(0, "Cardiomegaly"): NEGATIVE, (1, "Cardiomegaly"): POSITIVE})
    pred = _codes(2, {(0, "Cardiomegaly"): NEGATIVE, (1, "Cardiomegaly"): NEGATIVE})
    for policy in ("negative", "positive"):
        figures = ce_metrics(ref, pred, uncertain_as=policy)["per_label"]["Cardiomegaly"]
        assert (figures["support"], figures["predicted"], figures["recall"]) == (1, 0, 0.0)


def test_unknown_uncertain_policy_is_rejected():
    codes = np.zeros((1, len(OBSERVATIONS)), dtype=np.int64)
    with pytest.raises(ValueError, match="uncertain_as"):
        ce_metrics(codes, codes, uncertain_as="ignore")


def test_empty_predictions_score_zero_without_warnings_or_nan():
    ref = _codes(2, {(0, "Pleural Effusion"): POSITIVE, (1, "Atelectasis"): POSITIVE, (1, "Edema"): POSITIVE})
    pred = np.zeros_like(ref)  # the model wrote nothing the labeler recognises
    result = ce_metrics(ref, pred)
    for subset in ("14", "5"):
        for average in ("micro", "macro", "example"):
            assert result[subset][average] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}, (subset, average)
    assert result["per_label"]["Pleural Effusion"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 1,
        "predicted": 0,
    }


def test_five_label_subset_uses_only_the_ce5_columns():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 4, size=(20, len(OBSERVATIONS)))
    pred = rng.integers(0, 4, size=(20, len(OBSERVATIONS)))
    ref[:, NO_FINDING] = ref[:, NO_FINDING] % 2  # No Finding is only blank or positive
    pred[:, NO_FINDING] = pred[:, NO_FINDING] % 2
    result = ce_metrics(ref, pred)
    columns = subset_columns(CE5)
    y_true, y_pred = (ref[:, columns] == POSITIVE).astype(int), (pred[:, columns] == POSITIVE).astype(int)
    assert result["5"]["micro"] == pytest.approx(micro_prf(y_true, y_pred))
    assert result["5"]["macro"] == pytest.approx(macro_prf(y_true, y_pred))
    assert result["5"]["example"] == pytest.approx(example_prf(y_true, y_pred))
    # and the macro over 5 is the mean of those labels' per-label F1
    assert result["5"]["macro"]["f1"] == pytest.approx(
        np.mean([result["per_label"][lab]["f1"] for lab in CE5])
    )


def test_bad_inputs_raise_clear_errors():
    codes = np.zeros((2, len(OBSERVATIONS)), dtype=np.int64)
    with pytest.raises(ValueError, match="shape"):
        ce_metrics(codes, codes[:1])
    with pytest.raises(ValueError, match="at least one report"):
        micro_prf(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        micro_prf(np.array([[2]]), np.array([[1]]))
    with pytest.raises(ValueError, match="zero_division"):
        macro_prf(np.array([[1]]), np.array([[1]]), zero_division=0.5)
    with pytest.raises(ValueError, match="unknown observation"):
        subset_columns(["Cardiomegally"])


def test_polarity_counts_each_kind_hand_computed():
    ref = _codes(
        6,
        {
            (0, "Edema"): POSITIVE,  # pred negative -> reversal pos->neg
            (1, "Edema"): NEGATIVE,  # pred positive -> reversal neg->pos
            (2, "Edema"): UNCERTAIN,  # pred negative -> uncertainty mismatch
            (3, "Edema"): POSITIVE,  # pred blank -> omission (of a positive)
            (5, "Edema"): NEGATIVE,  # pred negative -> agree
        },
    )
    pred = _codes(
        6,
        {
            (0, "Edema"): NEGATIVE,
            (1, "Edema"): POSITIVE,
            (2, "Edema"): NEGATIVE,
            (4, "Edema"): POSITIVE,  # ref blank -> unsupported (positive)
            (5, "Edema"): NEGATIVE,
        },
    )
    edema = polarity_analysis(ref, pred)["Edema"]
    assert edema == {
        "both_blank": 0,
        "agree": 1,
        "reversal_pos_to_neg": 1,
        "reversal_neg_to_pos": 1,
        "uncertainty_mismatch": 1,
        "omission": 1,
        "unsupported": 1,
        "reversals": 2,
        "omitted_positive": 1,
        "unsupported_positive": 1,
    }


def test_polarity_categories_partition_every_report_label_pair():
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 4, size=(50, len(OBSERVATIONS)))
    pred = rng.integers(0, 4, size=(50, len(OBSERVATIONS)))
    ref[:, NO_FINDING] %= 2
    pred[:, NO_FINDING] %= 2
    result = polarity_analysis(ref, pred)
    for label in OBSERVATIONS:
        assert sum(result[label][k] for k in POLARITY_CATEGORIES) == 50, label
    total = result["total"]
    assert sum(total[k] for k in POLARITY_CATEGORIES) == 50 * len(OBSERVATIONS)
    assert total["agree"] + total["both_blank"] == int((ref == pred).sum())
    assert total["omission"] == int(((ref != BLANK) & (pred == BLANK)).sum())
