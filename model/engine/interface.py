"""What a rollout engine is asked (``SamplingParams``) and what it returns (``Generation``).

Its own module so that the engines (``model.engine.hf``, ``model.engine.static``) and the package that
picks one (``model.engine``) import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the engine names (ENGINES) load without torch (evaluate.py --help)
    import torch


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
