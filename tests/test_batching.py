"""Prompt building and processor batching: left padding, image/prompt alignment when repeating for the group,
and completion appending."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from data.batching import append_completion, collate_prompts, images_per_row, repeat_for_group
from data.prompts import DEFAULT_INSTRUCTION, PromptConfig, build_messages, render_prompt

GROUP = 3


@pytest.fixture
def batch(tiny_processor, make_image):
    """Three prompts with different patch counts: one image (64 patches), two images (48 + 24), one image
    (64 patches, same size as prompt 0's so that swapping their pixels still fits the token counts)."""
    images = [
        [make_image(112, 112, 0)],
        [make_image(140, 112, 1), make_image(56, 84, 2)],
        [make_image(112, 112, 3)],
    ]
    return collate_prompts(tiny_processor, [1, 2, 1], images=images)


def test_messages_have_one_image_entry_per_image_then_the_instruction():
    sample = SimpleNamespace(id="s1", image_paths=("a.png", "b.png"))
    messages = build_messages(sample, PromptConfig(system="SYS", instruction="Write."))
    assert messages == [
        {"role": "system", "content": [{"type": "text", "text": "SYS"}]},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Write."}],
        },
    ]
    assert [m["role"] for m in build_messages(1, PromptConfig(system=""))] == ["user"]
    for bad in (0, True, "two"):
        with pytest.raises((ValueError, TypeError)):
            build_messages(bad)


def test_default_prompt_asks_for_the_think_then_report_format():
    assert DEFAULT_INSTRUCTION.index("<think>") < DEFAULT_INSTRUCTION.index("</think>")
    assert DEFAULT_INSTRUCTION.index("</think>") < DEFAULT_INSTRUCTION.index("<report>")
    assert "</report>" in DEFAULT_INSTRUCTION
    with pytest.raises(ValueError, match="instruction"):
        PromptConfig(instruction="  ")


def test_rendered_prompt_holds_the_config_texts_and_ends_with_the_assistant_header(tiny_processor):
    text = render_prompt(tiny_processor, 2, PromptConfig(system="Be brief.", instruction="Report it."))
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert text.count("<|image_pad|>") == 2
    assert text.endswith("Report it.<|im_end|>\n<|im_start|>assistant\n")


def test_collate_left_pads_so_every_prompt_ends_at_the_last_column(tiny_processor, batch):
    mask = batch["attention_mask"]
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "pixel_values",
        "image_grid_thw",
        "mm_token_type_ids",
    }
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()
    assert all(row.tolist() == sorted(row.tolist()) for row in mask)  # zeros, then ones
    header = tiny_processor.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert (batch["input_ids"][:, -len(header) :] == torch.tensor(header)).all()
    assert images_per_row(batch) == [1, 2, 1]
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(-1).sum()) == 64 + 48 + 24 + 64


def test_collate_reads_sample_images_from_disk_and_names_an_unreadable_file(
    tiny_processor, make_image, tmp_path
):
    good = tmp_path / "good.png"
    make_image(112, 112).convert("L").save(good)
    sample = SimpleNamespace(id="s1", image_paths=(good,))
    assert images_per_row(collate_prompts(tiny_processor, [sample])) == [1]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(OSError, match="broken.png"):
        collate_prompts(tiny_processor, [SimpleNamespace(id="s2", image_paths=(broken,))])
    with pytest.raises(ValueError, match="'s1'.*1 images expected, 2 given"):
        collate_prompts(tiny_processor, [sample], images=[[make_image(56, 56), make_image(56, 56)]])


