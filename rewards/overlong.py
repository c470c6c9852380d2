"""DAPO's soft overlong penalty (Yu et al., 2025, eq. 13): a reward term for completions near the budget.

A completion cut off by ``max_new_tokens`` gets the reward of whatever it wrote before the cut, which may be
as good as a finished one: the policy is never told that running out of budget is bad. A hard -1 for every
truncated completion punishes a report that was one token from its end as much as rambling. DAPO's soft
penalty ramps instead: with a buffer of ``L`` tokens at the end of a budget of ``L_max``,

    0                              length <= L_max - L
    ((L_max - L) - length) / L     L_max - L < length <= L_max    (linear, -1 at length = L_max)
    -1                             length > L_max

The trainer adds it to each completion's total reward as the term ``overlong`` (``reward.overlong_penalty=L``,
grpo/experience.py); lengths count completion tokens, the stop token included.
"""

from __future__ import annotations

import numpy as np


def overlong_penalty(lengths, max_length: int, buffer: int) -> np.ndarray:
    """``(N,)`` float32 penalties in ``[-1, 0]`` for completions of ``lengths`` tokens, a budget of
    ``max_length`` tokens and a ramp over its last ``buffer`` tokens (``1 <= buffer <= max_length``)."""
    if isinstance(buffer, bool) or not isinstance(buffer, int) or not 1 <= buffer <= max_length:
        raise ValueError(
            f"overlong_penalty: buffer must be an int in [1, max_length={max_length}], got {buffer!r}"
        )
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.ndim != 1 or (lengths < 0).any():
        raise ValueError(f"overlong_penalty: lengths must be 1-D and >= 0, got {lengths!r}")
    return np.clip(((max_length - buffer) - lengths) / buffer, -1.0, 0.0).astype(np.float32)
