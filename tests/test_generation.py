"""model/generation.py: how generated tokens become completions (shared by the rollout and evaluation)."""

import torch

from model.generation import split_completions


def test_split_completions_masks_through_the_first_stop_token_and_flags_truncation():
    pad, eos = 0, 9
    tokens = torch.tensor([[5, 6, eos, 7, eos], [5, 6, 7, 8, 4], [eos, 3, 3, 3, 3]])
    ids, mask, truncated = split_completions(tokens, [eos], pad)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]
    assert ids.tolist() == [[5, 6, eos, pad, pad], [5, 6, 7, 8, 4], [eos, pad, pad, pad, pad]]
