"""export.py: a run's adapter merged into a plain Hugging Face folder that loads without peft and writes
the same greedy reports as the adapter on its base."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

from data.batching import collate_prompts
from export import PROVENANCE_FILE, main
from grpo.config import load_config, to_dict
from model.loading import load_model_and_processor, vision_token_ids
from model.lora import add_policy_adapter, load_adapter, save_adapter
from model.processor import load_processor


@pytest.fixture
def trained_run(tmp_path, tiny_model_dir):
    """A run folder: config.yaml and a final_adapter whose LoRA weights are far from zero (a real change)."""
    run = tmp_path / "run"
    run.mkdir()
    overrides = [
        f"model.path={tiny_model_dir}",
        f"data.annotation={tmp_path / 'none.json'}",
        "sampling.temperature=0.7",
        "sampling.top_p=0.9",
        "sampling.max_new_tokens=12",
        "model.max_pixels=12544",
    ]
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(load_config(None, overrides))))
    model, _ = load_model_and_processor(tiny_model_dir, device="cpu")
    model = add_policy_adapter(model, rank=4, alpha=8, dropout=0.0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    save_adapter(model, run / "final_adapter")
    return run


def greedy_reports(model, processor, images) -> list[list[int]]:
    samples = [SimpleNamespace(id=str(i), image_paths=(None,)) for i in range(len(images))]
    batch = collate_prompts(processor, samples, images=[[image] for image in images])
    out = model.generate(
        **batch,
        do_sample=False,
        max_new_tokens=12,
        suppress_tokens=vision_token_ids(processor),
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    return out[:, batch["input_ids"].shape[1] :].tolist()


def test_exported_model_writes_the_adapter_models_greedy_reports(
    trained_run, tiny_model_dir, tmp_path, make_image
):
    out = tmp_path / "export"
    assert main(["--run", str(trained_run), "--out", str(out)]) == 0

    exported = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).eval()  # stock loader, no peft
    exported_processor = load_processor(out)
    base, processor = load_model_and_processor(tiny_model_dir, device="cpu", max_pixels=12544)
    adapted = load_adapter(base, trained_run / "final_adapter", is_trainable=False).eval()
    images = [make_image(140, 112, seed=1), make_image(112, 168, seed=2)]
    with torch.no_grad():
        expected = greedy_reports(adapted, processor, images)
        with adapted.disable_adapter():
            base_reports = greedy_reports(adapted, processor, images)
        assert greedy_reports(exported, exported_processor, images) == expected
    assert base_reports != expected  # the adapter changes what is written, so the equality means something


def test_export_folder_layout_and_sampling_defaults(trained_run, tmp_path):
    out = tmp_path / "export"
    assert main(["--run", str(trained_run), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "chat_template.jinja",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        PROVENANCE_FILE,
    } <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors"}
    assert (out / "model.safetensors").stat().st_mode & 0o044 == (out / "config.json").stat().st_mode & 0o044
    generation = GenerationConfig.from_pretrained(out)
    assert generation.do_sample and generation.temperature == 0.7 and generation.top_p == 0.9
    assert generation.max_new_tokens == 12 and generation.top_k == 0
    processor = load_processor(out)
    assert generation.eos_token_id[0] == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert set(generation.suppress_tokens) == set(vision_token_ids(processor))
    assert processor.image_processor.size["longest_edge"] == 12544  # the run's model.max_pixels
    saved = json.loads((out / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2_5_VLProcessor"  # what AutoProcessor builds
    video = saved["video_processor"]  # the stock processor needs one (it is built where torchvision works)
    assert video["video_processor_type"] == "Qwen2VLVideoProcessor" and video["size"]["longest_edge"] == 12544
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert provenance["adapter"] == str((trained_run / "final_adapter").resolve())


def test_export_errors_name_the_problem(trained_run, tmp_path, capsys):
    assert main(["--run", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "config.yaml not found" in capsys.readouterr().err
    assert main(["--run", str(trained_run), "--checkpoint", "7", "--out", str(tmp_path / "x")]) == 2
    assert "step-000007" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert main(["--run", str(trained_run), "--out", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err


def _torchvision_works() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # a CUDA build on a CPU box fails with RuntimeError, not ImportError
        return False
    return True


@pytest.mark.skipif(not _torchvision_works(), reason="AutoProcessor needs a working torchvision")
def test_auto_processor_loads_the_export(trained_run, tmp_path):
    from transformers import AutoProcessor

    out = tmp_path / "export"
    assert main(["--run", str(trained_run), "--out", str(out)]) == 0
    assert type(AutoProcessor.from_pretrained(out)).__name__ == "Qwen2_5_VLProcessor"


def test_generation_config_suppresses_the_non_ascii_tokens_when_the_run_did(tiny_model, tiny_processor):
    from export import sampling_generation_config
    from grpo.config import SamplingConfig
    from model.loading import lm_head_weight, non_ascii_token_ids

    tokenizer = tiny_processor.tokenizer
    generation = sampling_generation_config(tiny_model, tokenizer, SamplingConfig(ascii_only=True))
    non_ascii = non_ascii_token_ids(tokenizer, lm_head_weight(tiny_model).shape[0])
    assert set(generation.suppress_tokens) == set(vision_token_ids(tokenizer)) | set(non_ascii)
