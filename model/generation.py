"""Generation helpers around the rollout engines (``model/engine``): the stop tokens, and the split of what an
engine returns into completions. Shared by the GRPO rollout (``grpo/trainer.py``), evaluation
(``evaluation/generate.py``) and export, so all stop and truncate the same way."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.engine import SamplingParams
from model.loading import lm_head_weight, suppressed_token_ids


@dataclass
class Completions:
    """Generated continuations of a batch of prompts, one row per completion."""

    ids: torch.Tensor  # (N, T), pad after the first stop token
    mask: torch.Tensor  # (N, T) bool, true up to and including the first stop token
    truncated: torch.Tensor  # (N,) bool, no stop token within the budget
    sample_logp: torch.Tensor | None = (
        None  # (N, T) the sampler's log-probs of the tokens, when it knows them
    )


def split_completions(
    tokens: torch.Tensor, stop_ids: list[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generated tokens -> (ids, mask, truncated). The mask covers each row up to and including its first
    stop token; rows without one were cut by max_new_tokens (``truncated``). Ids after the mask are pad."""
    is_stop = torch.isin(tokens, torch.tensor(stop_ids, device=tokens.device))
    has_stop = is_stop.any(dim=1)
    first_stop = torch.where(has_stop, is_stop.int().argmax(dim=1), tokens.shape[1] - 1)
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    mask = positions[None, :] <= first_stop[:, None]
    return tokens.masked_fill(~mask, pad_id), mask, ~has_stop


def stop_token_ids(model, tokenizer) -> list[int]:
    """End-of-turn ids: the tokenizer's eos first (what SFT targets end with), then generation_config's."""
    ids = [tokenizer.convert_tokens_to_ids("<|im_end|>")] if "<|im_end|>" in tokenizer.get_vocab() else []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.extend(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return list(dict.fromkeys(ids))


def sampling_params(
    model, processor, *, max_new_tokens: int, ascii_only: bool = False, **fields
) -> SamplingParams:
    """SamplingParams for ``model``: its stop ids (``stop_token_ids``), the tokenizer's pad id and the tokens
    it must never draw (``suppressed_token_ids``: the vision tokens, with ``ascii_only`` the non-ASCII ones);
    ``fields``: SamplingParams' other fields (temperature, top_p, do_sample, num_samples, ...)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return SamplingParams(
        max_new_tokens=max_new_tokens, stop_ids=tuple(stop_token_ids(model, tokenizer)),
        pad_id=tokenizer.pad_token_id,
        suppress_ids=tuple(suppressed_token_ids(processor, lm_head_weight(model).shape[0], ascii_only)),
        **fields,
    )  # fmt: skip
