"""Image resolution bounds: the paper configs cap the visual tokens per image, and the first batch logs them."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

import data.batching
from data.batching import collate_prompts, visual_tokens_per_image
from grpo.config import load_config
from model.processor import load_processor

TOKEN_PIXELS = 28 * 28  # one visual token per 28 x 28 block (14 px patches, 2 x 2 merge)
REQUIRED = ["model.path=/m", "data.annotation=/a.json"]


def paper_bounds(config: str) -> tuple[int, int]:
    m = load_config(f"configs/{config}", REQUIRED).model
    return m.min_pixels, m.max_pixels


def image_tokens(processor, image) -> int:
    samples = [SimpleNamespace(id="x", image_paths=(None,))]
    return visual_tokens_per_image(processor, collate_prompts(processor, samples, images=[[image]]))[0]


@pytest.mark.parametrize("config", ["paper_iu_xray.yaml", "paper_mimic_cxr.yaml", "ablation_sft.yaml"])
def test_paper_configs_bound_each_image_to_128_to_512_visual_tokens(config):
    assert paper_bounds(config) == (128 * TOKEN_PIXELS, 512 * TOKEN_PIXELS)


def test_a_mimic_sized_image_stays_within_the_bound(tiny_model_dir, make_image):
    min_pixels, max_pixels = paper_bounds("paper_mimic_cxr.yaml")
    processor = load_processor(tiny_model_dir, min_pixels=min_pixels, max_pixels=max_pixels)
    assert image_tokens(processor, make_image(3056, 2544)) == 480  # 672 x 560 pixels, as the config says
    assert image_tokens(processor, make_image(4892, 4020)) <= 512
    assert image_tokens(processor, make_image(420, 512)) == 270  # an IU X-Ray-sized image keeps its size
    assert image_tokens(processor, make_image(150, 150)) >= 128  # a small one is scaled up to the floor
    unbounded = load_processor(tiny_model_dir, max_pixels=16384 * TOKEN_PIXELS)
    assert image_tokens(unbounded, make_image(3056, 2544)) > 9000  # what the bound prevents


def test_the_first_batch_logs_visual_tokens_per_image(tiny_processor, make_image, caplog, monkeypatch):
    monkeypatch.setattr(data.batching, "_first_batch_logged", False)
    samples = [SimpleNamespace(id=str(i), image_paths=(None,)) for i in range(2)]
    images = [[make_image(112, 112)], [make_image(56, 112)]]
    with caplog.at_level(logging.INFO, logger="data.batching"):
        collate_prompts(tiny_processor, samples, images=images)
        collate_prompts(tiny_processor, samples, images=images)
    messages = [r.getMessage() for r in caplog.records if "visual tokens per image" in r.getMessage()]
    assert len(messages) == 1 and "[16, 8]" in messages[0]
