"""DAPO's soft overlong penalty (rewards/overlong.py) against a hand computation."""

import numpy as np
import pytest

from rewards.overlong import overlong_penalty


def test_penalty_is_zero_before_the_buffer_then_linear_to_minus_one_at_the_budget():
    # budget 10, buffer 4: free up to 6 tokens, then -1/4 per token, -1 at 10 (and beyond)
    got = overlong_penalty([0, 6, 7, 8, 9, 10, 12], max_length=10, buffer=4)
    np.testing.assert_allclose(got, [0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0])
    assert got.dtype == np.float32


def test_a_buffer_of_the_whole_budget_ramps_from_the_first_token():
    np.testing.assert_allclose(overlong_penalty(np.array([0, 2, 4]), 4, 4), [0.0, -0.5, -1.0])


@pytest.mark.parametrize(
    ("lengths", "buffer", "message"),
    [([3], 0, "buffer"), ([3], 11, "buffer"), ([3], 2.0, "buffer"), ([[3]], 2, "1-D"), ([-1], 2, ">= 0")],
)
def test_bad_inputs_raise_a_clear_value_error(lengths, buffer, message):
    with pytest.raises(ValueError, match=message):
        overlong_penalty(lengths, 10, buffer)
