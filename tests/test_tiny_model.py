"""The tiny offline Qwen2.5-VL: folder layout, tokenizer, chat template, processor, loading choices, generate,
and the model-side log-prob pieces (hidden states x lm_head, mm_token_type_ids, encode-once image features)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from data.batching import append_completion, collate_prompts, images_per_row, repeat_for_group
from model.loading import (
    contiguous_head_input,
    encode_images,
    language_hidden_states,
    lm_head_weight,
    load_model_and_processor,
    non_ascii_token_ids,
    resolve_attn_implementation,
    resolve_dtype,
    suppressed_token_ids,
    vision_token_ids,
)
from model.processor import ImageOnlyQwen2_5_VLProcessor, load_processor
from model.tiny import SPECIAL_TOKENS, TAG_TOKENS, build_tiny_model, main, read_texts


def completion_logprobs(model, batch, completion_ids, completion_mask, **image_kwargs):
    """Per-token log-probs of the completion under `model` via hidden states x lm_head at completion
    positions only (what the trainer does)."""
    inputs = append_completion(batch, completion_ids, completion_mask)
    if image_kwargs:
        inputs = {k: v for k, v in inputs.items() if k != "pixel_values"} | image_kwargs
    hidden = language_hidden_states(model, **inputs)
    length = completion_ids.shape[1]
    logits = hidden[:, -length - 1 : -1] @ lm_head_weight(model).T
    return torch.log_softmax(logits, dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


@pytest.fixture
def two_prompt_batch(tiny_processor, make_image):
    """Prompt 0: one 112 x 112 image (16 tokens); prompt 1: two images of other sizes (12 + 6 tokens)."""
    images = [[make_image(112, 112, 0)], [make_image(140, 112, 1), make_image(56, 84, 2)]]
    return collate_prompts(tiny_processor, [1, 2], images=images)


def test_tiny_folder_loads_like_a_checkpoint_in_fp32_sdpa_on_cpu(tiny_model_dir):
    model, processor = load_model_and_processor(tiny_model_dir, device="auto")
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration)
    assert isinstance(processor, ImageOnlyQwen2_5_VLProcessor)
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert model.config._attn_implementation == "sdpa"
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    # The saved folder names the stock processor class, so stock tools can open it where torchvision exists.
    assert json.loads((tiny_model_dir / "processor_config.json").read_text())["processor_class"] == (
        "Qwen2_5_VLProcessor"
    )


def test_tokenizer_has_qwen_special_tokens_as_single_ids_and_keeps_tags_when_skipping_specials(
    tiny_processor,
):
    tokenizer = tiny_processor.tokenizer
    for token in SPECIAL_TOKENS + TAG_TOKENS:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    text = "<think>heart enlarged</think><report>Cardiomegaly.</report><|im_end|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.replace("<|im_end|>", "")


def test_byte_level_tokenizer_round_trips_unseen_unicode_and_digits(tiny_processor):
    text = "Größe 12.5 cm — naïve “quotes” 肺 ✓\n  indented"
    ids = tiny_processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_processor.tokenizer.decode(ids) == text


def test_chat_template_renders_qwen2_5_vl_layout(tiny_processor):
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "SYS"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Go."}]},
    ]
    rendered = tiny_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    assert rendered == (
        f"<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n{vision}{vision}Go.<|im_end|>\n<|im_start|>assistant\n"
    )
    no_system = tiny_processor.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], tokenize=False
    )
    assert no_system == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n"
    )


def test_processor_gives_16_tokens_for_112px_and_respects_pixel_bounds(tiny_model_dir, make_image):
    prompt = "<|vision_start|><|image_pad|><|vision_end|>x"
    default = load_processor(tiny_model_dir)
    out = default(text=[prompt], images=[make_image(112, 112)], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert (
        int((out["mm_token_type_ids"] == 1).sum())
        == 16
        == int((out["input_ids"] == default.image_token_id).sum())
    )
    assert out["pixel_values"].shape[0] == 64
    smaller = load_processor(tiny_model_dir, max_pixels=56 * 56)
    assert smaller(text=[prompt], images=[make_image(112, 112)], return_tensors="pt")[
        "image_grid_thw"
    ].tolist() == [[1, 4, 4]]
    with pytest.raises(ValueError, match="min_pixels"):
        load_processor(tiny_model_dir, min_pixels=10_000, max_pixels=5_000)


def test_load_processor_reads_the_legacy_layout_of_released_checkpoints(tiny_model_dir, tmp_path, make_image):
    """Released Qwen2.5-VL folders keep the image processor in preprocessor_config.json (flat min/max
    pixels) and the template in chat_template.json; loading must honour both."""
    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_model_dir, legacy)
    image_config = json.loads((legacy / "processor_config.json").read_text())["image_processor"]
    (legacy / "processor_config.json").unlink()
    image_config.pop("size")
    image_config |= {"min_pixels": 56 * 56, "max_pixels": 56 * 56, "processor_class": "Qwen2_5_VLProcessor"}
    (legacy / "preprocessor_config.json").write_text(json.dumps(image_config))
    template = (legacy / "chat_template.jinja").read_text()
    (legacy / "chat_template.jinja").unlink()
    (legacy / "chat_template.json").write_text(json.dumps({"chat_template": template}))

    processor = load_processor(legacy)
    assert processor.chat_template == template
    out = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[make_image(112, 112)])
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]]
    (legacy / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        load_processor(legacy)


def test_loading_rejects_a_non_qwen2_5_vl_folder_naming_its_path(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_model_and_processor(tmp_path)
    fake = tmp_path / "llama"
    shutil.copytree(tiny_model_dir, fake)
    config = json.loads((fake / "config.json").read_text())
    config["model_type"] = "llama"
    (fake / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"{fake}.*model_type='llama'"):
        load_model_and_processor(fake)


def test_dtype_and_attention_choices_follow_the_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    assert resolve_dtype("fp32", cuda) == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", cpu)
    assert resolve_attn_implementation("auto", cpu) == "sdpa"
    assert resolve_attn_implementation("eager", cpu) == "eager"
    with pytest.raises(ValueError, match="flash_attn"):
        resolve_attn_implementation("flash_attention_2", cpu)


def test_generate_samples_tokens_and_suppressing_vision_ids_keeps_them_out(
    tiny_model, tiny_processor, two_prompt_batch
):
    vision_ids = vision_token_ids(tiny_processor)
    assert tiny_processor.image_token_id in vision_ids and len(vision_ids) == 5
    # Make the vision tokens by far the likeliest next tokens (a bias on the output head), so that without
    # suppression they are sampled: the check below could fail.
    biased_head = torch.nn.Linear(*reversed(tiny_model.lm_head.weight.shape), bias=True)
    with torch.no_grad():
        biased_head.weight.copy_(tiny_model.lm_head.weight)
        biased_head.bias.zero_()
        biased_head.bias[vision_ids] = 20.0
    tiny_model.lm_head = biased_head
    prompt_length = two_prompt_batch["input_ids"].shape[1]
    kwargs = dict(do_sample=True, max_new_tokens=8, min_new_tokens=8, num_return_sequences=2)
    torch.manual_seed(0)
    unsuppressed = tiny_model.generate(**two_prompt_batch, **kwargs)[:, prompt_length:]
    assert torch.isin(unsuppressed, torch.tensor(vision_ids)).any()
    torch.manual_seed(0)
    completions = tiny_model.generate(**two_prompt_batch, **kwargs, suppress_tokens=vision_ids)[
        :, prompt_length:
    ]
    assert completions.shape == (4, 8)
    assert not torch.isin(completions, torch.tensor(vision_ids)).any()


def test_hidden_states_times_lm_head_equal_the_models_logits(tiny_model, two_prompt_batch):
    completion = torch.randint(0, 300, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    inputs = append_completion(two_prompt_batch, completion, mask)
    with torch.no_grad():
        logits = tiny_model(**inputs).logits
        hidden = language_hidden_states(tiny_model, **inputs)
    assert hidden.shape == (*inputs["input_ids"].shape, tiny_model.config.text_config.hidden_size)
    torch.testing.assert_close(hidden @ lm_head_weight(tiny_model).T, logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="labels"):
        language_hidden_states(tiny_model, **inputs, labels=inputs["input_ids"])


def test_the_output_head_gets_contiguous_rows_when_one_position_per_row_is_kept(tiny_model, two_prompt_batch):
    # the last position of each row is a strided view; on CPU torch.matmul would copy the (V, H) weight once
    # per row for it (4.4 GB at the 7B head's size), so the loader makes the head copy the rows instead
    seen = []
    probe = tiny_model.lm_head.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous())
    )
    try:
        with torch.no_grad():
            last = tiny_model(**two_prompt_batch, logits_to_keep=1).logits
            full = tiny_model(**two_prompt_batch).logits
    finally:
        probe.remove()
    assert seen == [True, True]
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-5)
    contiguous_head_input(tiny_model)  # idempotent: a second call adds no second hook
    assert len(tiny_model.lm_head._forward_pre_hooks) == 1


def test_mm_token_type_ids_are_required_for_3d_positions(tiny_model, two_prompt_batch):
    completion = torch.randint(0, 300, (2, 4))
    inputs = append_completion(two_prompt_batch, completion, torch.ones_like(completion))
    assert (inputs["mm_token_type_ids"][:, -4:] == 0).all()
    without = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        # The model silently falls back to 1-D positions: different numbers, no error.
        assert not torch.allclose(tiny_model(**inputs).logits, tiny_model(**without).logits)
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        language_hidden_states(tiny_model, **without)


def test_reused_image_features_give_identical_logprobs_on_a_repeated_group_batch(
    tiny_model, two_prompt_batch
):
    group = 3
    repeated = repeat_for_group(two_prompt_batch, group)
    completion = torch.randint(0, 300, (2 * group, 6))
    mask = torch.ones_like(completion)
    features = encode_images(tiny_model, two_prompt_batch["pixel_values"], two_prompt_batch["image_grid_thw"])
    assert [f.shape[0] for f in features.per_image] == [16, 12, 6]
    reused = features.repeat_per_prompt(images_per_row(two_prompt_batch), group)
    with torch.no_grad():
        from_pixels = completion_logprobs(tiny_model, repeated, completion, mask)
        from_features = completion_logprobs(tiny_model, repeated, completion, mask, **reused.model_kwargs())
        # Features left in the unrepeated order misplace prompt 1's images: must not go unnoticed.
        with pytest.raises(Exception, match="do not match"):
            completion_logprobs(tiny_model, repeated, completion, mask, **features.model_kwargs())
    assert torch.equal(from_pixels, from_features)
    with pytest.raises(ValueError, match="images_per_prompt"):
        features.repeat_per_prompt([1, 1], group)


def test_generate_with_precomputed_features_matches_generate_with_pixels(tiny_model, two_prompt_batch):
    features = encode_images(tiny_model, two_prompt_batch["pixel_values"], two_prompt_batch["image_grid_thw"])
    text_only = {k: v for k, v in two_prompt_batch.items() if k != "pixel_values"}
    kwargs = dict(do_sample=True, max_new_tokens=6, num_return_sequences=2)
    torch.manual_seed(1)
    from_pixels = tiny_model.generate(**two_prompt_batch, **kwargs)
    for _ in range(2):  # a second call checks that generate() did not alter the stored features
        torch.manual_seed(1)
        assert torch.equal(tiny_model.generate(**text_only, **features.model_kwargs(), **kwargs), from_pixels)
    assert len(features.per_image) == 3


def test_build_is_deterministic_for_a_seed(tmp_path):
    texts = ["The heart is normal in size.", "Small left pleural effusion."] * 10
    first = build_tiny_model(tmp_path / "a", texts, vocab_size=400, seed=3)
    second = build_tiny_model(tmp_path / "b", texts, vocab_size=400, seed=3)
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="vocab_size"):
        build_tiny_model(tmp_path / "c", texts, vocab_size=100)


def test_cli_builds_from_an_r2gen_annotation_and_read_texts_rejects_bad_files(tmp_path):
    annotation = {
        "train": [
            {"id": "a", "report": "The heart is enlarged.", "image_path": ["a/0.png"], "split": "train"}
        ],
        "test": [{"id": "b", "report": "No effusion.", "image_path": ["b/0.png"], "split": "test"}],
    }
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps(annotation))
    assert read_texts(path) == ["The heart is enlarged.", "No effusion."]
    main(["--out", str(tmp_path / "model"), "--texts", str(path), "--vocab-size", "512"])
    model, processor = load_model_and_processor(tmp_path / "model")
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty.txt"):
        read_texts(tmp_path / "empty.txt")
    (tmp_path / "bad.json").write_text(json.dumps({"train": "oops"}))
    with pytest.raises(ValueError, match="bad.json.*'train'"):
        read_texts(tmp_path / "bad.json")


def test_non_ascii_token_ids_are_the_tokens_whose_text_is_not_ascii_and_the_padding_rows(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    known = len(tokenizer)
    ids = non_ascii_token_ids(tiny_processor, vocab_size=known + 3)
    assert ids[-3:] == [known, known + 1, known + 2]  # output rows no token maps to
    flagged = set(ids[:-3])
    texts = tokenizer.batch_decode([[i] for i in range(known)])
    assert flagged == {i for i, text in enumerate(texts) if not text.isascii()}
    # the two bytes of "é" are byte-level tokens that decode alone to U+FFFD: what a sampled report showed
    e_acute = tokenizer.encode("é", add_special_tokens=False)
    assert e_acute and set(e_acute) <= flagged and "\ufffd" in tokenizer.decode(e_acute[:1])
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") not in flagged  # the stop token stays drawable


def test_suppressed_token_ids_add_the_non_ascii_ones_only_when_asked(tiny_processor):
    vocab = len(tiny_processor.tokenizer) + 2
    assert suppressed_token_ids(tiny_processor, vocab) == vision_token_ids(tiny_processor)
    both = suppressed_token_ids(tiny_processor, vocab, ascii_only=True)
    assert both == sorted(
        set(vision_token_ids(tiny_processor)) | set(non_ascii_token_ids(tiny_processor, vocab))
    )
