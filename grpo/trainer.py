"""The training loop: GRPO (the paper's method) and SFT (its "Base + SFT" row and the demo's warm start).

One GRPO optimizer step (DESIGN.md, "One GRPO step"):

    for each of grad_accum micro-batches of B studies:           rollout()
        build the B prompts once, encode their images once        (vision tower frozen: no re-encoding)
        sample G completions per study                            (model/engine: sampling.engine, B*G rows)
        score them: R = sum_k w_k * term_k                        (rewards.combine.RewardCombiner)
        advantages, eq. (2)                                       (grpo.advantages.group_advantages)
        reference log-probs (no grad), old log-probs if mu > 1    (completion positions only, chunked)
    repeat num_iterations (mu) times:                             update()
        for each micro-batch: policy log-probs -> loss eq. (1) -> backward   (DDP no_sync but the last)
        clip grad norm -> optimizer step -> scheduler step

Completions of study i are rows i*G .. i*G+G-1 of its micro-batch, all on the rank that drew the study.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from data.batching import append_completion, collate_prompts, images_per_row, repeat_for_group
from data.r2gen import Sample
from grpo import checkpoint, distributed
from grpo.advantages import group_advantages
from grpo.config import TrainConfig, to_dict
from grpo.logprobs import token_logprobs_from_hidden
from grpo.loss import grpo_loss
from grpo.run_log import RunLog
from grpo.sampler import ShardedBatches
from model.engine import SamplingParams, make_engine
from model.loading import (
    ImageFeatures,
    encode_images,
    language_hidden_states,
    lm_head_weight,
    load_model_and_processor,
    vision_token_ids,
)
from model.lora import POLICY, add_policy_adapter, reference_policy, save_adapter, trainable_parameters
from model.optim import bitsandbytes_usable, build_optimizer, cosine_schedule_with_warmup
from rewards.combine import RewardCombiner
from rewards.format import format_reward
from rewards.labelers import make_labeler

log = logging.getLogger(__name__)

TIMING_KEYS = ("step_time_s", "tokens_per_s")  # wall-clock figures: differ between identical runs


@dataclass
class Rollout:
    """One micro-batch of sampled completions and everything the loss needs about them."""

    inputs: dict[str, torch.Tensor]  # prompt + completion, B*G rows (no pixels: see `images`)
    images: ImageFeatures | None  # encoded once, repeated per row
    prompt_len: int
    completion_ids: torch.Tensor  # (B*G, T)
    completion_mask: torch.Tensor  # (B*G, T) bool, EOS included
    sample_logp: torch.Tensor | None  # (B*G, T) the engine's own log-probs of the tokens (None: hf engine)
    loss_mask: torch.Tensor  # completion_mask, minus truncated rows when sampling.mask_truncated
    advantages: torch.Tensor  # (B*G,)
    ref_logp: torch.Tensor | None
    old_logp: torch.Tensor | None
    stats: dict[str, float]  # sums over this micro-batch, reduced over ranks at logging time
    samples: list[dict]  # a few decoded completions for samples.jsonl


class Trainer:
    """Builds everything a run needs from a TrainConfig, then ``train()`` runs it (``mode`` grpo or sft)."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, reward_fn=None, policy=None):
        """``reward_fn`` replaces the configured RewardCombiner: any callable with the combiner's signature
        ``(completions, references, ref_keys) -> RewardOutput`` (how researchers plug in a new reward).
        ``policy`` = ``(model, processor)`` already built (e.g. a model made from a config for a benchmark)
        replaces loading ``model.path``; the LoRA adapter is added as configured."""
        self.cfg = cfg
        self.dist = distributed.setup(cfg.device)
        if cfg.cpu_threads is not None and self.dist.device.type == "cpu":
            torch.set_num_threads(cfg.cpu_threads)
        self.run_dir = Path(cfg.output_dir)
        torch.manual_seed(cfg.seed + self.dist.rank)
        np.random.seed(cfg.seed + self.dist.rank)

        self.samples = self._load_samples()
        self.model, self.processor = self._load_policy(policy)
        self.tokenizer = self.processor.tokenizer
        self.stop_ids = stop_token_ids(self.model, self.tokenizer)
        self.suppress_ids = vision_token_ids(self.processor)
        s = cfg.sampling
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
        self.batches = ShardedBatches(
            len(self.samples), cfg.batch.prompts_per_device, self.dist.rank, self.dist.world_size, cfg.seed
        )
        self.total_steps = self._total_steps()
        self.optimizer = self._build_optimizer()
        self.scheduler = cosine_schedule_with_warmup(self.optimizer, self.total_steps, cfg.optim.warmup_ratio)
        self.reward = reward_fn or (self._build_reward() if cfg.mode == "grpo" else None)
        self.prompt_cfg = cfg.data.prompt
        self.step = 0
        self.run_log = RunLog(self.run_dir, enabled=self.dist.is_main, options=cfg.log, config=to_dict(cfg))
        if resume:
            self._resume()
        elif self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

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
        mu = self.cfg.grpo.num_iterations if self.cfg.mode == "grpo" else 1
        return max(1, micro_batches // self.cfg.batch.grad_accum) * mu

    def _build_optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        eight_bit = {"auto": "auto", "on": True, "off": False}[o.eight_bit]
        if not o.zero1 or not self.dist.enabled:
            return build_optimizer(self.params, o.lr, o.betas, o.weight_decay, eight_bit=eight_bit)
        from torch.distributed.optim import ZeroRedundancyOptimizer

        use_8bit = bitsandbytes_usable() if eight_bit == "auto" else eight_bit
        if use_8bit:
            import bitsandbytes as bnb

            optimizer_class = bnb.optim.AdamW8bit
        else:
            optimizer_class = torch.optim.AdamW
        log.info("optimizer: ZeRO-1 (ZeroRedundancyOptimizer) sharding %s state", optimizer_class.__name__)
        return ZeroRedundancyOptimizer(
            self.params, optimizer_class=optimizer_class, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay
        )

    def _build_reward(self) -> RewardCombiner:
        r = self.cfg.reward
        needs_labeler = {"mccs", "cef1"} & set(r.weights)
        labeler = (
            make_labeler(r.labeler, r.chexbert_path, r.chexbert_tokenizer, device=str(self.dist.device))
            if needs_labeler
            else None
        )
        kwargs = {} if r.margin is None else {"margin": r.margin}
        nlg_refs = [s.report for s in self.samples] if "nlg" in r.weights else None
        log.info("reward: %s, labeler %s", " + ".join(f"{w} * {k}" for k, w in r.weights.items()), r.labeler)
        return RewardCombiner(
            r.weights, labeler=labeler, blank_match=r.blank_match, nlg_train_references=nlg_refs,
            uncertain_as=r.uncertain_as, **kwargs,
        )  # fmt: skip

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

    # ------------------------------------------------------------------------------------ the prompts

    def _next_samples(self) -> list[Sample]:
        return [self.samples[i] for i in self.batches.next_batch()]

    def _encode_prompts(self, samples: list[Sample]) -> tuple[dict, ImageFeatures | None, list[int]]:
        """Prompt tensors on the device, their images encoded once, and each prompt's image count."""
        batch = collate_prompts(self.processor, samples, self.prompt_cfg)
        batch = {k: v.to(self.dist.device) for k, v in batch.items()}
        counts = images_per_row(batch, image_token_id=self.processor.image_token_id)
        pixels = batch.pop("pixel_values", None)
        images = encode_images(self.model, pixels, batch["image_grid_thw"]) if pixels is not None else None
        return batch, images, counts

    # --------------------------------------------------------------------------------------- rollout

    @torch.no_grad()
    def rollout(self, samples: list[Sample]) -> Rollout:
        """Sample G completions per study, score them, and compute what the loss needs (no gradients)."""
        cfg, G = self.cfg, self.cfg.sampling.group_size
        timings = {}
        t = time.perf_counter()
        prompts, images, counts = self._encode_prompts(samples)
        prompt_len = prompts["input_ids"].shape[1]

        self.model.eval()  # no LoRA dropout while sampling
        generated = self.engine.generate(self.model, prompts, self.sampling_params, images=images)
        self.model.train()
        completion_ids, completion_mask, truncated = split_completions(
            generated.tokens, self.stop_ids, self.tokenizer.pad_token_id
        )
        sample_logp = generated.logprobs * completion_mask if generated.logprobs is not None else None
        timings["time/generate"] = time.perf_counter() - t

        t = time.perf_counter()
        texts = self.tokenizer.batch_decode(
            completion_ids.masked_fill(~completion_mask, self.tokenizer.pad_token_id),
            skip_special_tokens=True,
        )
        references = [s.report for s in samples for _ in range(G)]
        keys = [s.study_id for s in samples for _ in range(G)]
        scored = self.reward(texts, references, keys)
        rewards = torch.as_tensor(scored.total, dtype=torch.float32, device=self.dist.device)
        advantages = group_advantages(rewards, G, scale=cfg.grpo.adv_scale)
        timings["time/reward"] = time.perf_counter() - t

        t = time.perf_counter()
        inputs = append_completion(repeat_for_group(prompts, G), completion_ids, completion_mask)
        row_images = images.repeat_per_prompt(counts, G) if images is not None else None
        loss_mask = completion_mask & ~truncated[:, None] if cfg.sampling.mask_truncated else completion_mask
        logp_args = (
            inputs,
            row_images,
            prompt_len,
            completion_ids,
            completion_mask,
            cfg.sampling.temperature,
        )
        ref_logp = old_logp = None
        if cfg.grpo.beta > 0:
            with reference_policy(self.model) as reference:
                ref_logp = self.completion_logprobs(reference, *logp_args)
        if cfg.grpo.num_iterations > 1:
            self.model.eval()
            old_logp = self.completion_logprobs(self.model, *logp_args)
            self.model.train()
        timings["time/logprob_ref"] = time.perf_counter() - t

        stats = self._rollout_stats(scored, rewards, advantages, completion_mask, truncated, texts, G)
        if old_logp is not None and sample_logp is not None:
            stats["logprob_gap"] = logprob_gap_sum(old_logp, sample_logp, completion_mask)
        stats.update(timings)
        examples = [
            {
                "study_id": keys[i],
                "reward": float(scored.total[i]),
                "completion": texts[i],
                "reference": references[i],
            }
            for i in range(min(len(texts), 2 * G))
        ]
        return Rollout(inputs, row_images, prompt_len, completion_ids, completion_mask, sample_logp, loss_mask,
                       advantages, ref_logp, old_logp, stats, examples)  # fmt: skip

    def _rollout_stats(self, scored, rewards, advantages, mask, truncated, texts, G) -> dict[str, float]:
        groups = rewards.view(-1, G)
        formats = scored.terms.get("format")
        if formats is None:
            formats = np.array([format_reward(t) for t in texts], dtype=np.float32)
        stats = {
            "n": float(rewards.numel()),
            "groups": float(groups.shape[0]),
            "reward": rewards.sum().item(),
            "reward_sq": (rewards**2).sum().item(),
            "adv_sq": (advantages**2).sum().item(),
            "adv": advantages.sum().item(),
            "zero_std_groups": (groups.max(dim=1).values == groups.min(dim=1).values).sum().item(),
            "completion_tokens": mask.sum().item(),
            "truncated": truncated.sum().item(),
            "format_ok": float((formats == 1.0).sum()),
        }
        for name, values in scored.terms.items():
            stats[f"reward/{name}"] = float(np.sum(values))
        return stats

    # ---------------------------------------------------------------------------------------- update

    def _no_sync(self, last: bool):
        """DDP all-reduces gradients only on the last micro-step of an optimizer step."""
        if self.ddp is None or last:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def grpo_update(self, rollouts: list[Rollout]) -> dict[str, float]:
        """One optimizer step over the micro-batches of rollouts: eq. (1) on each, gradients averaged."""
        g = self.cfg.grpo
        sums: dict[str, float] = {}
        for k, ro in enumerate(rollouts):
            with self._no_sync(last=k == len(rollouts) - 1):
                logp = self.completion_logprobs(
                    self._forward_model(True), ro.inputs, ro.images, ro.prompt_len, ro.completion_ids,
                    ro.completion_mask, self.cfg.sampling.temperature,
                )  # fmt: skip
                loss, stats = grpo_loss(
                    logp, ro.old_logp, ro.ref_logp, ro.advantages, ro.loss_mask, eps_low=g.eps_low,
                    eps_high=g.eps_high, beta=g.beta, aggregation=g.aggregation,
                    max_length=self.cfg.sampling.max_new_tokens,
                )  # fmt: skip
                (loss / len(rollouts)).backward()
            if ro.old_logp is None and ro.sample_logp is not None:  # mu = 1: this is the first recomputation
                sums["logprob_gap"] = sums.get("logprob_gap", 0.0) + logprob_gap_sum(
                    logp.detach(), ro.sample_logp, ro.completion_mask
                )
            sums["loss"] = sums.get("loss", 0.0) + loss.item() / len(rollouts)
            for key in ("kl", "clip_frac", "clip_frac_low", "clip_frac_high", "ratio_mean"):
                if key == "kl" and ro.ref_logp is None:
                    continue  # beta = 0: no reference pass, no KL to report
                sums[key] = sums.get(key, 0.0) + stats[key].item() / len(rollouts)
        return sums

    def sft_update(self, batches: list[list[Sample]]) -> dict[str, float]:
        """One optimizer step of token cross-entropy on the reference reports (the SFT baseline)."""
        sums = {"loss": 0.0, "completion_tokens": 0.0, "n": 0.0}
        for k, samples in enumerate(batches):
            with self._no_sync(last=k == len(batches) - 1):
                prompts, images, counts = self._encode_prompts(samples)
                targets = [self.cfg.sft.target_template.format(report=s.report) for s in samples]
                ids, mask = self._tokenize_targets(targets)
                inputs = append_completion(prompts, ids, mask)
                logp = self.completion_logprobs(
                    self._forward_model(True), inputs, images, prompts["input_ids"].shape[1], ids, mask, 1.0
                )
                loss = -(logp * mask).sum() / mask.sum()
                (loss / len(batches)).backward()
            sums["loss"] += loss.item() / len(batches)
            sums["completion_tokens"] += mask.sum().item()
            sums["n"] += len(samples)
        return sums

    def _tokenize_targets(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded target ids, each ending with the end-of-turn token the policy must learn to stop on."""
        rows = [self.tokenizer(t, add_special_tokens=False)["input_ids"] + [self.stop_ids[0]] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        return ids.to(self.dist.device), mask.to(self.dist.device)

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
        mu = cfg.grpo.num_iterations if cfg.mode == "grpo" else 1
        progress = tqdm(total=self.total_steps, initial=self.step, disable=not self.dist.is_main,
                        desc=cfg.mode.upper(), dynamic_ncols=True)  # fmt: skip
        rollouts: list[Rollout] = []
        while self.step < self.total_steps and (stop_after is None or self.step < stop_after):
            t0 = time.perf_counter()
            if cfg.mode == "grpo":
                fresh = self.step % mu == 0  # with mu > 1, each batch of rollouts serves mu optimizer steps
                if fresh:
                    rollouts = [self.rollout(self._next_samples()) for _ in range(cfg.batch.grad_accum)]
                t = time.perf_counter()
                sums = self.grpo_update(rollouts)
                for ro in rollouts:
                    for key, value in ro.stats.items():
                        if fresh or not key.startswith("time/"):
                            sums[key] = sums.get(key, 0.0) + value
            else:
                t = time.perf_counter()
                sums = self.sft_update([self._next_samples() for _ in range(cfg.batch.grad_accum)])
            sums["time/train"] = time.perf_counter() - t
            t = time.perf_counter()
            grad_norm, lr = self.optimizer_step()
            sums["time/optim"] = time.perf_counter() - t
            self.step += 1
            step_time = time.perf_counter() - t0
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                row = self._metrics_row(sums, grad_norm, lr, step_time)
                self.run_log.metrics(row)
                progress.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "reward", "kl") if k in row})
            if cfg.mode == "grpo" and rollouts and self.step % cfg.sample_every == 0:
                self.run_log.samples(self.step, rollouts[0].samples)
            progress.update(1)
            if self.step % cfg.save_every == 0 or self.step == self.total_steps:
                self.save()
        progress.close()
        final = self.run_dir / "final_adapter"
        if self.step == self.total_steps and self.dist.is_main:
            latest = checkpoint.latest_checkpoint(self.run_dir)
            _replace_dir(latest / "adapter", final)
            log.info("final adapter: %s", final)
        distributed.barrier()
        return final

    def _metrics_row(self, sums: dict, grad_norm: float, lr: float, step_time: float) -> dict:
        """Reduce the step's sums over ranks into the metrics.jsonl row (see grpo/run_log.py)."""
        world = self.dist.world_size
        timings = {k: v for k, v in sums.items() if k.startswith("time/")}
        mean_keys = ("loss", "kl", "clip_frac", "clip_frac_low", "clip_frac_high", "ratio_mean")
        counts = {k: v for k, v in sums.items() if not k.startswith("time/")}
        total = distributed.all_reduce_sums(counts, self.dist.device)
        row: dict = {"step": self.step}
        for key in mean_keys:
            if key in total:
                row[key] = total[key] / world
        n = max(total.get("n", 0.0), 1.0)
        if "reward" in total:
            row["reward"] = total["reward"] / n
            for key in sorted(k for k in total if k.startswith("reward/")):
                row[key] = total[key] / n
            row["reward_std"] = math.sqrt(max(total["reward_sq"] / n - row["reward"] ** 2, 0.0))
            row["adv_std"] = math.sqrt(max(total["adv_sq"] / n - (total["adv"] / n) ** 2, 0.0))
            row["frac_zero_std_groups"] = total["zero_std_groups"] / max(total["groups"], 1.0)
            row["truncated_frac"] = total["truncated"] / n
            row["format_ok"] = total["format_ok"] / n
        row["completion_len"] = total.get("completion_tokens", 0.0) / n
        if "logprob_gap" in total:  # mean |engine log-prob - recomputed log-prob| per completion token
            row["rollout/logprob_gap"] = total["logprob_gap"] / max(total.get("completion_tokens", 0.0), 1.0)
        row["grad_norm"] = grad_norm
        row["lr"] = lr
        row["step_time_s"] = distributed.all_reduce_max(step_time, self.dist.device)
        row["tokens_per_s"] = total.get("completion_tokens", 0.0) / max(row["step_time_s"], 1e-9)
        for key, value in timings.items():
            row[key] = value
        return row

    # ----------------------------------------------------------------------------------- checkpoints

    def save(self) -> None:
        if hasattr(self.optimizer, "consolidate_state_dict"):  # ZeRO-1: gather the shards on rank 0
            self.optimizer.consolidate_state_dict(to=0)
        optimizer_state = self.optimizer.state_dict() if self.dist.is_main else None
        checkpoint.save_checkpoint(
            self.run_dir, self.step, {"sampler": self.batches.state_dict(), "total_steps": self.total_steps},
            lambda folder: save_adapter(self.model, folder, POLICY), optimizer_state,
            self.scheduler.state_dict(), self.cfg.keep_last, self.dist.is_main,
        )  # fmt: skip
        distributed.barrier()

    def _resume(self) -> None:
        path = checkpoint.latest_checkpoint(self.run_dir)
        if path is None:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {self.run_dir / 'checkpoints'}")
        state = checkpoint.load_checkpoint(path, self.dist.rank)
        load_policy_weights(self.model, state["adapter_dir"])
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.batches.load_state_dict(state["trainer_state"]["sampler"])
        self.step = int(state["trainer_state"]["step"])
        checkpoint.set_rng_state(state["rng"])
        self.run_log.truncate_after(self.step)
        log.info("resumed from %s at step %d", path, self.step)

    def close(self) -> None:
        """Release the run log, the DDP wrapper and the optimizer (the process group stays: train.py may
        run another phase, and leaves it with distributed.teardown)."""
        self.run_log.close()
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        self.ddp = self.optimizer = None
        gc.collect()


# ------------------------------------------------------------------------------------------- helpers


def logprob_gap_sum(recomputed: torch.Tensor, sampled: torch.Tensor, mask: torch.Tensor) -> float:
    """Sum over completion tokens of |log-prob the loss computes - log-prob the rollout engine computed|: both
    are log_softmax(logits / T) of the same tokens, so this is numerical drift (plus LoRA dropout in the
    training pass when it is on), logged per token as ``rollout/logprob_gap``."""
    return ((recomputed - sampled).abs() * mask).sum().item()


def split_completions(
    tokens: torch.Tensor, stop_ids: list[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generated tokens -> (ids, mask, truncated). The mask covers each row up to and including its first
    stop token; rows without one were cut by max_new_tokens (``truncated``). Ids after the mask are pad."""
    is_stop = torch.isin(tokens, torch.tensor(stop_ids, device=tokens.device))
    has_stop = is_stop.any(dim=1)
    first_stop = torch.where(has_stop, is_stop.int().argmax(dim=1), tokens.shape[1] - 1)
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    mask = positions[None, :] <= first_stop[:, None]
    return tokens.masked_fill(~mask, pad_id), mask, ~has_stop


def stop_token_ids(model, tokenizer) -> list[int]:
    """End-of-turn ids: the tokenizer's eos first (what SFT targets end with), then generation_config's."""
    ids = [tokenizer.convert_tokens_to_ids("<|im_end|>")] if "<|im_end|>" in tokenizer.get_vocab() else []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.extend(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return list(dict.fromkeys(ids))


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


def _replace_dir(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (copy to a temporary sibling, then rename over)."""
    import shutil

    tmp = dst.with_name(f".tmp-{dst.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