def test_repeat_for_group_puts_prompt_i_at_rows_i_times_g_plus_j_with_its_own_pixels(batch):
    repeated = repeat_for_group(batch, GROUP)
    patches = batch["image_grid_thw"].prod(-1).tolist()  # per image: 64, 48, 24, 64
    pixel_slices = torch.split(batch["pixel_values"], patches)
    expected_images = [[0]] * GROUP + [[1, 2]] * GROUP + [[3]] * GROUP
    for row in range(3 * GROUP):
        assert torch.equal(repeated["input_ids"][row], batch["input_ids"][row // GROUP])
        assert torch.equal(repeated["mm_token_type_ids"][row], batch["mm_token_type_ids"][row // GROUP])
    assert images_per_row(repeated) == [len(images) for images in expected_images]
    flat = [image for images in expected_images for image in images]
    assert repeated["image_grid_thw"].tolist() == [batch["image_grid_thw"][i].tolist() for i in flat]
    assert torch.equal(repeated["pixel_values"], torch.cat([pixel_slices[i] for i in flat]))


def test_repeated_batch_gives_each_row_its_prompts_logits_and_misaligned_pixels_are_caught(tiny_model, batch):
    repeated = repeat_for_group(batch, GROUP)
    with torch.no_grad():
        single = tiny_model(**batch).logits
        grouped = tiny_model(**repeated).logits
    torch.testing.assert_close(grouped, single.repeat_interleave(GROUP, dim=0), rtol=1e-5, atol=1e-5)

    # Swap the pixels of row 0 (prompt 0) and row 2*G (prompt 2): same patch counts, so the model runs,
    # but those rows now see the other prompt's image and their logits change.
    patches = repeated["image_grid_thw"].prod(-1).tolist()
    slices = list(torch.split(repeated["pixel_values"], patches))
    swap_index = sum(images_per_row(repeated)[: 2 * GROUP])  # images of the rows before prompt 2's first
    slices[0], slices[swap_index] = slices[swap_index], slices[0]
    shuffled = dict(repeated, pixel_values=torch.cat(slices))
    with torch.no_grad():
        wrong = tiny_model(**shuffled).logits
    assert not torch.allclose(wrong[0], single[0], atol=1e-4)
    assert not torch.allclose(wrong[2 * GROUP], single[2], atol=1e-4)

    # A naive repeat of the whole image block (as if images were per row) breaks the token/patch
    # bookkeeping, which images_per_row reports instead of letting the model mix images up.
    naive = {
        key: value.repeat_interleave(GROUP, dim=0) if key not in ("pixel_values", "image_grid_thw") else value
        for key, value in batch.items()
    }
    naive["image_grid_thw"] = batch["image_grid_thw"].repeat(GROUP, 1)
    naive["pixel_values"] = batch["pixel_values"].repeat(GROUP, 1)
    with pytest.raises(ValueError, match="row 1"):
        images_per_row(naive)


def test_images_per_row_uses_the_image_token_id_without_mm_token_type_ids(tiny_processor, batch):
    without = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
    assert images_per_row(without, image_token_id=tiny_processor.image_token_id) == [1, 2, 1]
    with pytest.raises(ValueError, match="image_token_id"):
        images_per_row(without)
    with pytest.raises(ValueError, match="image_grid_thw lists 3"):
        images_per_row(dict(batch, image_grid_thw=batch["image_grid_thw"][:3]))
    with pytest.raises(ValueError, match="group_size"):
        repeat_for_group(batch, 0)


def test_append_completion_extends_masks_and_marks_completion_tokens_as_text(batch):
    completion = torch.arange(3 * 4).reshape(3, 4)
    completion_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    out = append_completion(batch, completion, completion_mask)
    width = batch["input_ids"].shape[1]
    assert torch.equal(out["input_ids"][:, width:], completion)
    assert torch.equal(out["attention_mask"][:, width:], completion_mask)
    assert torch.equal(out["mm_token_type_ids"][:, :width], batch["mm_token_type_ids"])
    assert (out["mm_token_type_ids"][:, width:] == 0).all()
    assert out["pixel_values"] is batch["pixel_values"]
    with pytest.raises(ValueError, match="completion_ids"):
        append_completion(batch, completion[:2], completion_mask[:2])
