"""The GRPO loop (the paper's method). SFT, its "Base + SFT" row and the demo's warm start, is grpo/sft.py.

One GRPO optimizer step (docs/design.md, "One GRPO step"):

    rollout(), no gradients, for each of grad_accum micro-batches of B studies:
        sample       build the B prompts, encode their images once, G completions per study (model/engine)
        score        R = sum_k w_k * term_k                         (rewards.combine.RewardCombiner)
        advantages   eq. (2), per group; adv_scale=batch: over the step's whole batch, all ranks
        log-probs    reference (beta > 0) and old policy (mu > 1), completion positions only, chunked
    grpo_update(), num_iterations (mu) times per rollout:
        for each micro-batch: policy log-probs -> loss_fn (eq. 1) -> backward   (DDP no_sync but the last)
    clip grad norm -> optimizer step -> scheduler step

Completions of study i are rows i*G .. i*G+G-1 of its micro-batch, all on the rank that drew the study.
LoRA dropout is 0 in every pass, so the policy that is updated is the one that sampled (docs/design.md).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from data.batching import append_completion, collate_prompts, images_per_row, load_images, repeat_for_group
from data.files import copy_dir_atomic
from data.images import ImageLoadError
from data.r2gen import Sample
from grpo import checkpoint, distributed, run_dir
from grpo.advantages import group_advantages, pooled_variance
from grpo.config import TrainConfig, to_dict
from grpo.logprobs import token_logprobs_from_hidden
from grpo.loss import LossInputs, load_loss
from grpo.preemption import Preempted, StopSignal
from grpo.run_log import RunLog
from grpo.sampler import ShardedBatches
from model.engine import SamplingParams, make_engine
from model.generation import Completions, split_completions, stop_token_ids
from model.loading import (
    ImageFeatures,
    completion_hidden_states,
    encode_images,
    language_hidden_states,
    lm_head_weight,
    load_model_and_processor,
    suppressed_token_ids,
    unwrap_model,
)
from model.lora import (
    POLICY,
    add_policy_adapter,
    reference_policy,
    save_adapter,
    set_lora_dropout,
    trainable_parameters,
)
from model.optim import build_optimizer, cosine_schedule_with_warmup
from rewards.combine import RewardCombiner, RewardOutput, build_reward

log = logging.getLogger(__name__)

TIMING_KEYS = ("step_time_s", "tokens_per_s")  # wall-clock figures: differ between identical runs


@dataclass
class Rollout:
    """One micro-batch of sampled completions, filled in by the rollout's steps, and what the loss needs."""

    samples: list[Sample]
    prompts: dict[str, torch.Tensor]  # the B prompts (no pixels: see `prompt_images`)
    prompt_images: ImageFeatures | None  # the B prompts' images, encoded once
    images_per_prompt: list[int]
    group_size: int  # G: completion j of prompt i is row i*G + j
    prompt_len: int
    completion_ids: torch.Tensor  # (B*G, T)
    completion_mask: torch.Tensor  # (B*G, T) bool, EOS included
    truncated: torch.Tensor  # (B*G,) bool: no EOS within max_new_tokens
    sample_logp: torch.Tensor | None  # (B*G, T) the engine's own log-probs of the tokens (None: hf engine)
    loss_mask: torch.Tensor  # completion_mask, minus truncated rows when sampling.mask_truncated
    texts: list[str] = field(default_factory=list)  # decoded completions
    scored: RewardOutput | None = None
    rewards: torch.Tensor | None = None  # (B*G,) total reward
    advantages: torch.Tensor | None = None  # (B*G,)
    ref_logp: torch.Tensor | None = None  # (B*G, T), when beta > 0
    old_logp: torch.Tensor | None = None  # (B*G, T), when num_iterations > 1
    stats: dict[str, float] = field(default_factory=dict)  # sums over this micro-batch; time/<phase>

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        """Prompt + completion, B*G rows (no pixels: see `images`), for passes over full rows."""
        rows = repeat_for_group(self.prompts, self.group_size)
        return append_completion(rows, self.completion_ids, self.completion_mask)

    @property
    def images(self) -> ImageFeatures | None:
        """`prompt_images` repeated for the B*G rows of `inputs`."""
        if self.prompt_images is None:
            return None
        return self.prompt_images.repeat_per_prompt(self.images_per_prompt, self.group_size)


