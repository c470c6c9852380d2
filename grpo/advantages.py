"""Group-relative advantages: MRG-R1 eq. (2).

Each prompt (study) gets ``G`` sampled completions; a completion's advantage says how much better its
reward is than the other completions of the same prompt. No critic is learned: the group is the baseline.

Rewards arrive flat, shape ``(B*G,)``, grouped contiguously: completion ``j`` of prompt ``i`` sits at
index ``i*G + j`` (the layout ``generate(num_return_sequences=G)`` produces).

``ESTIMATORS`` is the registry the config key ``grpo.advantage`` picks from: eq. (2) and three published
variants, each ``(rewards, group_size, batch_var) -> advantages``. ``per_term_rewards`` is the
``reward.normalize=per_term`` input to them: every reward term normalised within its group first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

SCALES = ("group", "batch", "none")


def group_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-6, scale: str = "group",
    batch_var: float | None = None,
) -> torch.Tensor:  # fmt: skip
    """Advantages ``A_i`` of contiguous groups of rewards; eq. (2) by default.

    ``scale`` picks the denominator (the numerator is always ``r_i - mean(group)``):

    - ``"group"`` (default, eq. (2)): ``sqrt(mean_group((r - mean_group)^2) + eps)``, the group's
      population standard deviation with ``eps`` inside the square root.
    - ``"batch"``: the same population formula over all ``B*G`` rewards of the batch, so that groups
      whose rewards barely differ are not blown up to unit scale. When ``rewards`` is one part of a
      larger batch (a micro-batch of an optimizer step, one rank of several), ``batch_var`` is the
      population variance of the whole batch (:func:`pooled_variance`) and replaces that of ``rewards``.
    - ``"none"``: no division, ``A_i = r_i - mean`` (the Dr. GRPO choice, which removes the per-group
      difficulty weighting).

    A group whose rewards are all equal carries no preference, so its advantages are exactly 0 whatever
    the scale (even with ``eps=0``). Returns a tensor of the shape of ``rewards``, in its floating dtype
    (float32 for integer rewards).
    """
    _check_inputs(rewards, group_size, eps, scale)
    values = rewards if rewards.is_floating_point() else rewards.float()
    groups = values.reshape(-1, group_size)

    group_mean = groups.mean(dim=1, keepdim=True)
    centered = groups - group_mean
    if scale == "group":
        advantages = centered / torch.sqrt(centered.pow(2).mean(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        if batch_var is None:
            variance = (values - values.mean()).pow(2).mean()
        else:
            variance = torch.as_tensor(batch_var, dtype=values.dtype, device=values.device)
        advantages = centered / torch.sqrt(variance + eps)
    else:
        advantages = centered

    # The mean of equal floats can differ from them in the last bit; an equal group must give exact 0.
    no_spread = groups.amax(dim=1, keepdim=True) == groups.amin(dim=1, keepdim=True)
    advantages = torch.where(no_spread, torch.zeros_like(advantages), advantages)
    return advantages.reshape(rewards.shape)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al., 2024): each completion's baseline is the mean reward of the
    *other* G - 1 completions of its group, ``A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean)``.

    Its baseline does not include the sample itself, so the estimate of the policy gradient is unbiased; it is
    Dr. GRPO's centring scaled by ``G / (G - 1)``, with no division by a spread. A group whose rewards are all
    equal gives exactly 0, as does a group of one (no other completion to compare with)."""
    centered = group_advantages(rewards, group_size, scale="none")
    return centered * (group_size / (group_size - 1)) if group_size > 1 else centered


def group_has_spread(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(B,)`` bool: whether the rewards of each contiguous group differ at all. A group without spread gets
    exactly 0 advantage from every estimator below, so it carries no learning signal."""
    groups = rewards.reshape(-1, group_size)
    return groups.amax(dim=1) != groups.amin(dim=1)


def per_term_rewards(
    terms: Mapping[str, torch.Tensor], weights: Mapping[str, float], group_size: int, eps: float = 1e-6
) -> torch.Tensor:
    """``sum_k w_k * z_k``: each weighted reward term normalised within its group by eq. (2) (``z_k`` is
    ``group_advantages`` of term ``k``), then weighted and summed; what ``reward.normalize=per_term`` gives
    the advantage estimator instead of the plain ``sum_k w_k * term_k``.

    Normalising the terms one by one keeps a term with a small spread (the format score once the format is
    learnt) from being drowned by one with a large spread, and a term that is constant within a group adds
    exactly 0 there. Every name in ``weights`` must be in ``terms``; terms without a weight are ignored."""
    missing = [name for name in weights if name not in terms]
    if missing or not weights:
        raise ValueError(
            f"per_term_rewards: the reward returned terms {sorted(terms)} but the weights name "
            f"{sorted(weights)}"
        )
    total = None
    for name, weight in weights.items():
        part = weight * group_advantages(terms[name], group_size, eps=eps, scale="group")
        total = part if total is None else total + part
    return total


# grpo.advantage -> (rewards (B*G,), group_size, batch_var) -> advantages (B*G,). batch_var is the population
# variance of the whole step's rewards (all micro-batches and ranks), computed only for POOLED estimators.
ESTIMATORS: dict[str, Callable[[torch.Tensor, int, float | None], torch.Tensor]] = {
    "group": lambda rewards, g, batch_var=None: group_advantages(rewards, g, scale="group"),  # eq. (2)
    "no_std": lambda rewards, g, batch_var=None: group_advantages(rewards, g, scale="none"),  # Dr. GRPO
    "rloo": lambda rewards, g, batch_var=None: rloo_advantages(rewards, g),
    "batch": lambda rewards, g, batch_var=None: group_advantages(
        rewards, g, scale="batch", batch_var=batch_var
    ),
}
POOLED = frozenset({"batch"})
# grpo.adv_scale, the older key, -> the estimator each of its values meant
ADV_SCALE_ESTIMATORS = {"group": "group", "batch": "batch", "none": "no_std"}


def pooled_variance(count: float, total: float, total_sq: float) -> float:
    """Population variance of a set of numbers known by their count, sum and sum of squares (summed over
    micro-batches and ranks): ``E[r^2] - E[r]^2``, never below 0."""
    if not count > 0:
        raise ValueError(f"pooled_variance: count must be > 0, got {count!r}")
    mean = total / count
    return max(total_sq / count - mean * mean, 0.0)


def _check_inputs(rewards: torch.Tensor, group_size: int, eps: float, scale: str) -> None:
    if not isinstance(rewards, torch.Tensor):
        raise ValueError(f"group_advantages: rewards must be a torch.Tensor, got {type(rewards).__name__}")
    if rewards.dim() != 1:
        raise ValueError(
            f"group_advantages: rewards must be 1-D of shape (B*G,), got shape {tuple(rewards.shape)}"
        )
    if rewards.is_complex() or rewards.dtype == torch.bool:
        raise ValueError(f"group_advantages: rewards must be real numbers, got dtype {rewards.dtype}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_advantages: group_size must be a positive int, got {group_size!r}")
    if rewards.numel() == 0 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"group_advantages: {rewards.numel()} rewards cannot be split into groups of "
            f"group_size={group_size} (rewards must hold B*G values, B >= 1)"
        )
    if not eps >= 0.0:
        raise ValueError(f"group_advantages: eps must be >= 0, got {eps!r}")
    if scale not in SCALES:
        raise ValueError(f"group_advantages: scale must be one of {SCALES}, got {scale!r}")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("group_advantages: rewards contain NaN or infinity")
