"""evaluation.bootstrap: the paired bootstrap interval of a CE-F1 difference between two models."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.bootstrap import f1_from_counts, paired_bootstrap, resample_weights, study_counts
from evaluation.ce import macro_prf, micro_prf


def random_labels(n=80, labels=14, seed=0, flip=0.2):
    """Truth with ~25 % positives, and two predictions that each flip a share of the decisions."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, labels)) < 0.25).astype(int)
    a = np.where(rng.random(truth.shape) < flip, 1 - truth, truth)
    b = np.where(rng.random(truth.shape) < flip / 2, 1 - truth, truth)
    return truth, a, b


def test_identical_predictions_give_a_zero_difference_and_a_zero_interval():
    truth, a, _ = random_labels()
    for d in paired_bootstrap(truth, a, a.copy(), n_resamples=200).values():
        assert (d.difference, d.low, d.high) == (0.0, 0.0, 0.0)


def test_a_model_right_everywhere_beats_one_that_predicts_nothing_by_exactly_one():
    truth, _, _ = random_labels()
    result = paired_bootstrap(truth, np.zeros_like(truth), truth, n_resamples=200)
    assert (result["micro"].difference, result["micro"].low, result["micro"].high) == (1.0, 1.0, 1.0)
    assert result["micro"].base == 0.0 and result["micro"].other == 1.0


def test_point_difference_matches_the_ce_metrics_of_each_model():
    truth, a, b = random_labels()
    result = paired_bootstrap(truth, a, b, n_resamples=50)
    assert result["micro"].difference == pytest.approx(micro_prf(truth, b)["f1"] - micro_prf(truth, a)["f1"])
    assert result["macro"].difference == pytest.approx(macro_prf(truth, b)["f1"] - macro_prf(truth, a)["f1"])
    assert result["micro"].low < result["micro"].difference < result["micro"].high
    assert result["micro"].low > 0  # b flips half as many decisions as a: clearly better on 80 studies


def test_each_resample_scores_the_drawn_studies_like_an_explicit_copy_of_them():
    truth, a, _ = random_labels(n=30)
    weights = resample_weights(30, 5, seed=3)
    assert (weights.sum(1) == 30).all()
    counts = study_counts(truth, a)
    for w in weights:
        drawn = np.repeat(np.arange(30), w)
        pooled = (w[:, None, None] * counts).sum(0)
        assert f1_from_counts(pooled, "micro") == pytest.approx(micro_prf(truth[drawn], a[drawn])["f1"])
        assert f1_from_counts(pooled, "macro") == pytest.approx(macro_prf(truth[drawn], a[drawn])["f1"])


def test_interval_is_reproducible_by_seed_and_moves_with_it():
    truth, a, b = random_labels()
    first = paired_bootstrap(truth, a, b, n_resamples=300, seed=7)["micro"]
    again = paired_bootstrap(truth, a, b, n_resamples=300, seed=7)["micro"]
    other = paired_bootstrap(truth, a, b, n_resamples=300, seed=8)["micro"]
    assert (first.low, first.high) == (again.low, again.high)
    assert (first.low, first.high) != (other.low, other.high)


def test_swapping_the_models_negates_the_interval():
    truth, a, b = random_labels(seed=2)
    forward = paired_bootstrap(truth, a, b, n_resamples=300)["macro"]
    backward = paired_bootstrap(truth, b, a, n_resamples=300)["macro"]
    assert backward.difference == pytest.approx(-forward.difference)
    assert (backward.low, backward.high) == pytest.approx((-forward.high, -forward.low))


def test_more_studies_give_a_narrower_interval():
    small = paired_bootstrap(*random_labels(n=40, seed=4), n_resamples=500)["micro"]
    large = paired_bootstrap(*random_labels(n=640, seed=4), n_resamples=500)["micro"]
    assert large.high - large.low < 0.5 * (small.high - small.low)


def test_bad_input_is_a_clear_error():
    truth, a, _ = random_labels()
    with pytest.raises(ValueError, match="shape"):
        paired_bootstrap(truth, a[:5], a)
    with pytest.raises(ValueError, match="only 0 and 1"):
        paired_bootstrap(truth, a * 2, a)
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap(truth, a, a, n_resamples=0)
