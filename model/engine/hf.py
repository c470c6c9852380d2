"""The reference engine: HF ``generate``, fed only our sampling settings.

``generate`` fills every field its caller leaves unset from the checkpoint's ``generation_config`` (a
Qwen2.5-VL instruct checkpoint ships ``repetition_penalty`` 1.05, ``top_k``, ``top_p``, ``temperature``).
The rollout would then sample a penalised distribution while the loss treats the samples as the policy's:
an off-policy bias nobody sees. So the call sees a blank ``GenerationConfig`` (global defaults only) and
every sampling field explicitly.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import GenerationConfig

from model.engine.interface import Generation, SamplingParams
from model.loading import unwrap_model


@contextlib.contextmanager
def blank_generation_config(model):
    """Hide the checkpoint's generation_config from ``generate`` for the duration of the block."""
    inner = unwrap_model(model)
    saved = inner.generation_config
    inner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        inner.generation_config = saved


def generation_config(p: SamplingParams) -> GenerationConfig:
    """All the fields that shape the distribution, set to our values or to 'off'."""
    sampling = {"temperature": p.temperature, "top_p": p.top_p, "top_k": 0} if p.do_sample else {}
    return GenerationConfig(
        do_sample=p.do_sample,
        **sampling,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        max_new_tokens=p.max_new_tokens,
        min_new_tokens=p.min_new_tokens,
        num_return_sequences=p.num_samples,
        eos_token_id=list(p.stop_ids),
        pad_token_id=p.pad_id,
        suppress_tokens=list(p.suppress_ids) or None,
        num_beams=1,
        use_cache=True,
    )


class HFEngine:
    name = "hf"

    @torch.no_grad()
    def generate(self, model, prompts: dict, params: SamplingParams, images=None) -> Generation:
        """``prompts``: the processor's tensors (pixels included, or ``images`` = encoded ImageFeatures)."""
        extra = images.model_kwargs() if images is not None else {}
        with blank_generation_config(model):
            out = model.generate(**prompts, **extra, generation_config=generation_config(params))
        return Generation(tokens=out[:, prompts["input_ids"].shape[1] :], logprobs=None)
