"""The GRPO objective, MRG-R1 eq. (1), as a loss to minimize.

Per token ``t`` of completion ``i`` (shapes ``(N, T)`` with ``N = B*G``):

    ratio_it = exp(logp_it - old_logp_it)                      pi_theta / pi_old for the sampled token
    surr_it  = min(ratio_it * A_i, clip(ratio_it, 1 - eps_low, 1 + eps_high) * A_i)
    kl_it    = exp(ref_it - logp_it) - (ref_it - logp_it) - 1  the k3 estimator of KL(pi_theta || pi_ref)
    obj_it   = surr_it - beta * kl_it

and the loss is ``-aggregate(obj, mask)``. Eq. (1) writes the ratio and the KL per completion; like
DeepSeekMath's GRPO we apply them per token and average over a completion's tokens (``"sequence"``).
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("sequence", "token", "dr_grpo")


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of ``KL(pi_theta || pi_ref)`` from log-probs of tokens sampled from pi_theta.

    ``k3 = exp(ref - logp) - (ref - logp) - 1``: unbiased (its expectation under pi_theta is the exact
    KL), never negative (``e^x >= 1 + x``) and 0 exactly where ``logp == ref_logp``.
    """
    _check_same_shape("kl_k3", logp=logp, ref_logp=ref_logp)
    log_ratio = ref_logp - logp
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


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    beta: float = 0.04,
    aggregation: str = "sequence",
    max_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The negative of eq. (1)'s objective, and detached statistics of the step.

    Args:
        logp: ``(N, T)`` log-probs of the sampled completion tokens under the policy (with grad).
        old_logp: ``(N, T)`` the same under the policy that sampled them. With one optimization pass per
            batch this is ``logp.detach()`` (ratio 1, the gradient is the plain policy gradient); ``None``
            means exactly that.
        ref_logp: ``(N, T)`` the same under the frozen reference; may be ``None`` when ``beta == 0``.
        advantages: ``(N,)`` from :func:`grpo.advantages.group_advantages`, or ``(N, T)``.
        mask: ``(N, T)``, true/nonzero on real completion tokens (EOS included), false/0 on padding.
            Padding values of the other tensors never reach the loss or its gradient, even NaN ones.
            A bool mask avoids the device sync that checking a numeric mask's values costs.
        eps_low, eps_high: clip range ``[1 - eps_low, 1 + eps_high]``; ``eps_high=None`` means ``eps_low``.
        beta: weight of the k3 KL penalty.
        aggregation: how per-token terms become one number:
            ``"sequence"`` (the paper): mean over each sequence's real tokens, then mean over sequences;
            ``"token"`` (DAPO): sum over all real tokens / their count;
            ``"dr_grpo"`` (Dr. GRPO): sum over all real tokens / (N * max_length).
        max_length: the fixed normalizer of ``"dr_grpo"`` (usually the generation budget,
            ``max_new_tokens``); default ``mask.shape[1]``. Must be ``>= mask.shape[1]``.

    Returns:
        ``(loss, stats)``. ``stats`` holds 0-d float32 tensors, detached and never synced here, all
        over real tokens only: ``kl`` (mean k3; NaN when ``ref_logp`` is None), ``clip_frac_low`` (share
        of tokens with ``A < 0`` and ``r < 1 - eps_low``), ``clip_frac_high`` (``A > 0`` and
        ``r > 1 + eps_high``), ``clip_frac`` (their sum), ``ratio_mean``, ``adv_mean``, and ``tokens``
        (the number of real tokens). A sequence without real tokens adds 0 to the loss.
    """
    eps_high = _check_clip(eps_low, eps_high)
    if not beta >= 0.0:
        raise ValueError(f"grpo_loss: beta must be >= 0, got {beta!r}")
    if beta > 0.0 and ref_logp is None:
        raise ValueError(f"grpo_loss: ref_logp is None but beta={beta}; pass reference log-probs or beta=0")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"grpo_loss: aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if logp.dim() != 2:
        raise ValueError(f"grpo_loss: logp must be 2-D (N, T), got shape {tuple(logp.shape)}")
    if old_logp is None:
        old_logp = logp.detach()
    tensors = {"logp": logp, "old_logp": old_logp, "mask": mask}
    if ref_logp is not None:
        tensors["ref_logp"] = ref_logp
    _check_same_shape("grpo_loss", **tensors)
    real = _bool_mask(mask)
    max_length = _check_max_length(max_length, mask.shape[1])

    # Padding positions get neutral values *before* any arithmetic: a NaN there would otherwise leak
    # into the gradient through the backward of exp(), even though torch.where drops it in the forward.
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    logp = torch.where(real, logp, zero)
    old_logp = torch.where(real, old_logp, zero)
    adv = torch.where(real, _per_token_advantages("grpo_loss", advantages, logp), zero)

    objective = clipped_surrogate(logp, old_logp, adv, eps_low, eps_high)
    kl = None
    if ref_logp is not None:
        kl = kl_k3(logp, torch.where(real, ref_logp, zero))
        if beta > 0.0:
            objective = objective - beta * kl
    objective = torch.where(real, objective, zero)
    loss = -_aggregate(objective, real, aggregation, max_length)

    stats = _step_stats(logp, old_logp, adv, kl, real, eps_low, eps_high)
    return loss, stats


def _aggregate(values: torch.Tensor, real: torch.Tensor, aggregation: str, max_length: int) -> torch.Tensor:
    """Reduce per-token ``values`` (already 0 on padding) to a scalar with the aggregation's weights."""
    if aggregation == "sequence":
        lengths = real.sum(dim=1).clamp_min(1).to(values.dtype)
        return (values.sum(dim=1) / lengths).mean()
    if aggregation == "token":
        return values.sum() / real.sum().clamp_min(1).to(values.dtype)
    return values.sum() / (values.shape[0] * max_length)


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
    nan = torch.full((), float("nan"), device=logp.device)
    return {
        "kl": token_mean(kl) if kl is not None else nan,
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
        raise ValueError("grpo_loss: mask must be bool or hold only 0 and 1")
    return mask != 0


def _check_max_length(max_length: int | None, width: int) -> int:
    if max_length is None:
        return max(width, 1)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < max(width, 1):
        raise ValueError(
            f"grpo_loss: max_length must be an int >= mask.shape[1] ({width}), got {max_length!r}"
        )
    return max_length
