"""Per-token log-probs of given target tokens, without full-vocabulary fp32 logits in memory.

GRPO needs ``log pi(o_t | q, o_<t)`` of each sampled completion token under the policy, the reference and
(sometimes) the old policy. The obvious route, ``log_softmax(logits).gather(targets)``, holds a
``(N, T, V)`` fp32 tensor (and as much again for its gradient): with Qwen's vocabulary of 151,936,
8 sequences of 512 tokens make 2.5 GB per copy. Here tokens are processed in chunks; each chunk's logits
are recomputed in the backward pass (activation checkpointing) instead of being kept.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def selective_log_softmax(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, chunk_size: int = 1024
) -> torch.Tensor:
    """``log_softmax(logits / temperature).gather(-1, targets)`` computed ``chunk_size`` tokens at a time.

    ``logits`` ``(N, T, V)`` in any floating dtype (bf16 is upcast per chunk), ``targets`` ``(N, T)``
    integer token ids in ``[0, V)``. Returns ``(N, T)`` float32 log-probs; gradients flow to ``logits``.
    Only one chunk's fp32 log-softmax exists at a time, in the forward and in the backward pass.
    """
    if logits.dim() != 3:
        raise ValueError(f"selective_log_softmax: logits must be (N, T, V), got shape {tuple(logits.shape)}")
    n, t, vocab = logits.shape
    _check_targets("selective_log_softmax", targets, (n, t))
    _check_temperature_and_chunk("selective_log_softmax", temperature, chunk_size)
    _check_target_range("selective_log_softmax", targets, vocab)

    flat_logits = logits.reshape(n * t, vocab)
    flat_targets = targets.reshape(n * t).long()
    pieces = [
        _maybe_checkpoint(
            _logits_to_logprobs,
            flat_logits[start : start + chunk_size],
            flat_targets[start : start + chunk_size],
            temperature,
        )
        for start in range(0, n * t, chunk_size)
    ]
    return _concat(pieces, logits.device).reshape(n, t)


def token_logprobs_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs ``log_softmax((hidden @ weight.T + bias) / temperature).gather(targets)``.

    Args:
        hidden: ``(N, T, H)`` final-norm hidden states at the positions that predict ``targets``
            (position ``t`` predicts token ``t + 1`` of the full sequence).
        weight: ``(V, H)`` the output projection (``lm_head.weight``).
        targets: ``(N, T)`` integer token ids in ``[0, V)``.
        temperature: the sampling temperature; logits are divided by it, as when sampling.
        chunk_size: tokens per chunk; one chunk's ``(chunk_size, V)`` logits are the peak extra memory.
        bias: optional ``(V,)`` output bias.
        mask: optional ``(N, T)``; only its true/nonzero positions are computed (padding after EOS costs
            nothing, and its target ids are not even checked) and the others return 0 with no gradient.
        entropy: also return the entropy ``H = -sum_v p_v log p_v`` of each position's distribution (the
            same tempered softmax), from the same chunk's logits, with its gradient: the full-vocabulary
            distribution is never held for more than one chunk. It costs one more ``(chunk, V)`` tensor
            while a chunk is recomputed in the backward pass.

    Returns ``(N, T)`` float32, or ``(log-probs, entropies)`` with ``entropy``. The projection runs in the
    inputs' dtype (bf16 stays bf16, as in the model's own forward); the softmax runs in float32. Gradients
    flow to ``hidden``, ``weight`` and ``bias``; the backward recomputes each chunk's logits rather than
    keeping them.
    """
    if hidden.dim() != 3:
        raise ValueError(f"token_logprobs_from_hidden: hidden must be (N, T, H), got {tuple(hidden.shape)}")
    n, t, width = hidden.shape
    if weight.dim() != 2 or weight.shape[1] != width:
        raise ValueError(
            f"token_logprobs_from_hidden: weight must be (V, H={width}), got {tuple(weight.shape)}"
        )
    vocab = weight.shape[0]
    if weight.dtype != hidden.dtype or (bias is not None and bias.dtype != hidden.dtype):
        raise ValueError(
            f"token_logprobs_from_hidden: hidden, weight and bias must have the same dtype, got "
            f"{hidden.dtype}, {weight.dtype}, {None if bias is None else bias.dtype}"
        )
    if bias is not None and tuple(bias.shape) != (vocab,):
        raise ValueError(f"token_logprobs_from_hidden: bias must be ({vocab},), got {tuple(bias.shape)}")
    _check_targets("token_logprobs_from_hidden", targets, (n, t))
    _check_temperature_and_chunk("token_logprobs_from_hidden", temperature, chunk_size)

    flat_hidden = hidden.reshape(n * t, width)
    flat_targets = targets.reshape(n * t).long()
    positions = None
    if mask is not None:
        if tuple(mask.shape) != (n, t):
            raise ValueError(
                f"token_logprobs_from_hidden: mask must have shape {(n, t)}, got {tuple(mask.shape)}"
            )
        positions = mask.reshape(n * t).nonzero().squeeze(1)
        flat_hidden = flat_hidden.index_select(0, positions)
        flat_targets = flat_targets.index_select(0, positions)
    _check_target_range("token_logprobs_from_hidden", flat_targets, vocab)

    pieces = [
        _maybe_checkpoint(
            _hidden_to_logprobs,
            flat_hidden[start : start + chunk_size],
            weight,
            bias,
            flat_targets[start : start + chunk_size],
            temperature,
            entropy,
        )
        for start in range(0, flat_hidden.shape[0], chunk_size)
    ]
    outputs = zip(*pieces) if entropy else [pieces]  # with entropy each chunk gives (log-probs, entropies)
    results = []
    for parts in outputs:
        values = _concat(list(parts), hidden.device)
        if positions is not None:
            values = torch.zeros(n * t, dtype=torch.float32, device=hidden.device).index_copy(
                0, positions, values
            )
        results.append(values.reshape(n, t))
    if entropy and not results:  # no tokens at all: zip(*[]) is empty
        results = [torch.zeros(n, t, dtype=torch.float32, device=hidden.device)] * 2
    return tuple(results) if entropy else results[0]


