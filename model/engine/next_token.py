"""Next-token choice from logits: the processing that defines the policy's sampling distribution, then a draw.

The distribution is the one HF ``generate`` samples from with our settings, step by step: suppressed tokens
(vision markers; with ``sampling.ascii_only`` the non-ASCII ones) and, before ``min_new_tokens``, the stop
tokens get -inf; the logits are divided by the temperature; top-p keeps the smallest set of most likely
tokens whose mass exceeds ``top_p`` (the same rule as HF's ``TopPLogitsWarper``: sort ascending, drop tokens
whose cumulative mass is ``<= 1 - top_p``, always keep the most likely one).

The draw is inverse-CDF sampling: one uniform number per row, located in the cumulative probabilities with a
binary search. It samples exactly ``softmax`` of the processed logits, like ``torch.multinomial``, but costs
one cumsum and one search instead of multinomial's full-vocabulary work (24 ms per step on CPU at Qwen's
151,936-token vocabulary, per issue 11).
"""

from __future__ import annotations

import torch


def process_logits(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    suppress_ids: torch.Tensor | None = None,
    stop_ids: torch.Tensor | None = None,
    block_stop: bool = False,
) -> torch.Tensor:
    """``(N, V)`` raw logits -> ``(N, V)`` float32 logits of the sampling distribution (-inf = excluded)."""
    scores = logits.float()
    if suppress_ids is not None and suppress_ids.numel():
        scores = scores.index_fill(1, suppress_ids, float("-inf"))
    if block_stop and stop_ids is not None and stop_ids.numel():
        scores = scores.index_fill(1, stop_ids, float("-inf"))
    if temperature != 1.0:
        scores = scores / temperature
    if top_p < 1.0:
        scores = top_p_filter(scores, top_p)
    return scores


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter with HF's tie and boundary rule (see the module docstring); ``scores`` float32."""
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - top_p)
    drop_sorted[:, -1] = False  # the most likely token always stays
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def inverse_cdf_sample(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row from ``softmax(scores)``: ``(N, V)`` float32 -> ``(N,)`` long token ids.

    ``u ~ U[0, total)`` per row and the token is the first index whose cumulative (unnormalised) probability
    exceeds ``u``; a token with zero probability never has a cumulative value above the previous one, so it
    is never chosen.
    """
    weights = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
    cdf = weights.cumsum(dim=-1)
    u = torch.rand(scores.shape[0], 1, device=scores.device, generator=generator) * cdf[:, -1:]
    index = torch.searchsorted(cdf, u, right=True).squeeze(1)
    return index.clamp_(max=scores.shape[1] - 1)


def choose_tokens(
    logits: torch.Tensor,
    *,
    do_sample: bool,
    temperature: float,
    top_p: float,
    suppress_ids: torch.Tensor | None,
    stop_ids: torch.Tensor | None,
    block_stop: bool,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens ``(N,)`` and their log-probs ``(N,)`` under ``log_softmax(logits / temperature)``, the
    quantity the loss recomputes (no suppression or top-p in it: the loss's ratio and KL use the model's
    plain tempered distribution, so that is what the gap metric compares)."""
    excluded = suppress_ids
    if block_stop and stop_ids is not None:
        excluded = stop_ids if excluded is None else torch.cat([excluded, stop_ids])
    if do_sample and top_p >= 1.0:
        tokens, logp = _sample_without_top_p(logits, temperature, excluded, generator)
        if tokens is not None:
            return tokens, logp
    options = dict(stop_ids=stop_ids, block_stop=block_stop, suppress_ids=suppress_ids)
    if do_sample:
        tokens = inverse_cdf_sample(
            process_logits(logits, temperature=temperature, top_p=top_p, **options), generator
        )
    else:
        tokens = process_logits(logits, temperature=1.0, top_p=1.0, **options).argmax(dim=-1)
    tempered = logits.float() / temperature if temperature != 1.0 else logits.float()
    logp = tempered.gather(1, tokens[:, None]).squeeze(1) - torch.logsumexp(tempered, dim=-1)
    return tokens, logp


def _sample_without_top_p(logits, temperature, excluded, generator):
    """The common case (top_p = 1) in five passes over the vocabulary: one set of exponentials serves both
    the log-prob normaliser (all tokens) and the draw (excluded tokens zeroed). Returns (None, None) when a
    row has no mass left in float32 (an excluded token dominating by > ~87 nats), for the exact path."""
    tempered = logits.float() / temperature if temperature != 1.0 else logits.float()
    peak = tempered.max(dim=-1, keepdim=True).values
    weights = torch.exp(tempered - peak)
    log_normaliser = peak.squeeze(1) + weights.sum(dim=-1).log()
    if excluded is not None and excluded.numel():
        weights.index_fill_(1, excluded, 0.0)
    cdf = weights.cumsum_(dim=-1)
    total = cdf[:, -1:]
    if not bool((total > 0).all()):
        return None, None
    u = torch.rand(logits.shape[0], 1, device=logits.device, generator=generator) * total
    tokens = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=logits.shape[1] - 1)
    return tokens, tempered.gather(1, tokens[:, None]).squeeze(1) - log_normaliser
