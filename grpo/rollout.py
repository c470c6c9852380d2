"""One micro-batch of rollouts (``Rollout``): B studies, G completions each, and what the step adds to them.

The trainer (grpo/trainer.py) fills a Rollout step by step: sampled (prompts, images, completions), scored
(texts, rewards), then advantages and the reference / old-policy log-probs. It lives apart from the trainer
so that the plug-ins between the rollout and the loss (grpo/experience.py) can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from data.batching import append_completion, repeat_for_group
from data.r2gen import Sample
from model.loading import ImageFeatures
from rewards.combine import RewardOutput


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
