"""Supervised fine-tuning: token cross-entropy on the reference reports (the paper's "Base + SFT" row of
Table II, and the demo's warm start before GRPO).

It shares the run's setup, optimizer, logging and checkpoints with GRPO (grpo/run.py); only the step
differs, and LoRA dropout stays on (it regularizes SFT; GRPO turns it off, docs/design.md).
"""

from __future__ import annotations

import time

import torch

from data.batching import append_completion, tokenize_targets
from grpo import distributed
from grpo.run import Run
from grpo.trainer import Trainer
from model.generation import stop_token_ids


class SFTTrainer(Run):
    mode = "sft"
    keeps_lora_dropout = True

    def _after_model(self) -> None:
        self.stop_id = stop_token_ids(self.model, self.tokenizer)[0]  # what each target ends with

    def train_step(self) -> dict[str, float]:
        """The gradients of one optimizer step: mean token cross-entropy of each micro-batch's targets."""
        batches = self._draw_step()
        t = time.perf_counter()
        share = 1.0 / (len(batches) * self.dist.world_size)  # the logged loss is summed over ranks
        sums = {"loss": 0.0, "completion_tokens": 0.0, "n": 0.0}
        for k, samples in enumerate(batches):
            with self._no_sync(last=k == len(batches) - 1):
                prompts, images, _ = self._encode_prompts(samples)
                targets = [self.cfg.sft.target_template.format(report=s.report) for s in samples]
                ids, mask = self._tokenize_targets(targets)
                inputs = append_completion(prompts, ids, mask)
                logp = self.completion_logprobs(
                    self._forward_model(True), inputs, images, prompts["input_ids"].shape[1], ids, mask, 1.0
                )
                loss = -(logp * mask).sum() / mask.sum()
                with distributed.collective("DDP gradient all-reduce (backward)"):
                    (loss / len(batches)).backward()
            sums["loss"] += loss.item() * share
            sums["completion_tokens"] += mask.sum().item()
            sums["n"] += len(samples)
        sums["time/train"] = time.perf_counter() - t
        return sums

    def _tokenize_targets(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = tokenize_targets(self.tokenizer, texts, self.stop_id)
        return ids.to(self.dist.device), mask.to(self.dist.device)


def make_trainer(cfg, **kwargs) -> Run:
    """The run of ``cfg.mode``: GRPO (grpo/trainer.py) or SFT (this module)."""
    return (SFTTrainer if cfg.mode == "sft" else Trainer)(cfg, **kwargs)
