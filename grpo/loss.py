"""The GRPO objective, MRG-R1 eq. (1), as a loss to minimize.

Per token ``t`` of completion ``i`` (shapes ``(N, T)`` with ``N = B*G``):

    ratio_it = exp(logp_it - old_logp_it)                      pi_theta / pi_old for the sampled token
    surr_it  = min(ratio_it * A_i, clip(ratio_it, 1 - eps_low, 1 + eps_high) * A_i)
    kl_it    = exp(ref_it - logp_it) - (ref_it - logp_it) - 1  the k3 estimator of KL(pi_theta || pi_ref)
    obj_it   = surr_it - beta * kl_it

and the loss is ``-aggregate(obj, mask)``. Eq. (1) writes the ratio and the KL per completion; like
DeepSeekMath's GRPO we apply them per token and average over a completion's tokens (``"sequence"``).

Every loss the trainer can run has the signature ``loss_fn(batch: LossInputs, cfg) -> (loss, stats)``,
``cfg`` being the run's ``grpo`` config section (``grpo.config.GRPOConfig``). ``grpo_loss`` is the built-in
one; ``grpo/gspo.py`` is a plug-in written against the same signature (docs/extending.md). The trainer
calls the loss once per micro-batch and adds the returned losses up over micro-batches and ranks
(docs/design.md, "The step's averages"), so the loss returns its micro-batch's *share* of the step's loss,
using ``batch.step_tokens`` / ``batch.step_sequences`` as denominators; left at ``None`` they default to
the batch's own counts and the share is the whole loss of a one-batch step.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

AGGREGATIONS = ("sequence", "token", "dr_grpo")


@dataclass
class LossInputs:
    """One micro-batch as every loss sees it. Per-token tensors are ``(N, T)``; ``advantages`` ``(N,)``."""

    logp: torch.Tensor  # the policy's log-probs of the sampled tokens (with grad)
    old_logp: torch.Tensor | None  # the same under the sampling policy; None: logp.detach() (ratio 1)
    ref_logp: torch.Tensor | None  # the same under the frozen reference; None when beta = 0
    advantages: torch.Tensor  # eq. (2), per sequence (N,) or per token (N, T)
    mask: torch.Tensor  # true on real completion tokens (EOS included)
    max_length: int | None = None  # the dr_grpo constant (the generation budget); None: mask.shape[1]
    step_tokens: float | None = None  # real tokens in the whole optimizer step (all micro-batches, ranks)
    step_sequences: float | None = None  # completions in the whole optimizer step
    sample_logp: torch.Tensor | None = None  # the rollout engine's log-probs of the tokens; None: hf engine
    entropy: torch.Tensor | None = None  # the policy's entropy at each token (nats, with grad)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float | None = None) -> torch.Tensor:
    """Per-token k3 estimate of ``KL(pi_theta || pi_ref)`` from log-probs of tokens sampled from pi_theta.

    ``k3 = exp(ref - logp) - (ref - logp) - 1``: unbiased (its expectation under pi_theta is the exact
    KL), never negative (``e^x >= 1 + x``) and 0 exactly where ``logp == ref_logp``.

    Its gradient, ``(1 - exp(ref - logp)) * grad logp``, is in expectation over the sampled tokens the
    gradient of the *reverse* divergence ``KL(pi_ref || pi_theta)``: it pulls up tokens the reference
    likes more than the policy does. It is unbounded in ``ref - logp``: one sampled token that the policy
    now finds far less likely than the reference does can dominate a step. ``clamp`` bounds the
    log-ratio ``ref - logp`` to ``[-clamp, clamp]`` first (``grpo.kl_clamp``; off in the paper): beyond
    it the term is a constant and its token no longer pulls.
    """
    _check_same_shape("kl_k3", logp=logp, ref_logp=ref_logp)
    log_ratio = ref_logp - logp
    if clamp is not None:
        if not clamp > 0:
            raise ValueError(f"kl_k3: clamp must be > 0 (or None), got {clamp!r}")
        log_ratio = log_ratio.clamp(-clamp, clamp)
    # expm1 keeps the small-difference regime accurate; the clamp removes rounding below 0.
    return (torch.expm1(log_ratio) - log_ratio).clamp_min(0.0)


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float | None = None,
) -> torch.Tensor:
    """Per-token clipped surrogate of eq. (1): ``min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A)``.

    ``r = exp(logp - old_logp)``. ``advantages`` is per sequence ``(N,)`` (broadcast over tokens) or
    per token, shaped like ``logp``. ``eps_high=None`` means ``eps_low`` (the paper's symmetric clip);
    a larger ``eps_high`` is DAPO's "clip-higher". Where the clip is active (``r > 1 + eps_high`` with
    ``A > 0``, or ``r < 1 - eps_low`` with ``A < 0``) the term is constant, so its gradient is zero.
    """
    eps_high = _check_clip(eps_low, eps_high)
    _check_same_shape("clipped_surrogate", logp=logp, old_logp=old_logp)
    adv = _per_token_advantages("clipped_surrogate", advantages, logp)
    ratio = torch.exp(logp - old_logp)
    clipped_ratio = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    return torch.minimum(ratio * adv, clipped_ratio * adv)


def tis_weights(old_logp: torch.Tensor, sample_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling (Yao et al., 2025): per token ``min(pi_train / pi_engine, cap)``,
    detached.

    The rollout engine samples with its own kernels (a merged LoRA, a static cache, bf16), so the policy the
    tokens came from, ``pi_engine`` (``sample_logp``), is not exactly the one the training pass computes,
    ``pi_train`` (``old_logp``: the sampling policy recomputed by the training pass). Multiplying each
    token's surrogate by their ratio makes the update on-policy for ``pi_train`` again; the cap bounds the
    variance that a token the engine found far less likely would add. The weight is a constant of the loss
    (no gradient flows through it)."""
    if not cap > 0:
        raise ValueError(f"tis_weights: cap must be > 0, got {cap!r}")
    _check_same_shape("tis_weights", old_logp=old_logp, sample_logp=sample_logp)
    # the cap in log space: a large log-ratio never overflows exp()
    return torch.exp((old_logp - sample_logp).detach().clamp(max=math.log(cap)))


