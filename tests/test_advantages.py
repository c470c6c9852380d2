"""Eq. (2): group-normalized advantages, one property per test."""

import math

import pytest
import torch

from grpo.advantages import (
    ADV_SCALE_ESTIMATORS,
    ESTIMATORS,
    POOLED,
    group_advantages,
    group_has_spread,
    per_term_rewards,
    rloo_advantages,
)


def test_hand_computed_group_matches_eq2_population_std_with_eps_in_root():
    rewards = torch.tensor([1.0, 0.75, 0.25, 0.0], dtype=torch.float64)
    # mean 0.5; deviations +-0.5, +-0.25; population variance (0.25 + 0.0625) * 2 / 4 = 0.15625
    sigma = math.sqrt(0.15625 + 1e-6)
    expected = torch.tensor([0.5, 0.25, -0.25, -0.5], dtype=torch.float64) / sigma
    got = group_advantages(rewards, group_size=4, eps=1e-6)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert got[0].item() == pytest.approx(1.2649070, abs=1e-6)


def test_groups_are_normalized_independently():
    first = torch.tensor([0.2, 0.9, 0.4])
    alone = group_advantages(first, group_size=3)
    for other in ([5.0, -3.0, 100.0], [0.0, 0.0, 0.0], [0.5, 0.6, 0.7]):
        both = group_advantages(torch.cat([first, torch.tensor(other)]), group_size=3)
        torch.testing.assert_close(both[:3], alone, rtol=0, atol=0)


def test_group_with_zero_spread_gives_exactly_zero_even_when_the_float_mean_is_inexact():
    # In float32, 0.9 - mean([0.9, 0.9, 0.9]) is 6e-8, not 0: eq. (2) alone would give a tiny nonzero.
    rewards = torch.tensor([0.9, 0.9, 0.9, 0.7, 0.7, 0.7, 0.3, 0.9, 0.3])
    for scale in ("group", "batch", "none"):
        got = group_advantages(rewards, group_size=3, scale=scale)
        assert torch.equal(got[:6], torch.zeros(6)), scale
        assert got[6:].abs().min() > 0.1
    # eps = 0 would divide 0 by 0; an equal group must still give 0, not NaN.
    assert torch.equal(group_advantages(torch.full((4,), 0.3), 4, eps=0.0), torch.zeros(4))


def test_adding_a_constant_to_a_group_changes_nothing():
    rewards = torch.tensor([0.1, 0.8, 0.35, 0.6], dtype=torch.float64)
    for shift in (-7.0, 0.5, 1000.0):
        torch.testing.assert_close(
            group_advantages(rewards + shift, 4), group_advantages(rewards, 4), rtol=0, atol=1e-9
        )


def test_scaling_a_group_changes_nothing_up_to_eps():
    rewards = torch.tensor([0.1, 0.8, 0.35, 0.6], dtype=torch.float64)
    base = group_advantages(rewards, 4, eps=0.0)
    for factor in (3.0, 0.5, 40.0):
        torch.testing.assert_close(group_advantages(rewards * factor, 4, eps=0.0), base, rtol=0, atol=1e-12)
        # with eps the only difference is eps's weight relative to the (scaled) variance
        scaled = group_advantages(rewards * factor, 4, eps=1e-6)
        assert (scaled - base).abs().max() < 1e-6 / (factor**2 * 0.07) + 1e-12


def test_eps_sits_inside_the_square_root():
    # Spread 1e-3: variance 2.5e-7 is comparable to eps = 1e-6, so where eps sits matters.
    rewards = torch.tensor([0.0, 1e-3], dtype=torch.float64)
    got = group_advantages(rewards, 2, eps=1e-6)
    inside = 0.5e-3 / math.sqrt(0.25e-6 + 1e-6)  # eq. (2): 0.4472
    outside = 0.5e-3 / (0.5e-3 + 1e-6)  # sqrt(var) + eps would give 0.998
    assert got[1].item() == pytest.approx(inside, rel=1e-9)
    assert abs(got[1].item() - outside) > 0.5


def test_batch_scale_divides_by_the_batch_population_std_and_none_only_centers():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.0, 1.0], dtype=torch.float64)
    centered = torch.tensor([0.5, -0.5, 0.0, 0.0, -0.5, 0.5], dtype=torch.float64)
    batch_sigma = math.sqrt(((rewards - rewards.mean()) ** 2).mean().item() + 1e-6)  # sqrt(1/6 + eps)
    torch.testing.assert_close(group_advantages(rewards, 2, scale="batch"), centered / batch_sigma)
    torch.testing.assert_close(group_advantages(rewards, 2, scale="none"), centered)
    # the default differs: each 2-group with a spread becomes +-1 (up to eps)
    assert group_advantages(rewards, 2)[0].item() == pytest.approx(1.0, abs=1e-5)


def test_dtypes_float64_is_kept_and_integer_rewards_become_float32():
    assert group_advantages(torch.tensor([1.0, 2.0], dtype=torch.float64), 2).dtype == torch.float64
    ints = group_advantages(torch.tensor([0, 1, 1, 1]), 2)
    assert ints.dtype == torch.float32
    assert ints[0].item() == pytest.approx(-1.0, abs=1e-5) and ints[2:].eq(0).all()


