"""GSPO, a plug-in loss: the importance ratio and its clip taken per completion, not per token.

Group Sequence Policy Optimization (Zheng et al., 2025) keeps GRPO's group advantages and replaces the
token ratio of eq. (1) by the length-normalised ratio of the whole completion:

    s_i   = exp( mean_t (logp_it - old_logp_it) )         the geometric mean of the token ratios of o_i
    obj_i = min(s_i * A_i, clip(s_i, 1 - eps_low, 1 + eps_high) * A_i) - beta * mean_t k3_it
    loss  = -sum_i obj_i / N                              N: the step's completions

A completion is kept or clipped as a whole, so one unlucky token no longer decides alone. The ratios sit
much closer to 1 than token ratios, hence GSPO's much smaller clip range (3e-4 / 4e-4 in their paper,
``configs/variant_gspo.yaml``). The KL term is optional (their recipe drops it); here it is the same k3 as
GRPO's, averaged over each completion's tokens.

It is written only against the public loss interface (docs/extending.md): select it with
``grpo.loss=grpo.gspo:gspo_loss``. The trainer knows nothing about it.
"""

from __future__ import annotations

import torch

from grpo.loss import LossInputs, check_inputs, kl_k3, sequence_count


def sequence_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``(N,)`` mean over each completion's real tokens of ``logp - old_logp`` (0 for an empty one)."""
    lengths = real.sum(dim=1).clamp_min(1).to(logp.dtype)
    return torch.where(real, logp - old_logp, 0.0).sum(dim=1) / lengths


def gspo_loss(batch: LossInputs, cfg) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The negative GSPO objective of one micro-batch (its share of the step's), and detached stats:
    ``ratio_mean`` (mean sequence ratio), ``clip_frac_low`` / ``clip_frac_high`` / ``clip_frac`` (shares
    of completions clipped), ``kl`` (mean per-token k3, when there is a reference)."""
    real, old_logp = check_inputs("gspo_loss", batch)
    if batch.advantages.shape != batch.logp.shape[:1]:
        raise ValueError(
            f"gspo_loss: advantages must be one per completion, got {tuple(batch.advantages.shape)}"
        )
    if cfg.beta > 0 and batch.ref_logp is None:
        raise ValueError(f"gspo_loss: ref_logp is None but beta={cfg.beta}")
    if (
        cfg.tis_cap is not None or cfg.entropy_coef > 0
    ):  # token-level options of grpo_loss: not silently dropped
        raise ValueError("gspo_loss: grpo.tis_cap and grpo.entropy_coef apply to grpo_loss only")
    eps_low = cfg.eps_low
    eps_high = eps_low if cfg.eps_high is None else cfg.eps_high
    zero = torch.zeros((), dtype=batch.logp.dtype, device=batch.logp.device)
    logp = torch.where(real, batch.logp, zero)  # padding made neutral before exp() (see grpo_loss)
    old_logp = torch.where(real, old_logp, zero)
    has_tokens = real.any(dim=1)
    adv = torch.where(has_tokens, batch.advantages.to(logp.dtype), zero)  # an empty completion adds 0

    ratio = torch.exp(sequence_log_ratio(logp, old_logp, real))
    objective = torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
    stats = {}
    if batch.ref_logp is not None:
        kl = torch.where(real, kl_k3(logp, torch.where(real, batch.ref_logp, zero), clamp=cfg.kl_clamp), zero)
        kl_per_sequence = kl.sum(dim=1) / real.sum(dim=1).clamp_min(1).to(kl.dtype)
        objective = objective - cfg.beta * kl_per_sequence
        stats["kl"] = (kl.sum() / real.sum().clamp_min(1)).detach().float()
    loss = -objective.sum() / sequence_count(batch)

    with torch.no_grad():
        sequences = has_tokens.sum().clamp_min(1).float()
        low = ((ratio < 1 - eps_low) & (adv < 0) & has_tokens).sum() / sequences
        high = ((ratio > 1 + eps_high) & (adv > 0) & has_tokens).sum() / sequences
        stats |= {
            "ratio_mean": torch.where(has_tokens, ratio, 0.0).sum().float() / sequences,
            "clip_frac_low": low.float(),
            "clip_frac_high": high.float(),
            "clip_frac": (low + high).float(),
        }
    return loss, stats
