"""grpo/memory_plan.py: each term against hand-computed values on a small shape, the meta-device counts against
a built model, the CPU variant against a real process's peak resident memory, train.py --plan, and the static
engine's merge_lora=auto choice."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import grpo.memory_plan as mp
import model.engine.static as static_module
from data.batching import collate_prompts
from grpo.config import ConfigError, load_config
from model.generation import stop_token_ids
from model.loading import vision_token_ids
from model.lora import POLICY, add_policy_adapter, trainable_parameters
from model.tiny import TinySizes, tiny_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

# one decoder layer's LoRA targets: q, k, v, o (8 -> 8, 4, 4, 8), gate, up (8 -> 16), down (16 -> 8)
LAYER = ((8, 8), (8, 4), (8, 4), (8, 8), (8, 16), (8, 16), (16, 8))
SHAPE = mp.ModelShape(
    vocab=100, hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, head_dim=4, vision_hidden=4,
    vision_intermediate=8, vision_depth=1, vision_heads=1, patch=14, merge=2, temporal_patch=2,
    total_params=1000, vision_params=100, lora_targets=LAYER * 2,
)  # fmt: skip
SETTINGS = mp.PlanSettings(
    device="cuda", dtype_bytes=2, lora_rank=2, prompts=2, group_size=3, prompt_tokens=10, new_tokens=5,
    images_per_prompt=1, image_pixels=4 * 28 * 28, gradient_checkpointing=False, merge_lora=True,
    eight_bit=False, logprob_chunk=7, prompt_once=False,
)  # fmt: skip


def test_weight_and_lora_terms_by_hand():
    assert mp.frozen_weights_bytes(SHAPE, SETTINGS) == 2000
    # per layer r * (in + out): 2 * (16 + 12 + 12 + 16 + 24 + 24 + 24) = 256; two layers
    assert mp.lora_params(SHAPE, 2) == 512
    state = mp.lora_state_bytes(SHAPE, SETTINGS)
    assert state == {"lora": 2048, "grads": 2048, "optim": 4096, "reference": 0, "ddp_buckets": 0}
    # every tensor is under 4,096 elements: bitsandbytes keeps them 32-bit
    assert mp.lora_state_bytes(SHAPE, replace(SETTINGS, eight_bit=True))["optim"] == 4096
    big = replace(SHAPE, lora_targets=((4096, 4096),))
    # rank 1: A and B have 4,096 elements each -> 8-bit: 2 bytes each + a float32 absmax per 256 values, twice
    assert (
        mp.lora_state_bytes(big, replace(SETTINGS, lora_rank=1, eight_bit=True))["optim"] == 2 * 8192 + 8 * 32
    )
    zero1 = mp.lora_state_bytes(SHAPE, replace(SETTINGS, world_size=2, zero1=True, reference_adapter=True))
    assert zero1 == {"lora": 2048, "grads": 2048, "optim": 2048, "reference": 2048, "ddp_buckets": 2048}


def test_merged_copy_and_adapter_terms_by_hand():
    # in * out per layer: 64 + 32 + 32 + 64 + 128 + 128 + 128 = 576, two layers, bf16; float32 scratch 3 x 128
    assert mp.merged_copy_bytes(SHAPE, SETTINGS) == 1152 * 2 + 12 * 128
    assert mp.adapter_terms_bytes(SHAPE, SETTINGS) == 0
    off = replace(SETTINGS, merge_lora=False)
    assert mp.merged_copy_bytes(SHAPE, off) == 0
    assert mp.adapter_terms_bytes(SHAPE, off) == 6 * 4 * (16 + 2)
    assert mp.merged_copy_bytes(SHAPE, replace(SETTINGS, engine="hf")) == 0


def test_cache_vision_logprob_and_sampling_terms_by_hand():
    # 2 layers x (K, V) x kv_dim 4 x 2 bytes = 32 per position; 6 rows x 15 + the prefill's 2 x 10
    assert mp.kv_cache_bytes(SHAPE, SETTINGS) == 32 * (90 + 20)
    # 4 tokens per image -> 16 patches, 2 images: block 32 x (6*4 + 3*8) x 2, pixels 32 x 1176 x 4, features
    assert mp.vision_activation_bytes(SHAPE, SETTINGS) == 3072 + 32 * 1176 * 4 + 8 * 8 * 2
    assert mp.logprob_buffer_bytes(SHAPE, SETTINGS) == 7 * 100 * (2 * 2 + 12)
    assert mp.sampling_buffer_bytes(SHAPE, SETTINGS) == 6 * 100 * (2 + 12)
    assert mp.image_tokens(448 * 448, SHAPE) == 256


def test_activation_terms_by_hand():
    # base bf16 2 * (7*8 + 3*4 + 4*16) = 264; float32 norms 2 * 8 * 8 = 128; LoRA 7 x 4 x r + 4 x sum(in) = 312
    assert mp.layer_saved_bytes_per_token(SHAPE, SETTINGS) == 264 + 128 + 56 + 256
    tokens, layer = 90, 704 * 90
    outside = tokens * 8 * (3 * 2 + 8)
    assert mp.policy_activation_bytes(SHAPE, SETTINGS, checkpointing=False) == 2 * layer + layer + outside
    assert (
        mp.policy_activation_bytes(SHAPE, SETTINGS, checkpointing=True)
        == 2 * tokens * 8 * 2 + 2 * layer + outside
    )
    # prompt once: 2 prompts x 10 + 6 rows x 5 tokens
    once = replace(SETTINGS, prompt_once=True)
    assert mp.policy_activation_bytes(SHAPE, once, checkpointing=False) == 3 * 704 * 50 + 50 * 8 * 14


def test_the_table_assembles_the_terms_and_names_the_peak_phase():
    plan = mp.plan_memory(SHAPE, SETTINGS)
    t = plan.terms
    resident = t["weights"] + t["lora"] + t["optim"]
    rollout = resident + max(
        t["vision"], t["prefill"] + t["kv_cache"], t["merged"] + t["kv_cache"] + t["sampling"]
    )
    update = resident + t["grads"] + t["activations_full"] + t["logprob"]
    assert plan.phases["rollout (encode, prefill, decode)"] == rollout
    assert plan.phases["update (forward + backward)"] == update
    assert plan.allocated_peak == max(plan.phases.values())
    assert plan.peak_phase == "update"  # 200 kB of activations beat the vision tower's 154 kB here
    assert plan.total == plan.allocated_peak + int(mp.CUDA_CONTEXT + mp.ALLOCATOR_SLACK * plan.allocated_peak)
    assert "predicted peak" in plan.table() and "<- peak" in plan.table()
    cpu = mp.plan_memory(SHAPE, replace(SETTINGS, device="cpu"))
    assert cpu.overhead == int(mp.CPU_BASELINE)


def test_advice_names_a_setting_that_makes_it_fit():
    big = replace(
        SHAPE,
        hidden=3584,
        intermediate=18944,
        kv_heads=4,
        head_dim=128,
        vocab=152064,
        layers=28,
        lora_targets=((3584, 18944),) * 56,
        total_params=10**9,
    )
    p = replace(SETTINGS, lora_rank=128, prompt_tokens=600, new_tokens=512)
    full = mp.plan_memory(big, p).total
    fixed = mp.plan_memory(big, replace(p, gradient_checkpointing=True)).total
    assert fixed < full
    assert mp.advise(big, p, (full + fixed) // 2) == ["model.gradient_checkpointing=true"]
    assert mp.advise(big, p, full + 1) == []
    fits, line = mp.fit_report(big, p, (full + fixed) // 2)
    assert not fits and "model.gradient_checkpointing=true" in line
    assert mp.merge_choice(big, p, None) is True
    assert mp.merge_choice(big, p, 10**6) is False


def test_parse_size():
    assert mp.parse_size("40GB") == 40 * 10**9
    assert mp.parse_size("80 GiB") == 80 * 2**30
    assert mp.parse_size("24") == 24 * 10**9
    with pytest.raises(ValueError):
        mp.parse_size("lots")


def test_meta_counts_match_a_built_model_and_peft(tiny_processor):
    config = tiny_config(tiny_processor.tokenizer, TinySizes())
    shape = mp.model_shape(config)
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration._from_config(config)
    assert shape.total_params == sum(p.numel() for p in model.parameters())
    assert shape.vision_params == sum(p.numel() for p in model.model.visual.parameters())
    assert len(shape.lora_targets) == 7 * config.text_config.num_hidden_layers
    peft_model = add_policy_adapter(model, rank=4, alpha=8)
    assert mp.lora_params(shape, 4) == sum(p.numel() for p in trainable_parameters(peft_model))
    assert all(p.dtype == torch.float32 for p in trainable_parameters(peft_model))


def test_merge_lora_accepts_auto_true_false_only():
    base = ["model.path=/m", "data.annotation=/a.json"]
    assert load_config(None, base).sampling.merge_lora == "auto"
    assert load_config(None, [*base, "sampling.merge_lora=false"]).sampling.merge_lora is False
    with pytest.raises(ConfigError, match="merge_lora"):
        load_config(None, [*base, "sampling.merge_lora=sometimes"])


def test_train_plan_cli_says_whether_it_fits_and_what_to_change(tmp_path, capsys):
    from paper_scale import write_config

    import train

    model_dir = write_config(tmp_path / "m")  # the published 7B widths, full depth (counted on meta)
    argv = ["--config", str(REPO / "configs/paper_iu_xray.yaml"), "--plan"]
    model = f"model.path={model_dir}", "optim.eight_bit='off'"  # the same answer with or without bitsandbytes
    assert train.main([*argv, "--gpu-memory", "80GB", *model]) == 0
    out = capsys.readouterr().out
    assert "fits in 80 GB" in out and "frozen weights" in out and "merge_lora=auto" in out
    assert train.main([*argv, "--gpu-memory", "20GB", *model, "sampling.merge_lora=true"]) == 1
    assert "does not fit in 20 GB" in capsys.readouterr().out
    assert train.main([*argv, "--gpu-memory", "32GB", *model, "sampling.merge_lora=true"]) == 1
    assert "set sampling.merge_lora=false" in capsys.readouterr().out


def test_auto_merge_follows_free_memory_and_is_logged(
    tiny_model, tiny_processor, make_image, monkeypatch, caplog
):
    policy = add_policy_adapter(tiny_model, rank=4, alpha=8, dropout=0.0).eval()
    prompts = collate_prompts(tiny_processor, [1], images=[[make_image(112, 112, 0)]])
    params = static_module.SamplingParams(
        max_new_tokens=3, stop_ids=tuple(stop_token_ids(policy, tiny_processor.tokenizer)),
        pad_id=tiny_processor.tokenizer.pad_token_id, suppress_ids=tuple(vision_token_ids(tiny_processor)),
    )  # fmt: skip
    need = static_module.merged_copy_bytes(policy)
    assert need > 0
    engine = static_module.StaticEngine(merge_lora="auto")
    caplog.set_level(logging.INFO, logger="model.engine.static")
    for free, merged in ((need * 2, True), (need, False)):
        monkeypatch.setattr(static_module, "free_memory_bytes", lambda _device, _free=free: _free)
        engine.generate(policy, dict(prompts), params)
        assert engine.merged is merged
    assert "merged copy" in caplog.text and "adapter's terms" in caplog.text


def test_adapter_terms_decode_in_bf16_like_the_merged_copy(
    tiny_model, tiny_processor, make_image, monkeypatch
):
    """bf16 base, float32 adapter (peft's autocast): the adapter terms cast the input as peft does."""
    policy = add_policy_adapter(tiny_model.to(torch.bfloat16), rank=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if f".{POLICY}." in name and "lora_" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.3)
    policy.eval()
    prompts = collate_prompts(tiny_processor, [1], images=[[make_image(112, 112, 0)]])
    prompts = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in prompts.items()}
    params = static_module.SamplingParams(
        max_new_tokens=4, stop_ids=(), pad_id=tiny_processor.tokenizer.pad_token_id, do_sample=False,
        suppress_ids=tuple(vision_token_ids(tiny_processor)),
    )  # fmt: skip
    out = {
        m: static_module.StaticEngine(merge_lora=m).generate(policy, dict(prompts), params)
        for m in (True, False)
    }
    assert out[True].tokens.shape == out[False].tokens.shape
    # bf16 rounding differs (merged once vs terms added per step): log-probs agree to bf16 precision
    assert (out[True].logprobs[:, :1] - out[False].logprobs[:, :1]).abs().max() < 0.1