def grpo_loss(batch: LossInputs, cfg) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The negative of eq. (1)'s objective for one micro-batch, and detached statistics of it.

    ``batch``: see :class:`LossInputs`. Padding values of its tensors never reach the loss or its gradient,
    even NaN ones; a bool mask avoids the device sync that checking a numeric mask's values costs.

    ``cfg`` (``grpo.config.GRPOConfig``) supplies:
        eps_low, eps_high: clip range ``[1 - eps_low, 1 + eps_high]``; ``eps_high=None`` means ``eps_low``.
        beta: weight of the k3 KL penalty; kl_clamp: bound on its log-ratio (:func:`kl_k3`).
        aggregation: how per-token terms become one number (denominators: the step's counts, see below):
            ``"sequence"`` (the paper): mean over each sequence's real tokens, then mean over sequences;
            ``"token"`` (DAPO): sum over all real tokens / their count;
            ``"dr_grpo"`` (Dr. GRPO): sum over all real tokens / (N * max_length).
        tis_cap: ``C``; each token's surrogate is multiplied by :func:`tis_weights` (``batch.sample_logp``
            needed); None: off.
        entropy_coef: weight of a bonus ``+ entropy_coef * H_it`` on each token's objective
            (``batch.entropy``, the policy's entropy, needed when > 0); 0: off (the paper).

    With ``batch.step_tokens`` / ``batch.step_sequences`` set, the count and N above are the whole
    optimizer step's (all micro-batches, all ranks) and the result is this batch's share of the step loss.

    Returns:
        ``(loss, stats)``. ``stats`` holds 0-d float32 tensors, detached and never synced here, all
        over real tokens only: ``kl`` (mean k3; absent when ``ref_logp`` is None), ``clip_frac_low``
        (share of tokens with ``A < 0`` and ``r < 1 - eps_low``), ``clip_frac_high`` (``A > 0`` and
        ``r > 1 + eps_high``), ``clip_frac`` (their sum), ``ratio_mean``, ``adv_mean``, ``tokens``
        (the number of real tokens) and, with ``tis_cap``, ``tis_weight_mean``. A sequence without real
        tokens adds 0 to the loss.
    """
    eps_low, beta, aggregation = cfg.eps_low, cfg.beta, cfg.aggregation
    eps_high = _check_clip(eps_low, cfg.eps_high)
    logp, old_logp, ref_logp, mask = batch.logp, batch.old_logp, batch.ref_logp, batch.mask
    if not beta >= 0.0:
        raise ValueError(f"grpo_loss: beta must be >= 0, got {beta!r}")
    if beta > 0.0 and ref_logp is None:
        raise ValueError(f"grpo_loss: ref_logp is None but beta={beta}; pass reference log-probs or beta=0")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"grpo_loss: aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    real, old_logp = check_inputs("grpo_loss", batch)
    max_length = _check_max_length(batch.max_length, mask.shape[1])

    # Padding positions get neutral values *before* any arithmetic: a NaN there would otherwise leak
    # into the gradient through the backward of exp(), even though torch.where drops it in the forward.
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    logp = torch.where(real, logp, zero)
    old_logp = torch.where(real, old_logp, zero)
    adv = torch.where(real, _per_token_advantages("grpo_loss", batch.advantages, logp), zero)

    objective = clipped_surrogate(logp, old_logp, adv, eps_low, eps_high)
    tis = None
    if cfg.tis_cap is not None:
        if batch.sample_logp is None:
            raise ValueError("grpo_loss: tis_cap needs the engine's log-probs (sampling.engine=static)")
        sample_logp = torch.where(real, batch.sample_logp, zero)
        tis = torch.where(real, tis_weights(old_logp, sample_logp, cfg.tis_cap), torch.ones_like(logp))
        objective = objective * tis
    if cfg.entropy_coef > 0:
        if batch.entropy is None:
            raise ValueError(f"grpo_loss: entropy_coef={cfg.entropy_coef} but batch.entropy is None")
        objective = objective + cfg.entropy_coef * torch.where(real, batch.entropy, zero)
    kl = None
    if ref_logp is not None:
        kl = kl_k3(logp, torch.where(real, ref_logp, zero), clamp=cfg.kl_clamp)
        if beta > 0.0:
            objective = objective - beta * kl
    objective = torch.where(real, objective, zero)
    loss = -_aggregate(objective, real, aggregation, max_length, batch.step_tokens, batch.step_sequences)

    stats = _step_stats(logp, old_logp, adv, kl, real, eps_low, eps_high)
    if tis is not None:
        stats["tis_weight_mean"] = (tis.detach().float() * real).sum() / real.sum().clamp_min(1)
    return loss, stats


def check_inputs(where: str, batch: LossInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes agree and the mask is 0/1: returns ``(bool mask, old_logp)`` (``logp.detach()`` for None)."""
    if batch.logp.dim() != 2:
        raise ValueError(f"{where}: logp must be 2-D (N, T), got shape {tuple(batch.logp.shape)}")
    old_logp = batch.logp.detach() if batch.old_logp is None else batch.old_logp
    tensors = {"logp": batch.logp, "old_logp": old_logp, "mask": batch.mask}
    if batch.ref_logp is not None:
        tensors["ref_logp"] = batch.ref_logp
    _check_same_shape(where, **tensors)
    return _bool_mask(batch.mask), old_logp


def sequence_count(batch: LossInputs) -> float:
    """The denominator of a mean over the step's completions: ``step_sequences``, or this batch's N."""
    return batch.logp.shape[0] if batch.step_sequences is None else batch.step_sequences


def _aggregate(
    values: torch.Tensor, real: torch.Tensor, aggregation: str, max_length: int,
    step_tokens: float | None, step_sequences: float | None,
) -> torch.Tensor:  # fmt: skip
    """Reduce per-token ``values`` (already 0 on padding) to a scalar with the aggregation's weights."""
    sequences = values.shape[0] if step_sequences is None else step_sequences
    if aggregation == "sequence":
        lengths = real.sum(dim=1).clamp_min(1).to(values.dtype)
        return (values.sum(dim=1) / lengths).sum() / sequences
    if aggregation == "token":
        if step_tokens is None:
            return values.sum() / real.sum().clamp_min(1).to(values.dtype)
        return values.sum() / max(step_tokens, 1.0)
    return values.sum() / (sequences * max_length)


@torch.no_grad()
def _step_stats(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    kl: torch.Tensor | None,
    real: torch.Tensor,
    eps_low: float,
    eps_high: float,
) -> dict[str, torch.Tensor]:
    count = real.sum().clamp_min(1).float()

    def token_mean(values: torch.Tensor) -> torch.Tensor:
        return torch.where(real, values.float(), 0.0).sum() / count

    ratio = torch.exp(logp.float() - old_logp.float())
    clipped_low = (ratio < 1.0 - eps_low) & (adv < 0)
    clipped_high = (ratio > 1.0 + eps_high) & (adv > 0)
    clip_frac_low = token_mean(clipped_low)
    clip_frac_high = token_mean(clipped_high)
    stats = {} if kl is None else {"kl": token_mean(kl)}
    return stats | {
        "clip_frac_low": clip_frac_low,
        "clip_frac_high": clip_frac_high,
        "clip_frac": clip_frac_low + clip_frac_high,
        "ratio_mean": token_mean(ratio),
        "adv_mean": token_mean(adv),
        "tokens": real.sum().float(),
    }


def _per_token_advantages(where: str, advantages: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    if advantages.shape == logp.shape:
        return advantages
    if logp.dim() >= 1 and advantages.shape == logp.shape[:1]:
        return advantages.reshape(advantages.shape + (1,) * (logp.dim() - 1))
    raise ValueError(
        f"{where}: advantages must have shape {tuple(logp.shape[:1])} (one per sequence) or "
        f"{tuple(logp.shape)} (one per token), got {tuple(advantages.shape)}"
    )


def _check_same_shape(where: str, **tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name}={shape}" for name, shape in shapes.items())
        raise ValueError(f"{where}: shapes must match, got {listed}")


def _check_clip(eps_low: float, eps_high: float | None) -> float:
    if not 0.0 <= eps_low < 1.0:
        raise ValueError(f"eps_low must be in [0, 1), got {eps_low!r}")
    if eps_high is None:
        return eps_low
    if not eps_high >= 0.0:
        raise ValueError(f"eps_high must be >= 0 (or None for eps_low), got {eps_high!r}")
    return eps_high


def _bool_mask(mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must be bool or hold only 0 and 1")
    return mask != 0


def _check_max_length(max_length: int | None, width: int) -> int:
    if max_length is None:
        return max(width, 1)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < max(width, 1):
        raise ValueError(
            f"grpo_loss: max_length must be an int >= mask.shape[1] ({width}), got {max_length!r}"
        )
    return max_length


BUILTIN_LOSSES: dict[str, Callable] = {"grpo": grpo_loss}


def load_loss(spec: str) -> Callable:
    """The loss a config names: ``"grpo"`` (eq. 1), or ``"package.module:function"`` for a plug-in loss
    with the ``(batch, cfg) -> (loss, stats)`` signature (docs/extending.md)."""
    if spec in BUILTIN_LOSSES:
        return BUILTIN_LOSSES[spec]
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(
            f"grpo.loss: expected {' or '.join(BUILTIN_LOSSES)} or module:function, got {spec!r}"
        )
    try:
        loss_fn = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"grpo.loss: cannot load {spec!r} ({err})") from None
    if not callable(loss_fn):
        raise ValueError(f"grpo.loss: {spec!r} is not a function")
    return loss_fn
