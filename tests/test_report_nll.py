"""bench/report_nll.py: the likelihood of the reference reports, counted on the report's own tokens."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "assets" / "synthetic-base"
if str(ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(ROOT))

from bench.report_nll import framed_targets, report_nll  # noqa: E402
from data.synthetic import generate_world  # noqa: E402
from grpo.config import load_config  # noqa: E402
from model.loading import load_model_and_processor  # noqa: E402

FRAME = ("<think>Heart and lungs reviewed.</think><report>", "</report>")


@pytest.fixture(scope="module")
def base():
    model, processor = load_model_and_processor(BASE, device="cpu")
    return model.eval(), processor


def test_only_the_report_tokens_are_counted(base):
    _, processor = base
    tok = processor.tokenizer
    reports = ["The heart is enlarged.", "No pneumothorax. Normal heart size."]
    ids, attended, counted = framed_targets(tok, *FRAME, reports, stop_id=7)
    for row, report in enumerate(reports):
        assert tok.decode(ids[row][counted[row]]) == report
        n = int(attended[row].sum())
        assert ids[row, n - 1] == 7 and not counted[row, n - 1]  # the stop token closes the row, uncounted
        assert not counted[row, n:].any() and (ids[row, n:] == tok.pad_token_id).all()
    alone, _, counted_alone = framed_targets(tok, "", "", reports, stop_id=7)
    assert counted_alone.sum() == counted.sum()  # the same report tokens, framed or not


def test_a_frame_that_merges_with_the_report_is_refused(base):
    _, processor = base
    with pytest.raises(ValueError, match="tokenize differently"):
        framed_targets(processor.tokenizer, "The heart is enlar", "", ["ged."], stop_id=7)


def test_the_base_finds_its_pretraining_form_more_likely_than_the_unseen_frame(base, tmp_path):
    """The base was pretrained on reports right after the prompt and never saw the <think> frame."""
    model, processor = base
    world = generate_world(tmp_path / "world", n=6, seed=5, image_size=112, split_fractions=(0.0, 0.0, 1.0))
    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"data.annotation={world}", "data.synthetic_n=0"])
    samples = cfg.data.load_samples("test")
    stop_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        alone = report_nll(model, processor, samples, cfg.data.prompt, ("", ""), stop_id, batch_size=4)
        framed = report_nll(model, processor, samples, cfg.data.prompt, FRAME, stop_id, batch_size=4)
    assert 0.0 < alone < framed