def _process_peak(size: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{size}.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench/paper_scale.py"), "--size", size, "--new-tokens", "8",
         "--no-decode-compare", "--workdir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_cpu_plan_predicts_the_process_peak_of_the_tiny_model(tmp_path):
    figures = _process_peak("tiny", tmp_path)
    assert abs(figures["planned_peak_gb"] / figures["peak_rss_gb"] - 1) <= 0.2, figures


@pytest.mark.slow
def test_cpu_plan_predicts_the_process_peak_of_the_small_model(tmp_path):
    figures = _process_peak("small", tmp_path)
    assert abs(figures["planned_peak_gb"] / figures["peak_rss_gb"] - 1) <= 0.2, figures


def test_the_gpu_run_parses_and_writes_its_configs_on_cpu(capsys):
    """bench/gpu_paper.py cannot run here (no GPU): its argument parsing, configs and plans can."""
    import gpu_paper

    args = gpu_paper.parse_args(["--variants", "static-merge", "resume", "--steps", "2"])
    merge = gpu_paper.overrides(args, "static-merge", Path("/a.json"), Path("/m"))
    resume = gpu_paper.overrides(args, "resume", Path("/a.json"), Path("/m"))
    assert "sampling.merge_lora=true" in merge and "max_steps=2" in merge and "save_every=2" in merge
    assert "max_steps=3" in resume and "sampling.merge_lora=auto" in resume
    assert gpu_paper.main(["--dry-run", "--variants", "static-merge", "static-adapter"]) == 0
    out = capsys.readouterr().out
    assert out.count("GB per GPU") == 2
