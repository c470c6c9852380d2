"""Rollout engines: sample completions for a batch of prompts (the trainer's rollout, evaluate.py's generation).

Two engines sample the same distribution (``model.engine.sampler`` defines it; tests/test_rollout_engine.py
checks it step by step):

- ``hf``: HF ``generate`` with every sampling field passed from our settings and the checkpoint's
  ``generation_config`` hidden during the call. The reference and the fallback.
- ``static``: ours. The B prompts are prefilled once through the model's own forward (images, 3-D RoPE),
  their KV cache is copied into a preallocated static cache for the G samples of each prompt, and decoding
  runs a plain-PyTorch step on a separate copy of the weights with the LoRA update merged in (the trainer's
  weights are never touched), with an inverse-CDF sampler. On CUDA the decode step can be compiled.

``make_engine(name)`` returns one; ``engine.generate(model, prompts, params, images)`` returns the generated
tokens (pad after each row's stop token, like HF) and, for ``static``, the log-prob of each sampled token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ENGINES = ("hf", "static")


@dataclass(frozen=True)
class SamplingParams:
    """Everything that decides what is sampled; nothing else (e.g. a checkpoint's generation_config) may."""

    max_new_tokens: int
    stop_ids: tuple[int, ...]
    pad_id: int
    suppress_ids: tuple[int, ...] = ()
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    min_new_tokens: int = 0
    num_samples: int = 1  # G: rows i*G .. i*G+G-1 of the output belong to prompt i


@dataclass
class Generation:
    """``tokens`` (B*G, T'), T' <= max_new_tokens: generated ids, pad after a row's first stop token.
    ``logprobs`` (B*G, T'): log_softmax(logits / temperature) of each token as the engine computed it
    (None: the engine does not know them)."""

    tokens: torch.Tensor
    logprobs: torch.Tensor | None


def make_engine(name: str, compile_decode: bool = False, merge_lora: bool | str = "auto"):
    """The engine called ``name`` (one of ENGINES); the options apply to ``static``."""
    if name == "hf":
        from model.engine.hf import HFEngine

        return HFEngine()
    if name == "static":
        from model.engine.static import StaticEngine

        return StaticEngine(merge_lora=merge_lora, compile_decode=compile_decode)
    raise ValueError(f"sampling.engine must be one of {ENGINES}, got {name!r}")
