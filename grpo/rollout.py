"""One micro-batch of rollouts (``Rollout``: B studies, G completions each, and what the step adds to them),
and ``regroup``, which builds a micro-batch out of chosen groups of others.

The trainer (grpo/trainer.py) fills a Rollout step by step: sampled (prompts, images, completions), scored
(texts, rewards), then advantages and the reference / old-policy log-probs. DAPO's dynamic sampling
(grpo/experience.py) keeps only some groups of several rounds of sampling and ``regroup``s them into full
micro-batches before the advantages, so every later step sees an ordinary Rollout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from data.batching import IMAGE_KEYS, append_completion, repeat_for_group
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


def regroup(groups: list[tuple[Rollout, int]], pad_token_id: int) -> Rollout:
    """A Rollout of ``groups``, in that order: ``(ro, i)`` is study i of rollout ``ro`` with its G completions
    and their scores. Prompts are left-padded again to the longest (positions follow the attention mask:
    padding changes values only by float rounding) and completions right-padded to the longest. The
    advantages, the reference and old-policy log-probs and the stats are left for the step to fill in."""
    if not groups:
        raise ValueError("regroup: no groups given")
    first = groups[0][0]
    G = first.group_size
    if any(ro.group_size != G for ro, _ in groups):
        raise ValueError("regroup: the rollouts have different group sizes")
    prompt_len = max(ro.prompt_len for ro, _ in groups)
    width = max(ro.completion_ids.shape[1] for ro, _ in groups)
    rows = [(ro, slice(i * G, (i + 1) * G)) for ro, i in groups]

    def image_slice(ro: Rollout, i: int) -> slice:
        start = sum(ro.images_per_prompt[:i])
        return slice(start, start + ro.images_per_prompt[i])

    prompts = {}
    for key in first.prompts:
        if key in IMAGE_KEYS:  # one row per image
            prompts[key] = torch.cat([ro.prompts[key][image_slice(ro, i)] for ro, i in groups])
        else:  # one left-padded row per prompt
            fill = pad_token_id if key == "input_ids" else 0
            prompts[key] = torch.cat(
                [_pad(ro.prompts[key][i : i + 1], prompt_len, fill, True) for ro, i in groups]
            )
    images = None
    if first.prompt_images is not None:
        images = ImageFeatures(
            tuple(f for ro, i in groups for f in ro.prompt_images.per_image[image_slice(ro, i)])
        )

    def rows_of(name: str, fill) -> torch.Tensor | None:
        if getattr(first, name) is None:
            return None
        return torch.cat([_pad(getattr(ro, name)[r], width, fill, False) for ro, r in rows])

    scored = None if first.scored is None else _regroup_scores([(ro.scored, r) for ro, r in rows])
    return Rollout(
        samples=[ro.samples[i] for ro, i in groups],
        prompts=prompts,
        prompt_images=images,
        images_per_prompt=[ro.images_per_prompt[i] for ro, i in groups],
        group_size=G,
        prompt_len=prompt_len,
        completion_ids=rows_of("completion_ids", pad_token_id),
        completion_mask=rows_of("completion_mask", False),
        truncated=torch.cat([ro.truncated[r] for ro, r in rows]),
        sample_logp=rows_of("sample_logp", 0.0),
        loss_mask=rows_of("loss_mask", False),
        texts=[text for ro, r in rows for text in ro.texts[r]],
        scored=scored,
        rewards=None if first.rewards is None else torch.cat([ro.rewards[r] for ro, r in rows]),
    )


def _pad(rows: torch.Tensor, width: int, fill, left: bool) -> torch.Tensor:
    """``rows`` (n, w) widened to (n, width) with ``fill`` on the left or the right."""
    extra = rows.new_full((rows.shape[0], width - rows.shape[1]), fill)
    return torch.cat([extra, rows] if left else [rows, extra], dim=1)


def _regroup_scores(parts: list[tuple[RewardOutput, slice]]) -> RewardOutput:
    """The rows ``r`` of each RewardOutput, concatenated in order."""
    join = np.concatenate
    first = parts[0][0]
    return RewardOutput(
        total=join([s.total[r] for s, r in parts]),
        terms={name: join([s.terms[name][r] for s, r in parts]) for name in first.terms},
        report_texts=[text for s, r in parts for text in s.report_texts[r]] if first.report_texts else [],
        format_ok=None if first.format_ok is None else join([s.format_ok[r] for s, r in parts]),
    )
