"""What one GRPO step trains on, between the rollout engine and the loss; grpo/trainer.py calls it.

    collect     sample and score the step's drawn micro-batches: ``one_round``, or DAPO's dynamic sampling
                (``DynamicSampling``, ``grpo.dynamic_sampling``): groups with no reward spread are dropped
                and more studies are drawn until the batch is full
    shape       ``reward.overlong_penalty``: DAPO's soft penalty near the token budget, a reward term
    advantages  the estimator ``grpo.advantage`` names (grpo/advantages.py ``ESTIMATORS``), on the total
                reward or, with ``reward.normalize=per_term``, on the sum of group-normalised terms

Each is a plug-in through the trainer's two calls, ``collect(trainer, micro_batches)`` and
``set_advantages(rollouts, cfg, device)``; with every option off they do what eq. (2) and one round of
sampling do.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from grpo import distributed
from grpo.advantages import ESTIMATORS, POOLED, group_has_spread, per_term_rewards, pooled_variance
from grpo.rollout import Rollout, regroup
from grpo.run_log import rollout_stats
from rewards.overlong import overlong_penalty

log = logging.getLogger(__name__)


def collector(cfg):
    """The step's ``collect(trainer, micro_batches) -> list[Rollout]`` that a TrainConfig asks for."""
    if cfg.grpo.dynamic_sampling:
        return DynamicSampling(cfg.grpo.max_resample_rounds)
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


class DynamicSampling:
    """DAPO's dynamic sampling (Yu et al., 2025, section 3.2): train only on groups that carry a signal.

    A group whose G rewards are all equal gets advantage 0 from every estimator: it adds nothing to the policy
    gradient but still takes its share of the batch. Here such groups are dropped and the rank draws more
    studies (``Run._draw_step``, one more micro-batch per ``grad_accum``) until it holds
    ``grad_accum * prompts_per_device`` groups with spread, or ``max_rounds`` extra rounds have been drawn;
    then the batch is completed with dropped groups (zero advantage, as without this option), so the batch
    that reaches the loss always has the configured size.

    Under DDP the ranks must run the same collectives: after each round they all-reduce whether any rank is
    still short, and all draw another round if so (a rank already full discards its draw unsampled). So every
    rank runs the same number of rounds and ends with ``grad_accum`` micro-batches of the configured size.

    Logged (sums over ranks): ``dynamic/filtered_groups`` (groups dropped for zero spread),
    ``dynamic/refilled_groups`` (dropped groups put back because the rounds ran out),
    ``dynamic/sampled_groups`` (groups sampled, every round) and ``dynamic/resample_rounds`` (extra rounds).
    """

    def __init__(self, max_rounds: int):
        self.max_rounds = max_rounds

    def __call__(self, trainer, micro_batches: list[list]) -> list[Rollout]:
        cfg = trainer.cfg
        need = cfg.batch.grad_accum * cfg.batch.prompts_per_device
        kept, dropped, sampled, stats, rounds = [], [], 0, {}, 0
        rollouts = one_round(trainer, micro_batches)
        while True:
            for ro in rollouts:
                for key, value in ro.stats.items():  # time/generate, time/reward of every round
                    stats[key] = stats.get(key, 0.0) + value
                spread = group_has_spread(advantage_input(ro, cfg), ro.group_size).tolist()
                for i, signal in enumerate(spread):
                    (kept if signal else dropped).append((ro, i))
                sampled += len(spread)
            short = len(kept) < need
            if rounds == self.max_rounds or not distributed.all_reduce_max(float(short), trainer.dist.device):
                break
            rounds += 1
            drawn = trainer._draw_step()  # every rank draws: the draw agrees on bad images collectively
            if short:
                rollouts = one_round(trainer, drawn)
            else:
                rollouts = []
                for samples in drawn:
                    trainer.data.pop_images(samples)  # full already: not sampled, decoded images freed
        refill = dropped[: max(need - len(kept), 0)]
        picks = kept[:need] + refill
        accum = cfg.batch.grad_accum  # as many micro-batches on every rank (DDP runs one forward each)
        bounds = [round(k * len(picks) / accum) for k in range(accum + 1)]
        pad = trainer.tokenizer.pad_token_id
        out = [regroup(picks[a:b], pad) for a, b in zip(bounds[:-1], bounds[1:])]
        out[0].stats = stats | {
            "dynamic/filtered_groups": float(len(dropped) - len(refill)),
            "dynamic/refilled_groups": float(len(refill)),
            "dynamic/sampled_groups": float(sampled),
            # the ranks agree on the rounds: one rank counts them, so the sum over ranks is their number
            "dynamic/resample_rounds": float(rounds if trainer.dist.is_main else 0),
        }
        return out
