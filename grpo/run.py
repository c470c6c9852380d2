"""What a GRPO run (grpo/trainer.py) and an SFT run (grpo/sft.py) share: the run folder and resume, the data
drawing, the policy with its LoRA adapter, the optimizer and schedule, the loop, logging and checkpoints.

A subclass gives ``train_step()`` (the gradients of one optimizer step, as sums for the metrics row) and may
build what it needs around the policy in ``_before_model()`` / ``_after_model()``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from data.batching import collate_prompts, images_per_row
from data.files import copy_dir_atomic
from data.images import ImageLoadError
from data.r2gen import Sample
from data.sharding import SampleDrawer, ShardedBatches
from grpo import checkpoint, distributed, faults, run_dir
from grpo.config import TrainConfig, to_dict
from grpo.faults import NonFiniteSteps, NonFiniteStop, RewardFailed, StepFailed, nonfinite_terms
from grpo.logprobs import token_logprobs_from_hidden
from grpo.preemption import Preempted, StopSignal
from grpo.run_log import RunLog, metrics_row
from model.loading import (
    ImageFeatures,
    contiguous_head_input,
    encode_images,
    language_hidden_states,
    lm_head_weight,
)
from model.lora import set_lora_dropout, trainable_parameters
from model.optim import build_optimizer, cosine_schedule_with_warmup

log = logging.getLogger(__name__)


class Run:
    """Builds a run from a TrainConfig; ``train()`` runs it."""

    mode: str  # the config's mode this class runs
    keeps_lora_dropout: bool  # False: every pass runs without LoRA dropout

    def __init__(
        self,
        cfg: TrainConfig,
        resume: bool | str = False,
        policy=None,
        allow_config_change: tuple[str, ...] = (),
        overwrite: bool = False,
    ):
        """``policy`` = ``(model, processor)`` already built (e.g. a model made from a config for a benchmark)
        replaces loading ``model.path``; the LoRA adapter is added as configured. ``resume`` (False, True or
        "auto"), ``allow_config_change`` and ``overwrite``: see grpo/run_dir.py (all checked before the model
        loads)."""
        if cfg.mode != self.mode:
            raise ValueError(f"mode={cfg.mode}: {type(self).__name__} runs mode={self.mode} (SFT: grpo.sft)")
        self.cfg = cfg
        self.dist = distributed.setup(cfg.device, timeout_s=cfg.dist_timeout_s)
        if cfg.cpu_threads is not None and self.dist.device.type == "cpu":
            torch.set_num_threads(cfg.cpu_threads)
        self.run_dir = Path(cfg.output_dir)
        torch.manual_seed(cfg.seed + self.dist.rank)
        np.random.seed(cfg.seed + self.dist.rank)

        resume_state = run_dir.start_on_all_ranks(cfg, self.dist, resume, allow_config_change, overwrite)
        d = cfg.data
        self.samples = d.load_samples()
        log.info("data: %d %s samples from %s", len(self.samples), d.split, d.annotation)
        resumed_step = int(resume_state["trainer_state"]["step"]) if resume_state is not None else None
        run_dir.check_data_on_all_ranks(cfg, self.dist, self.samples, resumed_step, allow_config_change)
        self._before_model()
        self.model, self.processor = cfg.model.load_policy(self.dist.device, policy)
        contiguous_head_input(self.model)  # a policy built by the caller did not pass through the loader
        if not self.keeps_lora_dropout:
            set_lora_dropout(self.model, 0.0)
        self.tokenizer = self.processor.tokenizer
        self._after_model()
        on_cuda = self.dist.device.type == "cuda"
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[self.dist.local_rank] if on_cuda else None)
            if self.dist.enabled
            else None
        )
        self.params = trainable_parameters(self.model)
        self.logprob_chunk = cfg.grpo.logprob_chunk or max(16, 2**24 // lm_head_weight(self.model).shape[0])
        batches = ShardedBatches(
            len(self.samples), cfg.batch.prompts_per_device, self.dist.rank, self.dist.world_size, cfg.seed
        )
        self.data = SampleDrawer(self.samples, batches, skip_bad=d.skip_bad)
        self.total_steps = self._total_steps()
        o = cfg.optim
        eight_bit = {"auto": "auto", "on": True, "off": False}[o.eight_bit]
        zero1 = o.zero1 and self.dist.enabled
        self.optimizer = build_optimizer(
            self.params, o.lr, o.betas, o.weight_decay, eight_bit=eight_bit, zero1=zero1
        )
        self.scheduler = cosine_schedule_with_warmup(self.optimizer, self.total_steps, o.warmup_ratio)
        self.step = 0
        self.run_log = RunLog(self.run_dir, enabled=self.dist.is_main, options=cfg.log, config=to_dict(cfg))
        self.stop_signal = StopSignal()
        self.nonfinite = NonFiniteSteps(limit=o.max_nonfinite_steps)
        self._signalled = 0  # the signal the ranks agreed on, acted upon between drawn batches
        self._pending_fault: Exception | None = None  # rank 0's failed metrics write, raised on all ranks
        self.progress = None
        self._saved_step, self._saved_path = None, None
        if resume_state is not None:
            self._resume(resume_state)

    def _before_model(self) -> None:
        """Built after the data, before the model loads (so that it fails fast)."""

    def _after_model(self) -> None:
        """Built once the policy is loaded, before the DDP wrapper and the optimizer."""

    @property
    def mu(self) -> int:
        """Optimizer steps per drawn batch."""
        return 1

    def _total_steps(self) -> int:
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        micro_batches = math.ceil(self.cfg.epochs * self.data.batches.batches_per_epoch)
        return max(1, micro_batches // self.cfg.batch.grad_accum) * self.mu

    # ------------------------------------------------------------------------------------- the step

    def train_step(self) -> dict[str, float]:
        """The gradients of one optimizer step; returns its sums for the metrics row (grpo/run_log.py)."""
        raise NotImplementedError

    def _draw_step(self) -> list[list[Sample]]:
        """The grad_accum micro-batches of one optimizer step. Every rank draws before any collective work,
        then all agree on whether one hit an undecodable image (without data.skip_bad): if so the data
        position goes back to the step's start, a checkpoint is written, and the run stops naming the file."""
        position = self.data.state_dict()
        error = None
        try:
            batches = [self.data.next_batch() for _ in range(self.cfg.batch.grad_accum)]
        except ImageLoadError as err:
            error, batches = err, []
        if distributed.all_reduce_max(float(error is not None), self.dist.device):
            self.data.load_state_dict(position)
            self.save()
            raise error or ImageLoadError("another rank found an image that cannot be decoded (see its log)")
        return batches

    def _encode_prompts(self, samples: list[Sample]) -> tuple[dict, ImageFeatures | None, list[int]]:
        """Prompt tensors on the device, their images encoded once, and each prompt's image count."""
        images = self.data.pop_images(samples)
        batch = collate_prompts(self.processor, samples, self.cfg.data.prompt, images=images)
        batch = {k: v.to(self.dist.device) for k, v in batch.items()}
        counts = images_per_row(batch, image_token_id=self.processor.image_token_id)
        pixels = batch.pop("pixel_values", None)
        images = encode_images(self.model, pixels, batch["image_grid_thw"]) if pixels is not None else None
        return batch, images, counts

    def _forward_model(self, with_grad: bool):
        """The module to run: DDP's wrapper for the gradient pass (so it syncs), the bare model otherwise."""
        return self.ddp if (with_grad and self.ddp is not None) else self.model

    def _no_sync(self, last: bool):
        """DDP all-reduces gradients only on the last micro-step of an optimizer step."""
        if self.ddp is None or last:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def completion_logprobs(
        self,
        model,
        inputs: dict,
        images: ImageFeatures | None,
        prompt_len: int,
        completion_ids: torch.Tensor,
        mask: torch.Tensor,
        temperature: float,
        entropy: bool = False,
    ):
        """Per-token log-probs of the completion under ``model``: the text model's final hidden states at the
        positions that predict each completion token, projected to the vocabulary chunk by chunk (never the
        full (N, T, V) logits, never the prompt positions). With ``entropy``: ``(log-probs, entropies)``."""
        extra = images.model_kwargs() if images is not None else {}
        hidden = language_hidden_states(model, **inputs, **extra)
        hidden = hidden[:, prompt_len - 1 : -1]
        return token_logprobs_from_hidden(
            hidden,
            lm_head_weight(self.model),
            completion_ids,
            temperature=temperature,
            chunk_size=self.logprob_chunk,
            mask=mask,
            entropy=entropy,
        )

    def optimizer_step(self, sums: dict[str, float] | None = None) -> tuple[float, float]:
        """Clip, agree, then step and schedule, or skip. Returns (grad norm before clipping, lr used).

        The ranks agree in the step's one all-reduce of flags (StopSignal.agree): whether any rank was
        signalled, and whether any rank's loss (``sums``: ``loss`` and ``loss/<name>``) or the gradient norm
        is not finite. A step that is not finite is not applied: its gradients are dropped, and neither the
        optimizer nor the lr schedule steps (grpo/faults.py)."""
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip))
        values = {k: v for k, v in (sums or {}).items() if k == "loss" or k.startswith("loss/")}
        self._bad_terms = nonfinite_terms({**values, "grad_norm": grad_norm})
        agreed = self.stop_signal.agree(
            self.dist.device, nonfinite=bool(self._bad_terms), fault=self._pending_fault is not None
        )
        self._signalled = self._signalled or agreed.signum
        self._step_nonfinite = agreed.nonfinite
        if agreed.fault:
            raise self._pending_fault or faults.DiskFullError(
                self.run_dir / "metrics.jsonl", None, None, "on rank 0, see its log"
            )
        lr = self.scheduler.get_last_lr()[0]
        if agreed.nonfinite:
            log.warning(
                "step %d not applied: not finite: %s",
                self.step + 1,
                ", ".join(self._bad_terms) or "on another rank",
            )
        else:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, lr

    # ------------------------------------------------------------------------------------- the loop

    def train(self, stop_after: int | None = None) -> Path:
        """Run until ``total_steps`` (or ``stop_after`` steps, to simulate an interruption in tests).
        Returns the folder of the final adapter."""
        cfg = self.cfg
        self.progress = progress = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not self.dist.is_main,
            desc=self.mode.upper(),
            dynamic_ncols=True,
        )
        self.stop_signal.install()
        while self.step < self.total_steps and (stop_after is None or self.step < stop_after):
            t0 = time.perf_counter()
            distributed.set_step(self.step + 1)  # named by a collective that times out
            self.data.skipped = 0
            start = (self.data.state_dict(), checkpoint.rng_state())  # a failed step restarts from here
            try:
                sums = self.train_step()
            except StepFailed as failed:
                self._stop_at_step_start(failed, *start)
            sums["skipped_images"] = float(self.data.skipped)
            t = time.perf_counter()
            grad_norm, lr = self.optimizer_step(sums)
            sums["time/optim"] = time.perf_counter() - t
            self.step += 1
            stop_nonfinite = self.nonfinite.record(self.step, self._step_nonfinite, self._bad_terms)
            step_time = time.perf_counter() - t0
            if self.step % cfg.log_every == 0 or self.step == self.total_steps or self._step_nonfinite:
                row = metrics_row(sums, self.step, grad_norm, lr, step_time, self.dist.device)
                row["nonfinite_steps"] = self.nonfinite.total
                self._log_metrics(row)
                progress.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", "reward", "loss/kl") if k in row})
            progress.update(1)
            if stop_nonfinite:
                self._stop_nonfinite()
            if self.step % cfg.save_every == 0 or self.step == self.total_steps:
                self.save()
            if self.step % self.mu == 0:  # checkpoints fall between drawn batches
                self._stop_if_signalled()
        self.stop_signal.uninstall()
        progress.close()
        final = self.run_dir / "final_adapter"
        if self.step == self.total_steps and self.dist.is_main:
            copy_dir_atomic(checkpoint.latest_checkpoint(self.run_dir) / "adapter", final)
            log.info("final adapter: %s", final)
        distributed.barrier()
        return final

    # ------------------------------------------------------------------------------ save and resume

    def save(self, data_position: dict | None = None, rng: dict | None = None) -> Path:
        """Write the checkpoint of the current step (collective); returns its folder. ``data_position`` and
        ``rng``: those of the step's start, when the step failed before anything was applied."""
        state = {
            "sampler": data_position or self.data.state_dict(),
            "total_steps": self.total_steps,
            "nonfinite": self.nonfinite.state_dict(),
        }
        pending, self._pending_fault = self._pending_fault, None
        self._saved_path = checkpoint.save_training(
            self.run_dir,
            self.step,
            state,
            self.model,
            self.optimizer,
            self.scheduler,
            self.cfg.keep_last,
            self.dist.is_main,
            rng=rng,
            pending=pending,
        )
        self._saved_step = self.step
        return self._saved_path

    def _log_metrics(self, row: dict) -> None:
        """Rank 0 appends the row. A full disk stops the run: at once in a single process; with several
        ranks at the next collective point (the step's flags, or a save), so that all stop together."""
        try:
            self.run_log.metrics(row)
        except faults.DiskFullError as err:
            if not self.dist.enabled:
                raise
            log.error("%s", err)
            self._pending_fault = err

    def _stop_at_step_start(self, failed: StepFailed, data_position: dict, rng: dict) -> None:
        """A reward raised in the coming step (on some rank): nothing of the step is applied; the checkpoint
        of the step's start is written (unless the last one is it) and every rank raises RewardFailed."""
        self.stop_signal.uninstall()
        self.optimizer.zero_grad(set_to_none=True)
        self.data.load_state_dict(data_position)
        saved = self._saved_path if self._saved_step == self.step else self.save(data_position, rng)
        raise RewardFailed(
            self.step + 1,
            failed.term or "(on another rank, see its log)",
            failed.error or "an exception",
            saved,
        )

    def _stop_nonfinite(self) -> None:
        """``optim.max_nonfinite_steps`` steps in a row were not applied: checkpoint (the weights and
        optimizer of the last applied step; the streak reset, so a resumed run gets the full allowance)."""
        self.stop_signal.uninstall()
        streak, first_bad, terms = self.nonfinite.streak, self.nonfinite.first_bad, self.nonfinite.first_terms
        self.nonfinite.streak, self.nonfinite.first_bad, self.nonfinite.first_terms = 0, None, ()
        saved = self.save()
        raise NonFiniteStop(self.step, streak, first_bad, terms, saved)

    def _resume(self, state: dict) -> None:
        """Continue from a checkpoint read by run_dir.start_on_all_ranks."""
        checkpoint.restore_training(state, self.model, self.optimizer, self.scheduler)
        self.data.load_state_dict(state["trainer_state"]["sampler"])
        self.nonfinite.load_state_dict(state["trainer_state"].get("nonfinite"))
        self.step = int(state["trainer_state"]["step"])
        self.run_log.truncate_after(self.step)
        self._saved_step, self._saved_path = self.step, state["path"]
        log.info("resumed from %s at step %d", state["path"], self.step)

    def _stop_if_signalled(self) -> None:
        """Between drawn batches: if any rank got SIGTERM/SIGINT (agreed in the step's flags), all write a
        checkpoint and raise Preempted."""
        signum = self._signalled  # agreed by all ranks in this or an earlier step's flags
        if signum:
            self.stop_signal.uninstall()
            saved = self.save() if self._saved_step != self.step else self._saved_path
            raise Preempted(signum, self.step, saved)

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
