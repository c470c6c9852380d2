"""The GRPO loop (the paper's method). SFT, its "Base + SFT" row and the demo's warm start, is grpo/sft.py.

One GRPO optimizer step (docs/design.md, "One GRPO step"); what any run shares (the run folder, data
drawing, optimizer, loop, log and checkpoints) is grpo/run.py:

    draw         grad_accum micro-batches of B studies, their images decoded     (grpo.run, data.sharding)
    rollout(), no gradients, for each micro-batch (collect: once, or more with grpo.dynamic_sampling):
        sample_group build the B prompts, encode their images once, G completions per study (model/engine)
        score        R = sum_k w_k * term_k                         (rewards.combine.RewardCombiner)
        advantages   eq. (2) per group, or the estimator grpo.advantage names            (grpo.experience)
        log-probs    reference (beta > 0) and old policy (mu > 1), completion positions only, chunked
    grpo_update(), num_iterations (mu) times per rollout:
        for each micro-batch: policy log-probs -> loss_fn (eq. 1) -> backward   (DDP no_sync but the last)
    clip grad norm -> optimizer step -> scheduler step -> log (grpo.run_log) -> save (grpo.checkpoint)

Completions of study i are rows i*G .. i*G+G-1 of its micro-batch, all on the rank that drew the study.
LoRA dropout is 0 in every pass, so the policy that is updated is the one that sampled (docs/design.md).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from data.r2gen import Sample
from grpo import distributed, experience
from grpo.config import TrainConfig
from grpo.faults import StepFailed, describe_exception
from grpo.logprobs import token_logprobs_from_hidden
from grpo.loss import LossInputs, load_loss
from grpo.rollout import Rollout
from grpo.run import Run
from grpo.run_log import examples, logprob_gap_sum, update_sums
from model.generation import Completions, split_completions
from model.loading import ImageFeatures, completion_hidden_states, lm_head_weight, unwrap_model
from model.lora import reference_policy
from rewards.combine import RewardOutput, RewardTermError, build_reward

log = logging.getLogger(__name__)


class Trainer(Run):
    """Builds everything a GRPO run needs from a TrainConfig, then ``train()`` runs it."""

    mode = "grpo"
    keeps_lora_dropout = False  # GRPO: every pass computes the policy that sampled (module docstring)

    def __init__(
        self,
        cfg: TrainConfig,
        resume: bool | str = False,
        reward_fn=None,
        loss_fn=None,
        policy=None,
        allow_config_change: tuple[str, ...] = (),
        overwrite: bool = False,
    ):
        """``reward_fn`` replaces the configured RewardCombiner: any callable with the combiner's signature
        ``(completions, references, ref_keys) -> RewardOutput``. ``loss_fn`` replaces the configured loss
        (``grpo.loss``): any callable ``(LossInputs, GRPOConfig) -> (loss, stats)``. These are how
        researchers plug in a new reward or objective (docs/extending.md). ``policy``, ``resume``,
        ``allow_config_change`` and ``overwrite``: see grpo/run.py."""
        self.reward = reward_fn
        self._reward_failure: tuple[str, str] | None = None  # (term, "Type: message") of this step
        self.loss_fn = loss_fn or load_loss(cfg.grpo.loss)
        # (trainer, micro_batches) -> sampled and scored Rollouts: one round, or DAPO's dynamic sampling
        self.collect = experience.collector(cfg)
        self.rollouts: list[Rollout] = []
        super().__init__(cfg, resume, policy, allow_config_change, overwrite)

    def _before_model(self) -> None:
        if self.reward is None:  # before the model: a missing labeler file fails fast
            reports = [s.report for s in self.samples]
            self.reward = build_reward(self.cfg.reward, reports, device=str(self.dist.device))

    def _after_model(self) -> None:
        s = self.cfg.sampling
        self.engine = s.engine_for()
        self.sampling_params = s.params(self.model, self.processor)
        log.info(
            "rollout engine: %s (sampling.engine; merge_lora %s, compile_decode %s)",
            s.engine,
            s.merge_lora,
            s.compile_decode,
        )
        # transformers turns the cache off under gradient checkpointing (the config's, or a given policy's)
        self.prompt_once = (
            self.cfg.grpo.prompt_once and not unwrap_model(self.model).is_activation_checkpointing
        )
        log.info(
            "log-prob passes: %s",
            "each prompt once, its completions on its KV cache (grpo.prompt_once)"
            if self.prompt_once
            else "prompt + completion on every row",
        )

    @property
    def mu(self) -> int:
        """Optimizer steps per batch of rollouts (grpo.num_iterations)."""
        return self.cfg.grpo.num_iterations

    # ------------------------------------------------------------------------------------- the step

    def train_step(self) -> dict[str, float]:
        """The gradients of one optimizer step: fresh rollouts every mu steps, then eq. (1) over them."""
        fresh = self.step % self.mu == 0
        if fresh:
            self.rollouts = self.rollout(self._draw_step())
        t = time.perf_counter()
        sums = self.grpo_update(self.rollouts)
        sums["time/train"] = time.perf_counter() - t
        for ro in self.rollouts:
            for key, value in ro.stats.items():
                if fresh or not key.startswith("time/"):
                    sums[key] = sums.get(key, 0.0) + value
        if (self.step + 1) % self.cfg.sample_every == 0:
            self.run_log.samples(self.step + 1, examples(self.rollouts[0]))
        return sums

    # --------------------------------------------------------------------------------------- rollout

    @torch.no_grad()
    def rollout(self, micro_batches: list[list[Sample]]) -> list[Rollout]:
        """The experience of one optimizer step, one Rollout per micro-batch (no gradients)."""
        rollouts = self.collect(self, micro_batches)  # sample_group and score, one round or more
        self.set_advantages(rollouts)
        for ro in rollouts:
            self.reference_and_old_logprobs(ro)
        return rollouts

    def sample_group(self, samples: list[Sample]) -> Rollout:
        """A group of G completions per study of a micro-batch, from the current policy, with their prompts."""
        t = time.perf_counter()
        prompts, images, counts = self._encode_prompts(samples)
        out = self.generate(prompts, images)
        drop_truncated = self.cfg.grpo.mask_truncated or self.cfg.sampling.mask_truncated  # (its older name)
        loss_mask = out.mask & ~out.truncated[:, None] if drop_truncated else out.mask
        return Rollout(
            samples=samples,
            prompts=prompts,
            prompt_images=images,
            images_per_prompt=counts,
            group_size=self.sampling_params.num_samples,
            prompt_len=prompts["input_ids"].shape[1],
            completion_ids=out.ids,
            completion_mask=out.mask,
            truncated=out.truncated,
            sample_logp=out.sample_logp,
            loss_mask=loss_mask,
            stats={"time/generate": time.perf_counter() - t},
        )

    def generate(self, prompts: dict, images: ImageFeatures | None) -> Completions:
        """The sampling call itself (``sampling.engine``): G completions per prompt, rows i*G .. i*G+G-1."""
        self.model.eval()  # transformers turns the KV cache off under gradient checkpointing in training mode
        try:
            out = self.engine.generate(self.model, prompts, self.sampling_params, images=images)
        finally:
            self.model.train()
        ids, mask, truncated = split_completions(
            out.tokens, list(self.sampling_params.stop_ids), self.tokenizer.pad_token_id
        )
        sample_logp = out.logprobs * mask if out.logprobs is not None else None
        return Completions(ids, mask, truncated, sample_logp)

    def score(self, ro: Rollout) -> None:
        """The reward of each completion against its study's reference report."""
        t = time.perf_counter()
        ids = ro.completion_ids.masked_fill(~ro.completion_mask, self.tokenizer.pad_token_id)
        ro.texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        references = [s.report for s in ro.samples for _ in range(ro.group_size)]
        keys = [s.study_id for s in ro.samples for _ in range(ro.group_size)]
        try:
            ro.scored = self.reward(ro.texts, references, keys)
        except Exception as err:  # the step goes on to its next collective (all ranks learn it there), then
            # the run saves the step's start and stops; zeros stand in for the rewards until then
            term = err.term if isinstance(err, RewardTermError) else _reward_name(self.reward)
            error = err.description if isinstance(err, RewardTermError) else describe_exception(err)
            log.error("step %d: reward term %r raised %s", self.step + 1, term, error)
            self._reward_failure = self._reward_failure or (term, error)
            ro.scored = RewardOutput(total=np.zeros(len(ro.texts), dtype=np.float32))
        ro.rewards = torch.as_tensor(ro.scored.total, dtype=torch.float32, device=self.dist.device)
        ro.stats["time/reward"] = time.perf_counter() - t

    def set_advantages(self, rollouts: list[Rollout]) -> None:
        """Eq. (2) within each group, or the estimator grpo.advantage names; a pooled one (batch) uses the
        spread of the step's whole batch, all micro-batches on all ranks (grpo/experience.py)."""
        experience.set_advantages(rollouts, self.cfg, self.dist.device)

    def reference_and_old_logprobs(self, ro: Rollout) -> None:
        """Log-probs under the frozen reference (for the KL, beta > 0) and under the policy that sampled
        (the ratio's denominator, only when the rollouts serve mu > 1 updates)."""
        t = time.perf_counter()
        if self.cfg.grpo.beta > 0:
            with reference_policy(self.model) as reference:
                ro.ref_logp = self._rollout_logprobs(reference, ro)
        if self.mu > 1:
            ro.old_logp = self._rollout_logprobs(self.model, ro)
            if ro.sample_logp is not None:
                ro.stats["logprob_gap"] = logprob_gap_sum(ro.old_logp, ro.sample_logp, ro.completion_mask)
        ro.stats["time/logprob_ref"] = time.perf_counter() - t

    # ---------------------------------------------------------------------------------------- update

    def _rollout_logprobs(self, model, ro: Rollout, entropy: bool = False):
        """The completions' per-token log-probs under ``model`` (with ``entropy``: and the entropy of each
        token's distribution, from the same chunks): each prompt once (``grpo.prompt_once``) or every row's
        prompt + completion."""
        if not self.prompt_once:
            return self.completion_logprobs(
                model, ro.inputs, ro.images, ro.prompt_len, ro.completion_ids, ro.completion_mask,
                self.cfg.sampling.temperature, entropy=entropy,
            )  # fmt: skip
        hidden = completion_hidden_states(
            model, ro.prompts, ro.prompt_images, ro.completion_ids, ro.completion_mask, ro.group_size
        )
        return token_logprobs_from_hidden(
            hidden,
            lm_head_weight(self.model),
            ro.completion_ids,
            temperature=self.cfg.sampling.temperature,
            chunk_size=self.logprob_chunk,
            mask=ro.completion_mask,
            entropy=entropy,
        )

    def grpo_update(self, rollouts: list[Rollout]) -> dict[str, float]:
        """Eq. (1) on each micro-batch; the losses add up to the step's loss over all micro-batches and
        ranks, whose token and sequence counts are the aggregation's denominators (docs/design.md)."""
        counts = {
            "tokens": sum(ro.loss_mask.sum().item() for ro in rollouts),
            "sequences": sum(ro.loss_mask.shape[0] for ro in rollouts),
            "reward_failed": float(self._reward_failure is not None),  # rides on this all-reduce
        }
        counts = distributed.all_reduce_sums(counts, self.dist.device)
        if counts["reward_failed"]:
            failure, self._reward_failure = self._reward_failure, None
            raise StepFailed(*(failure or (None, None)))
        world = self.dist.world_size  # DDP averages the ranks' gradients: scale back up to their sum
        sums = {"loss": 0.0, "micro_batches": float(len(rollouts))}
        for k, ro in enumerate(rollouts):
            with self._no_sync(last=k == len(rollouts) - 1):
                logp, entropy = self._rollout_logprobs(self._forward_model(True), ro, entropy=True)
                batch = LossInputs(
                    logp=logp,
                    old_logp=ro.old_logp,
                    ref_logp=ro.ref_logp,
                    advantages=ro.advantages,
                    mask=ro.loss_mask,
                    max_length=self.cfg.sampling.max_new_tokens,
                    step_tokens=counts["tokens"],
                    step_sequences=counts["sequences"],
                    sample_logp=ro.sample_logp,
                    entropy=entropy,
                )
                loss, stats = self.loss_fn(batch, self.cfg.grpo)
                with distributed.collective("DDP gradient all-reduce (backward)"):
                    (loss * world).backward()
            for name, value in update_sums(ro, logp, entropy).items():  # entropy, rollout/logprob_gap
                sums[name] = sums.get(name, 0.0) + value
            sums["loss"] += loss.item()
            for name, value in stats.items():
                sums[f"loss/{name}"] = sums.get(f"loss/{name}", 0.0) + float(value)
        return sums


def _reward_name(reward) -> str:
    """What to call a reward callable that is not a RewardCombiner (its terms unknown)."""
    return getattr(reward, "__name__", None) or type(reward).__name__
