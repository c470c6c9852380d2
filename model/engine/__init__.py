"""Rollout engines: sample completions for a batch of prompts (the trainer's rollout, evaluate.py's generation).

Two engines sample the same distribution (``model.engine.next_token`` defines it; tests/test_rollout_engine.py
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

from model.engine.interface import Generation, SamplingParams

__all__ = ["ENGINES", "Generation", "SamplingParams", "make_engine"]

ENGINES = ("hf", "static")


def make_engine(name: str, compile_decode: bool = False, merge_lora: bool | str = "auto"):
    """The engine called ``name`` (one of ENGINES); the options apply to ``static``."""
    # imported here, not at the top: the engines pull in transformers, and grpo.config reads ENGINES
    if name == "hf":
        from model.engine.hf import HFEngine

        return HFEngine()
    if name == "static":
        from model.engine.static import StaticEngine

        return StaticEngine(merge_lora=merge_lora, compile_decode=compile_decode)
    raise ValueError(f"sampling.engine must be one of {ENGINES}, got {name!r}")