class Trainer:
    """Builds everything a GRPO run needs from a TrainConfig, then ``train()`` runs it."""

    mode = "grpo"
    keeps_lora_dropout = False  # GRPO: every pass computes the policy that sampled (module docstring)

    def __init__(
        self, cfg: TrainConfig, resume: bool | str = False, reward_fn=None, loss_fn=None, policy=None,
        allow_config_change: tuple[str, ...] = (), overwrite: bool = False,
    ):  # fmt: skip
        """``reward_fn`` replaces the configured RewardCombiner: any callable with the combiner's signature
        ``(completions, references, ref_keys) -> RewardOutput``. ``loss_fn`` replaces the configured loss
        (``grpo.loss``): any callable ``(LossInputs, GRPOConfig) -> (loss, stats)``. These are how
        researchers plug in a new reward or objective (docs/extending.md). ``policy`` = ``(model,
        processor)`` already built (e.g. a model made from a config for a benchmark) replaces loading
        ``model.path``; the LoRA adapter is added as configured. ``resume`` (False, True or "auto"),
        ``allow_config_change`` and ``overwrite``: see grpo/run_dir.py (all checked before the model loads)."""
        if cfg.mode != self.mode:
            raise ValueError(f"mode={cfg.mode}: {type(self).__name__} runs mode={self.mode} (SFT: grpo.sft)")
        self.cfg = cfg
        self.dist = distributed.setup(cfg.device)
        if cfg.cpu_threads is not None and self.dist.device.type == "cpu":
            torch.set_num_threads(cfg.cpu_threads)
        self.run_dir = Path(cfg.output_dir)
        torch.manual_seed(cfg.seed + self.dist.rank)
        np.random.seed(cfg.seed + self.dist.rank)

        resume_state = self._start_run(resume, allow_config_change, overwrite)
        self.samples = self._load_samples()
        self.reward = reward_fn or self._build_reward()  # before the model: a missing labeler file fails fast
        self.model, self.processor = self._load_policy(policy)
        if not self.keeps_lora_dropout:
            set_lora_dropout(self.model, 0.0)
        self.tokenizer = self.processor.tokenizer
        self.stop_ids = stop_token_ids(self.model, self.tokenizer)
        s = cfg.sampling
        self.suppress_ids = suppressed_token_ids(
            self.processor, lm_head_weight(self.model).shape[0], s.ascii_only
        )
        self.engine = make_engine(s.engine, compile_decode=s.compile_decode, merge_lora=s.merge_lora)
        self.sampling_params = SamplingParams(
            max_new_tokens=s.max_new_tokens, stop_ids=tuple(self.stop_ids), pad_id=self.tokenizer.pad_token_id,
            suppress_ids=tuple(self.suppress_ids), temperature=s.temperature, top_p=s.top_p,
            min_new_tokens=s.min_new_tokens, num_samples=s.group_size,
        )  # fmt: skip
        log.info("rollout engine: %s (sampling.engine; merge_lora %s, compile_decode %s)", s.engine,
                 s.merge_lora, s.compile_decode)  # fmt: skip
        self.ddp = (
            DistributedDataParallel(
                self.model, device_ids=[self.dist.local_rank] if self.dist.device.type == "cuda" else None
            )
            if self.dist.enabled
            else None
        )
        self.params = trainable_parameters(self.model)
        vocab = lm_head_weight(self.model).shape[0]
        self.logprob_chunk = cfg.grpo.logprob_chunk or max(16, 2**24 // vocab)
        # transformers turns the cache off under gradient checkpointing (the config's, or a given policy's)
        self.prompt_once = cfg.grpo.prompt_once and not unwrap_model(self.model).is_activation_checkpointing
        log.info("log-prob passes: %s", "each prompt once, its completions on its KV cache (grpo.prompt_once)"
                 if self.prompt_once else "prompt + completion on every row")  # fmt: skip
        self.batches = ShardedBatches(
            len(self.samples), cfg.batch.prompts_per_device, self.dist.rank, self.dist.world_size, cfg.seed
        )
        self.total_steps = self._total_steps()
        self.optimizer = self._build_optimizer()
        self.scheduler = cosine_schedule_with_warmup(self.optimizer, self.total_steps, cfg.optim.warmup_ratio)
        self.loss_fn = loss_fn or load_loss(cfg.grpo.loss)
        self.prompt_cfg = cfg.data.prompt
        self.rollouts: list[Rollout] = []
        self.step = 0
        self.skipped_images = 0  # this step's samples dropped for an image that would not decode
        self._images: dict[str, list] = {}  # decoded images of the drawn samples, until they are encoded
        self.run_log = RunLog(self.run_dir, enabled=self.dist.is_main, options=cfg.log, config=to_dict(cfg))
        self.stop_signal = StopSignal()
        self.progress = None
        self._saved_step, self._saved_path = None, None
        if resume_state is not None:
            self._resume(resume_state)

    @property
    def mu(self) -> int:
        """Optimizer steps per batch of rollouts (grpo.num_iterations)."""
        return self.cfg.grpo.num_iterations

    # ------------------------------------------------------------------------------------------ setup

    def _load_samples(self) -> list[Sample]:
        d = self.cfg.data
        samples = d.load_samples()
        log.info("data: %d %s samples from %s", len(samples), d.split, d.annotation)
        return samples

    def _load_policy(self, policy=None):
        m = self.cfg.model
        if policy is not None:
            model, processor = policy
        else:
            model, processor = load_model_and_processor(
                m.path, device=self.dist.device, dtype=m.dtype, attn_implementation=m.attn_implementation,
                min_pixels=m.min_pixels, max_pixels=m.max_pixels, gradient_checkpointing=m.gradient_checkpointing,
            )  # fmt: skip
        lora = m.lora
        kwargs = {"target_regex": lora.target_regex} if lora.target_regex else {}
        model = add_policy_adapter(
            model, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, init_from=m.init_adapter, **kwargs
        )
        model.train()
        return model, processor

    def _total_steps(self) -> int:
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        micro_batches = math.ceil(self.cfg.epochs * self.batches.batches_per_epoch)
        return max(1, micro_batches // self.cfg.batch.grad_accum) * self.mu

    def _build_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        eight_bit = {"auto": "auto", "on": True, "off": False}[o.eight_bit]
        return build_optimizer(self.params, o.lr, o.betas, o.weight_decay, eight_bit=eight_bit,
                               zero1=o.zero1 and self.dist.enabled)  # fmt: skip

    def _build_reward(self) -> RewardCombiner:
        training_reports = [s.report for s in self.samples]
        return build_reward(self.cfg.reward, training_reports, device=str(self.dist.device))

    # ------------------------------------------------------------------------------------- log-probs

    def _forward_model(self, with_grad: bool):
        """The module to run: DDP's wrapper for the gradient pass (so it syncs), the bare model otherwise."""
        return self.ddp if (with_grad and self.ddp is not None) else self.model

    def completion_logprobs(
        self, model, inputs: dict, images: ImageFeatures | None, prompt_len: int,
        completion_ids: torch.Tensor, mask: torch.Tensor, temperature: float,
    ) -> torch.Tensor:  # fmt: skip
        """Per-token log-probs of the completion under ``model``: the text model's final hidden states at the
        positions that predict each completion token, projected to the vocabulary chunk by chunk (never the
        full (N, T, V) logits, never the prompt positions)."""
        extra = images.model_kwargs() if images is not None else {}
        hidden = language_hidden_states(model, **inputs, **extra)
        hidden = hidden[:, prompt_len - 1 : -1]
        return token_logprobs_from_hidden(
            hidden, lm_head_weight(self.model), completion_ids, temperature=temperature,
            chunk_size=self.logprob_chunk, mask=mask,
        )  # fmt: skip

    def _rollout_logprobs(self, model, ro: Rollout) -> torch.Tensor:
        """The completions' per-token log-probs under ``model``: each prompt once (``grpo.prompt_once``) or
        every row's prompt + completion."""
        if not self.prompt_once:
            return self.completion_logprobs(
                model, ro.inputs, ro.images, ro.prompt_len, ro.completion_ids, ro.completion_mask,
                self.cfg.sampling.temperature,
            )  # fmt: skip
        hidden = completion_hidden_states(model, ro.prompts, ro.prompt_images, ro.completion_ids,
                                          ro.completion_mask, self.cfg.sampling.group_size)  # fmt: skip
        return token_logprobs_from_hidden(
            hidden, lm_head_weight(self.model), ro.completion_ids, temperature=self.cfg.sampling.temperature,
            chunk_size=self.logprob_chunk, mask=ro.completion_mask,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------ the prompts

    def _next_samples(self) -> list[Sample]:
        """The next micro-batch of samples, their images decoded. A sample whose image will not decode is
        dropped (counted in ``skipped_images``) with ``data.skip_bad``; otherwise ImageLoadError."""
        while True:
            kept = []
            for sample in (self.samples[i] for i in self.batches.next_batch()):
                try:
                    self._images[sample.id] = load_images(sample.image_paths)
                    kept.append(sample)
                except (ImageLoadError, FileNotFoundError) as err:
                    if not self.cfg.data.skip_bad:
                        raise ImageLoadError(str(err)) from None
                    self.skipped_images += 1
                    log.warning("data.skip_bad: skipped sample %s: %s", sample.id, err)
            if kept:
                return kept

    def _draw_step(self) -> list[list[Sample]]:
        """The grad_accum micro-batches of one optimizer step. Every rank draws before any collective work,
        then all agree on whether one hit an undecodable image (without data.skip_bad): if so the data
        position goes back to the step's start, a checkpoint is written, and the run stops naming the file."""
        position = self.batches.state_dict()
        error = None
        try:
            batches = [self._next_samples() for _ in range(self.cfg.batch.grad_accum)]
        except ImageLoadError as err:
            error, batches = err, []
        if distributed.all_reduce_max(float(error is not None), self.dist.device):
            self.batches.load_state_dict(position)
            self._images.clear()
            self.save()
            raise error or ImageLoadError("another rank found an image that cannot be decoded (see its log)")
        return batches

    def _encode_prompts(self, samples: list[Sample]) -> tuple[dict, ImageFeatures | None, list[int]]:
        """Prompt tensors on the device, their images encoded once, and each prompt's image count."""
        images = (
            [self._images.pop(s.id) for s in samples] if all(s.id in self._images for s in samples) else None
        )
        batch = collate_prompts(self.processor, samples, self.prompt_cfg, images=images)
        batch = {k: v.to(self.dist.device) for k, v in batch.items()}
        counts = images_per_row(batch, image_token_id=self.processor.image_token_id)
        pixels = batch.pop("pixel_values", None)
        images = encode_images(self.model, pixels, batch["image_grid_thw"]) if pixels is not None else None
        return batch, images, counts

    # --------------------------------------------------------------------------------------- rollout

    @torch.no_grad()
    def rollout(self, micro_batches: list[list[Sample]]) -> list[Rollout]:
        """The experience of one optimizer step, one Rollout per micro-batch (no gradients)."""
        rollouts = [self.sample(samples) for samples in micro_batches]
        for ro in rollouts:
            self.score(ro)
        self.set_advantages(rollouts)
        for ro in rollouts:
            self.reference_and_old_logprobs(ro)
        return rollouts

    def sample(self, samples: list[Sample]) -> Rollout:
        """G completions per study from the current policy, appended to their prompts for the log-prob passes."""
        t = time.perf_counter()
        G = self.cfg.sampling.group_size
        prompts, images, counts = self._encode_prompts(samples)
        out = self.generate(prompts, images)
        loss_mask = out.mask & ~out.truncated[:, None] if self.cfg.sampling.mask_truncated else out.mask
        return Rollout(
            samples=samples,
            prompts=prompts,
            prompt_images=images,
            images_per_prompt=counts,
            group_size=G,
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
        ids, mask, truncated = split_completions(out.tokens, self.stop_ids, self.tokenizer.pad_token_id)
        sample_logp = out.logprobs * mask if out.logprobs is not None else None
        return Completions(ids, mask, truncated, sample_logp)

    def score(self, ro: Rollout) -> None:
        """The reward of each completion against its study's reference report."""
        t = time.perf_counter()
        G = self.cfg.sampling.group_size
        pad = self.tokenizer.pad_token_id
        ids = ro.completion_ids.masked_fill(~ro.completion_mask, pad)
        ro.texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        references = [s.report for s in ro.samples for _ in range(G)]
        keys = [s.study_id for s in ro.samples for _ in range(G)]
        ro.scored = self.reward(ro.texts, references, keys)
        ro.rewards = torch.as_tensor(ro.scored.total, dtype=torch.float32, device=self.dist.device)
        ro.stats["time/reward"] = time.perf_counter() - t

    def set_advantages(self, rollouts: list[Rollout]) -> None:
        """Eq. (2) within each group. With adv_scale=batch the spread is that of the step's whole batch,
        all micro-batches on all ranks, as a single process holding the batch would compute it."""
        g, G = self.cfg.grpo, self.cfg.sampling.group_size
        batch_var = None
        if g.adv_scale == "batch":
            rewards = torch.cat([ro.rewards for ro in rollouts]).double()
            moments = {"n": rewards.numel(), "sum": rewards.sum().item(), "sq": rewards.pow(2).sum().item()}
            moments = distributed.all_reduce_sums(moments, self.dist.device)
            batch_var = pooled_variance(moments["n"], moments["sum"], moments["sq"])
        for ro in rollouts:
            ro.advantages = group_advantages(ro.rewards, G, scale=g.adv_scale, batch_var=batch_var)
            ro.stats.update(self._rollout_stats(ro))

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

    def _rollout_stats(self, ro: Rollout) -> dict[str, float]:
        """Sums over the micro-batch, turned into the step's means at logging time (grpo/run_log.py)."""
        rewards, groups = ro.rewards, ro.rewards.view(-1, self.cfg.sampling.group_size)
        stats = {
            "n": float(rewards.numel()),
            "groups": float(groups.shape[0]),
            "reward": rewards.sum().item(),
            "reward_sq": (rewards**2).sum().item(),
            "adv_sq": (ro.advantages**2).sum().item(),
            "adv": ro.advantages.sum().item(),
            "zero_std_groups": (groups.max(dim=1).values == groups.min(dim=1).values).sum().item(),
            "completion_tokens": ro.completion_mask.sum().item(),
            "truncated": ro.truncated.sum().item(),
        }
        if ro.scored.format_ok is not None:
            stats["format_ok"] = float(np.sum(ro.scored.format_ok))
        for name, values in ro.scored.terms.items():
            stats[f"reward/{name}"] = float(np.sum(values))
        return stats

    def _examples(self, ro: Rollout) -> list[dict]:
        """A few decoded completions with their rewards, for samples.jsonl."""
        G = self.cfg.sampling.group_size
        return [
            {"study_id": ro.samples[i // G].study_id, "reward": float(ro.scored.total[i]),
             "completion": ro.texts[i], "reference": ro.samples[i // G].report}
            for i in range(min(len(ro.texts), 2 * G))
        ]  # fmt: skip

    # ---------------------------------------------------------------------------------------- update

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
            self.run_log.samples(self.step + 1, self._examples(self.rollouts[0]))
        return sums

    def _no_sync(self, last: bool):
        """DDP all-reduces gradients only on the last micro-step of an optimizer step."""
        if self.ddp is None or last:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def grpo_update(self, rollouts: list[Rollout]) -> dict[str, float]:
        """Eq. (1) on each micro-batch; the losses add up to the step's loss over all micro-batches and
        ranks, whose token and sequence counts are the aggregation's denominators (docs/design.md)."""
        counts = {"tokens": sum(ro.loss_mask.sum().item() for ro in rollouts),
                  "sequences": sum(ro.loss_mask.shape[0] for ro in rollouts)}  # fmt: skip
        counts = distributed.all_reduce_sums(counts, self.dist.device)
        world = self.dist.world_size  # DDP averages the ranks' gradients: scale back up to their sum
        sums = {"loss": 0.0, "micro_batches": float(len(rollouts))}
        for k, ro in enumerate(rollouts):
            with self._no_sync(last=k == len(rollouts) - 1):
                batch = LossInputs(
                    logp=self._rollout_logprobs(self._forward_model(True), ro), old_logp=ro.old_logp,
                    ref_logp=ro.ref_logp, advantages=ro.advantages, mask=ro.loss_mask,
                    max_length=self.cfg.sampling.max_new_tokens, step_tokens=counts["tokens"],
                    step_sequences=counts["sequences"],
                )  # fmt: skip
                loss, stats = self.loss_fn(batch, self.cfg.grpo)
                (loss * world).backward()
            if ro.old_logp is None and ro.sample_logp is not None:  # mu = 1: this is the first recomputation
                gap = logprob_gap_sum(batch.logp.detach(), ro.sample_logp, ro.completion_mask)
                sums["logprob_gap"] = sums.get("logprob_gap", 0.0) + gap
            sums["loss"] += loss.item()
            for name, value in stats.items():
                sums[f"loss/{name}"] = sums.get(f"loss/{name}", 0.0) + float(value)
        return sums

    def optimizer_step(self) -> tuple[float, float]:
        """Clip, step, schedule. Returns (grad norm before clipping, lr used)."""
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.last_grad_norm = float(grad_norm)
        return self.last_grad_norm, lr

    # ------------------------------------------------------------------------------------------ loop

    def train(self, stop_after: int | None = None) -> Path:
        """Run until ``total_steps`` (or ``stop_after`` steps, to simulate an interruption in tests).
        Returns the folder of the final adapter."""
        cfg = self.cfg
        self.progress = progress = tqdm(total=self.total_steps, initial=self.step, disable=not self.dist.is_main,
                                        desc=self.mode.upper(), dynamic_ncols=True)  # fmt: skip
        self.stop_signal.install()
        while self.step < self.total_steps and (stop_after is None or self.step < stop_after):
            t0 = time.perf_counter()
            self.skipped_images = 0
            sums = self.train_step()
            sums["skipped_images"] = float(self.skipped_images)
            t = time.perf_counter()
            grad_norm, lr = self.optimizer_step()
            sums["time/optim"] = time.perf_counter() - t
            self.step += 1
            step_time = time.perf_counter() - t0
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                row = self._metrics_row(sums, grad_norm, lr, step_time)
                self.run_log.metrics(row)
                progress.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "reward", "loss/kl") if k in row})
            progress.update(1)
            if self.step % cfg.save_every == 0 or self.step == self.total_steps:
                self.save()
            if self.step % self.mu == 0:  # checkpoints fall between batches of rollouts
                self._stop_if_signalled()
        self.stop_signal.uninstall()
        progress.close()
        final = self.run_dir / "final_adapter"
        if self.step == self.total_steps and self.dist.is_main:
            latest = checkpoint.latest_checkpoint(self.run_dir)
            copy_dir_atomic(latest / "adapter", final)
            log.info("final adapter: %s", final)
        distributed.barrier()
        return final

    def _stop_if_signalled(self) -> None:
        """After a step: if any rank got SIGTERM/SIGINT, all write a checkpoint and raise Preempted."""
        signum = self.stop_signal.agreed(self.dist.device)
        if signum:
            self.stop_signal.uninstall()
            saved = self.save() if self._saved_step != self.step else self._saved_path
            raise Preempted(signum, self.step, saved)

    def _metrics_row(self, sums: dict, grad_norm: float, lr: float, step_time: float) -> dict:
        """Reduce the step's sums over ranks into the metrics.jsonl row (see grpo/run_log.py): ``loss`` is
        summed (each rank logs its share), every ``loss/<name>`` averaged over micro-batches and ranks."""
        timings = {k: v for k, v in sums.items() if k.startswith("time/")}
        counts = {k: v for k, v in sums.items() if not k.startswith("time/")}
        total = distributed.all_reduce_sums(counts, self.dist.device)
        row: dict = {"step": self.step, "loss": total["loss"]}
        micro_batches = max(total.get("micro_batches", 1.0), 1.0)
        for key in sorted(k for k in total if k.startswith("loss/")):
            row[key] = total[key] / micro_batches
        n = max(total.get("n", 0.0), 1.0)
        if "reward" in total:
            row["reward"] = total["reward"] / n
            for key in sorted(k for k in total if k.startswith("reward/")):
                row[key] = total[key] / n
            row["reward_std"] = math.sqrt(max(total["reward_sq"] / n - row["reward"] ** 2, 0.0))
            row["adv_std"] = math.sqrt(max(total["adv_sq"] / n - (total["adv"] / n) ** 2, 0.0))
            row["frac_zero_std_groups"] = total["zero_std_groups"] / max(total["groups"], 1.0)
            row["truncated_frac"] = total["truncated"] / n
        if "format_ok" in total:
            row["format_ok"] = total["format_ok"] / n
        row["completion_len"] = total.get("completion_tokens", 0.0) / n
        if "logprob_gap" in total:  # mean |engine log-prob - recomputed log-prob| per completion token
            row["rollout/logprob_gap"] = total["logprob_gap"] / max(total.get("completion_tokens", 0.0), 1.0)
        row["skipped_images"] = int(total.get("skipped_images", 0.0))
        row["grad_norm"] = grad_norm
        row["lr"] = lr
        row["step_time_s"] = distributed.all_reduce_max(step_time, self.dist.device)
        row["tokens_per_s"] = total.get("completion_tokens", 0.0) / max(row["step_time_s"], 1e-9)
        for key, value in timings.items():
            row[key] = value
        return row

    # ----------------------------------------------------------------------------------- checkpoints

    def save(self) -> Path:
        """Write the checkpoint of the current step (collective); returns its folder."""
        if hasattr(self.optimizer, "consolidate_state_dict"):  # ZeRO-1: gather the shards on rank 0
            self.optimizer.consolidate_state_dict(to=0)
        optimizer_state = self.optimizer.state_dict() if self.dist.is_main else None
        checkpoint.save_checkpoint(
            self.run_dir, self.step, {"sampler": self.batches.state_dict(), "total_steps": self.total_steps},
            lambda folder: save_adapter(self.model, folder, POLICY), optimizer_state,
            self.scheduler.state_dict(), self.cfg.keep_last, self.dist.is_main,
        )  # fmt: skip
        distributed.barrier()
        self._saved_step = self.step
        self._saved_path = self.run_dir / "checkpoints" / f"step-{self.step:06d}"
        return self._saved_path

    def _start_run(self, resume: bool | str, allow_changes, overwrite: bool) -> dict | None:
        """Rank 0 prepares the run folder (grpo/run_dir.py) and picks the checkpoint; every rank gets the
        same outcome (an error is raised on all of them) and reads its own RNG state from that checkpoint."""
        outcome: tuple = (None, None)
        state = None
        if self.dist.is_main:
            try:
                state = run_dir.start(self.cfg, resume, allow_changes, overwrite)
                outcome = (None, state["path"] if state else None)
            except Exception as err:  # shared with the other ranks, so they stop too instead of waiting
                outcome = (err, None)
        error, path = distributed.broadcast_object(outcome)
        if error is not None:
            raise error
        if path is not None and not self.dist.is_main:
            state = checkpoint.load_checkpoint(path, self.dist.rank)
        return state

    def _resume(self, state: dict) -> None:
        """Continue from a checkpoint read by _start_run. The optimizer's hyperparameters and the lr schedule
        come from the current config: the saved one, unless --allow-config-change accepted a change."""
        load_policy_weights(self.model, state["adapter_dir"])
        configured = [{k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
                      for g in self.optimizer.param_groups]  # fmt: skip
        base_lrs = list(self.scheduler.base_lrs)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.base_lrs = base_lrs
        for group, hyper, base_lr, factor in zip(
            self.optimizer.param_groups, configured, base_lrs, self.scheduler.lr_lambdas
        ):
            group.update(hyper, initial_lr=base_lr, lr=base_lr * factor(self.scheduler.last_epoch))
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self.batches.load_state_dict(state["trainer_state"]["sampler"])
        self.step = int(state["trainer_state"]["step"])
        checkpoint.set_rng_state(state["rng"])
        self.run_log.truncate_after(self.step)
        self._saved_step, self._saved_path = self.step, state["path"]
        log.info("resumed from %s at step %d", state["path"], self.step)

    def close(self) -> None:
        """Release the run log, the signal handlers, the DDP wrapper and the optimizer (the process group
        stays: train.py may run another phase, and leaves it with distributed.teardown)."""
        self.stop_signal.uninstall()
        if self.progress is not None:
            self.progress.close()  # an error line then starts on a line of its own
        self.run_log.close()
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        self.ddp = self.optimizer = None
        gc.collect()


# ------------------------------------------------------------------------------------------- helpers


def logprob_gap_sum(recomputed: torch.Tensor, sampled: torch.Tensor, mask: torch.Tensor) -> float:
    """Sum over completion tokens of |log-prob the loss computes - log-prob the rollout engine computed|: both
    are log_softmax(logits / T) of the same tokens (LoRA dropout is 0 in GRPO), so this is numerical drift,
    logged per token as ``rollout/logprob_gap``."""
    return ((recomputed - sampled).abs() * mask).sum().item()


def load_policy_weights(model, adapter_dir: Path) -> None:
    """Load saved LoRA weights into the existing trainable "policy" adapter (resume)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(
        str(Path(adapter_dir) / "adapter_model.safetensors"), device=str(next(model.parameters()).device)
    )
    result = set_peft_model_state_dict(model, weights, adapter_name=POLICY)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise RuntimeError(f"{adapter_dir}: adapter weights did not match the model: {missing[:3]}")

