"""What one GRPO step trains on, between the rollout engine and the loss; grpo/trainer.py calls it.

    collect     sample and score the step's drawn micro-batches: ``one_round``
    shape       ``reward.overlong_penalty``: DAPO's soft penalty near the token budget, a reward term
    advantages  the estimator ``grpo.advantage`` names (grpo/advantages.py ``ESTIMATORS``), on the total
                reward or, with ``reward.normalize=per_term``, on the sum of group-normalised terms

Each is a plug-in through the trainer's two calls, ``collect(trainer, micro_batches)`` and
``set_advantages(rollouts, cfg, device)``; with every option off they do what eq. (2) and one round of
sampling do.
"""

from __future__ import annotations

import numpy as np
import torch

from grpo import distributed
from grpo.advantages import ESTIMATORS, POOLED, per_term_rewards, pooled_variance
from grpo.rollout import Rollout
from grpo.run_log import rollout_stats
from rewards.overlong import overlong_penalty


def collector(cfg):
    """The step's ``collect(trainer, micro_batches) -> list[Rollout]`` that a TrainConfig asks for."""
    return one_round


def one_round(trainer, micro_batches: list[list]) -> list[Rollout]:
    """One Rollout per drawn micro-batch: G completions per study, scored, the overlong penalty added."""
    rollouts = [trainer.sample_group(samples) for samples in micro_batches]
    for ro in rollouts:
        trainer.score(ro)
        add_overlong_penalty(ro, trainer.cfg)
    return rollouts


def add_overlong_penalty(ro: Rollout, cfg) -> None:
    """``reward.overlong_penalty=L``: DAPO's penalty (rewards/overlong.py) joins the total reward and is
    logged as the term ``reward/overlong``."""
    buffer = cfg.reward.overlong_penalty
    if buffer is None:
        return
    lengths = ro.completion_mask.sum(dim=1).cpu().numpy()
    penalty = overlong_penalty(lengths, cfg.sampling.max_new_tokens, buffer)
    ro.scored.terms["overlong"] = penalty
    ro.scored.total = (ro.scored.total + penalty).astype(np.float32)
    ro.rewards = ro.rewards + torch.as_tensor(penalty, device=ro.rewards.device)


def advantage_input(ro: Rollout, cfg) -> torch.Tensor:
    """The rewards the estimator sees: the total, or with ``reward.normalize=per_term`` the weighted sum of
    the terms each normalised within its group (the overlong penalty, when on, is a term of weight 1)."""
    if cfg.reward.normalize != "per_term":
        return ro.rewards
    if not ro.scored.terms and not bool(ro.rewards.any()):
        return (
            ro.rewards
        )  # a reward that raised left zeros and no terms: the step stops at its next collective
    weights = dict(cfg.reward.weights)
    if cfg.reward.overlong_penalty is not None:
        weights["overlong"] = 1.0
    terms = {
        name: torch.as_tensor(values, dtype=torch.float32, device=ro.rewards.device)
        for name, values in ro.scored.terms.items()
    }
    try:
        return per_term_rewards(terms, weights, ro.group_size)
    except ValueError as err:
        raise ValueError(f"reward.normalize=per_term: {err}") from None


def set_advantages(rollouts: list[Rollout], cfg, device) -> None:
    """Each completion's advantage by the configured estimator (``cfg.grpo.estimator``). A pooled estimator
    (``batch``) divides by the spread of the step's whole batch, all micro-batches on all ranks (one
    all-reduce of counts, sums and squares), as one process holding the batch would."""
    name = cfg.grpo.estimator
    inputs = [advantage_input(ro, cfg) for ro in rollouts]
    batch_var = None
    if name in POOLED:
        rewards = torch.cat(inputs).double()
        moments = {"n": rewards.numel(), "sum": rewards.sum().item(), "sq": rewards.pow(2).sum().item()}
        moments = distributed.all_reduce_sums(moments, device)
        batch_var = pooled_variance(moments["n"], moments["sum"], moments["sq"])
    for ro, rewards in zip(rollouts, inputs):
        ro.advantages = ESTIMATORS[name](rewards, ro.group_size, batch_var)
        ro.stats.update(rollout_stats(ro))