def _logits_to_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, entropy: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One chunk: ``(M, V)`` logits -> ``(M,)`` float32 log-probs of ``targets`` (and ``(M,)`` entropies)."""
    scaled = logits.float()
    if temperature != 1.0:
        scaled = scaled / temperature
    picked = scaled.gather(1, targets.unsqueeze(1)).squeeze(1)
    normaliser = torch.logsumexp(scaled, dim=1)
    if not entropy:
        return picked - normaliser
    # H = logsumexp(z) - sum_v softmax(z)_v * z_v: one softmax of the chunk, no log-softmax kept beside it
    return picked - normaliser, normaliser - (torch.softmax(scaled, dim=1) * scaled).sum(dim=1)


def _hidden_to_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    logits = torch.nn.functional.linear(hidden, weight, bias)
    return _logits_to_logprobs(logits, targets, temperature, entropy)


def _maybe_checkpoint(function, *args):
    """Run ``function`` under activation checkpointing when a gradient will be taken, else directly."""
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args
    )
    if needs_grad:
        return checkpoint(function, *args, use_reentrant=False)
    return function(*args)


def _concat(pieces: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    if not pieces:  # no tokens at all (T == 0, or an all-false mask)
        return torch.zeros(0, dtype=torch.float32, device=device)
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _check_targets(where: str, targets: torch.Tensor, shape: tuple[int, int]) -> None:
    if tuple(targets.shape) != shape:
        raise ValueError(f"{where}: targets must have shape {shape}, got {tuple(targets.shape)}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"{where}: targets must be integer token ids, got dtype {targets.dtype}")


def _check_target_range(where: str, targets: torch.Tensor, vocab: int) -> None:
    """Out-of-range ids would otherwise fail inside gather (a device-side assert on CUDA)."""
    if targets.numel() and not bool(((targets >= 0) & (targets < vocab)).all()):
        raise ValueError(f"{where}: targets (at computed positions) must lie in [0, {vocab}), the vocabulary")


def _check_temperature_and_chunk(where: str, temperature: float, chunk_size: int) -> None:
    if not temperature > 0.0:
        raise ValueError(f"{where}: temperature must be > 0, got {temperature!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{where}: chunk_size must be a positive int, got {chunk_size!r}")
