"""Randomly initialised Qwen2.5-VL models of real sizes, built from a config (no download), for benchmarks.

The tokenizer and processor come from the tiny offline model folder; the text vocabulary is widened to the
size's real vocabulary (ids the small tokenizer lacks decode to nothing, which a benchmark does not mind).
"""

from __future__ import annotations

import torch

from model.processor import load_processor
from model.tiny import TinySizes, tiny_config

SIZES = {
    # Qwen2.5-VL-7B (HuatuoGPT-Vision-7B-Qwen2.5VL has the same shapes)
    "7b": dict(
        sizes=TinySizes(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            mrope_section=(16, 24, 24),
            max_position_embeddings=128000,
            vision_depth=32,
            vision_hidden_size=1280,
            vision_intermediate_size=3420,
            vision_num_heads=16,
        ),
        vocab=152064,
        fullatt=[7, 15, 23, 31],
    ),
    # tens of millions of parameters with Qwen's real vocabulary (the output head is most of them)
    "small": dict(
        sizes=TinySizes(
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            mrope_section=(4, 6, 6),
            vision_depth=2,
            vision_hidden_size=64,
            vision_intermediate_size=128,
            vision_num_heads=2,
        ),
        vocab=151936,
        fullatt=[1],
    ),
}


def build_random_qwen(
    tokenizer_dir, size: str, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
):
    """(model, processor) of the named size with random weights, built directly on ``device``."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    spec = SIZES[size]
    processor = load_processor(tokenizer_dir)
    config = tiny_config(processor.tokenizer, spec["sizes"])
    config.text_config.vocab_size = spec["vocab"]
    config.vision_config.fullatt_block_indexes = spec["fullatt"]
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model.eval(), processor