def test_group_of_one_has_no_relative_signal():
    assert torch.equal(group_advantages(torch.tensor([0.3, 0.9]), 1), torch.zeros(2))


@pytest.mark.parametrize(
    ("rewards", "group_size", "kwargs", "message"),
    [
        (torch.zeros(2, 4), 4, {}, "1-D"),
        (torch.zeros(6), 4, {}, "cannot be split"),
        (torch.zeros(0), 4, {}, "cannot be split"),
        (torch.zeros(4), 0, {}, "group_size"),
        (torch.zeros(4), 2.0, {}, "group_size"),
        (torch.zeros(4), True, {}, "group_size"),
        (torch.zeros(4, dtype=torch.bool), 2, {}, "real numbers"),
        (torch.zeros(4), 2, {"eps": -1e-6}, "eps"),
        (torch.zeros(4), 2, {"scale": "std"}, "scale"),
        (torch.tensor([0.0, float("nan")]), 2, {}, "NaN"),
        ([0.0, 1.0], 2, {}, "torch.Tensor"),
    ],
)
def test_bad_shapes_grouping_and_options_raise_a_clear_value_error(rewards, group_size, kwargs, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(rewards, group_size, **kwargs)


# ------------------------------------------------------------------ the estimator registry (grpo.advantage)


def test_rloo_baseline_is_the_mean_of_the_other_completions_hand_computed():
    rewards = torch.tensor([1.0, 0.75, 0.25, 0.0], dtype=torch.float64)
    # completion 0: 1 - (0.75 + 0.25 + 0) / 3 = 2/3; completion 3: 0 - (1 + 0.75 + 0.25) / 3 = -2/3
    expected = torch.tensor([2 / 3, 1 / 3, -1 / 3, -2 / 3], dtype=torch.float64)
    torch.testing.assert_close(rloo_advantages(rewards, 4), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(ESTIMATORS["rloo"](rewards, 4, None), expected, rtol=0, atol=1e-12)


def test_no_std_only_centres_and_batch_divides_by_the_given_batch_variance():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5], dtype=torch.float64)
    centred = torch.tensor([0.5, -0.5, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(ESTIMATORS["no_std"](rewards, 2, None), centred)
    # a batch variance of 0.25 - 1e-6 (from other micro-batches and ranks): sqrt(0.25) = 0.5 -> +-1
    torch.testing.assert_close(ESTIMATORS["batch"](rewards, 2, 0.25 - 1e-6), centred / 0.5)
    assert ESTIMATORS["group"](rewards, 2, None)[0].item() == pytest.approx(1.0, abs=1e-5)  # eq. (2)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_gives_exact_zero_to_a_group_without_spread(name):
    rewards = torch.tensor([0.9, 0.9, 0.9, 0.2, 0.7, 0.4])
    got = ESTIMATORS[name](rewards, 3, 0.05)
    assert torch.equal(got[:3], torch.zeros(3)) and got[3:].abs().min() > 0
    assert group_has_spread(rewards, 3).tolist() == [False, True]


def test_the_older_adv_scale_names_map_onto_estimators():
    assert ADV_SCALE_ESTIMATORS == {"group": "group", "batch": "batch", "none": "no_std"}
    assert set(ADV_SCALE_ESTIMATORS.values()) <= set(ESTIMATORS) and POOLED.issubset(ESTIMATORS)


# --------------------------------------------------------------- reward.normalize=per_term


def test_per_term_normalises_each_term_in_its_group_before_the_weighted_sum_hand_computed():
    # two groups of 2: in the first both terms separate the completions; in the second mccs is constant
    terms = {
        "mccs": torch.tensor([0.8, 0.2, 0.5, 0.5], dtype=torch.float64),
        "format": torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64),
    }
    got = per_term_rewards(terms, {"mccs": 0.75, "format": 0.25}, 2)
    z_mccs = 0.3 / math.sqrt(0.09 + 1e-6)  # deviation 0.3, population variance 0.09
    z_format = 0.5 / math.sqrt(0.25 + 1e-6)
    first = 0.75 * z_mccs + 0.25 * z_format
    expected = torch.tensor([first, -first, 0.25 * z_format, -0.25 * z_format], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # each term weighs by its weight alone: its own spread (0.3 for mccs, 0.5 for format) no longer counts


def test_per_term_ignores_unweighted_terms_and_names_missing_ones():
    terms = {"mccs": torch.tensor([0.0, 1.0]), "extra": torch.tensor([5.0, -5.0])}
    torch.testing.assert_close(
        per_term_rewards(terms, {"mccs": 2.0}, 2), torch.tensor([-2.0, 2.0]), atol=1e-5, rtol=0
    )
    with pytest.raises(
        ValueError, match=r"terms \['extra', 'mccs'\] but the weights name \['format', 'mccs'\]"
    ):
        per_term_rewards(terms, {"mccs": 0.75, "format": 0.25}, 2)
