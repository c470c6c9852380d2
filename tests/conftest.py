"""Shared fixtures: the tiny offline Qwen2.5-VL, built once per test session, and small deterministic images.

`tiny_model_dir` is a complete checkpoint folder (model, tokenizer, processor, chat template); load it with
`model.loading.load_model_and_processor` like a real checkpoint. `tiny_model` gives each test its own fresh
copy (tests wrap it with LoRA or update it), `tiny_processor` is shared.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from data.prompts import PromptConfig
from model.loading import load_model_and_processor
from model.processor import load_processor
from model.tiny import build_tiny_model

# The test models are tiny: one thread avoids oversubscribing the 2 cores CI has (4-5x faster here).
torch.set_num_threads(1)

# Report-like sentences for the tokenizer (the real build uses the synthetic world's reports).
REPORT_SENTENCES = (
    "The heart is normal in size. The mediastinum is unremarkable.",
    "The heart size is enlarged. There is mild cardiomegaly.",
    "No focal consolidation, pleural effusion or pneumothorax.",
    "There is a small left pleural effusion with blunting of the costophrenic angle.",
    "A right apical pneumothorax is present without lung markings beyond the pleural line.",
    "Patchy opacity in the right lower lobe may represent atelectasis or pneumonia.",
    "An endotracheal tube and a right internal jugular catheter are in place.",
    "Possible mild pulmonary edema. No acute osseous abnormality or fracture.",
    "The lungs are clear bilaterally. There is no evidence of edema.",
    "Degenerative changes of the spine. Calcified granuloma in the left upper lobe.",
)


def tokenizer_corpus() -> list[str]:
    prompt = PromptConfig()
    return [*REPORT_SENTENCES, prompt.system, prompt.instruction, "<think> </think> <report> </report>"] * 20


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path of a tiny Qwen2.5-VL checkpoint folder built once for the whole session (read-only by
    convention: copy it before changing files in it)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2.5-vl"), tokenizer_corpus(), seed=0)


@pytest.fixture(scope="session")
def tiny_processor(tiny_model_dir):
    return load_processor(tiny_model_dir)


@pytest.fixture
def tiny_model(tiny_model_dir):
    """A fresh fp32 CPU copy of the tiny model in eval mode (cheap: ~0.2 M parameters)."""
    model, _ = load_model_and_processor(tiny_model_dir, device="cpu")
    return model


@pytest.fixture
def make_image():
    """make_image(height, width, seed=0) -> a deterministic noisy RGB PIL image."""

    def make(height: int, width: int, seed: int = 0) -> Image.Image:
        rng = np.random.default_rng(seed)
        return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))

    return make
