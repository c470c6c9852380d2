"""A real-width rehearsal on CPU: one full GRPO step of configs/paper_iu_xray.yaml on a Qwen2.5-VL with the
widths of HuatuoGPT-Vision-7B-Qwen2.5VL (= Qwen2.5-VL-7B) and random weights, a few layers deep.

    python bench/paper_scale.py                              # 2 decoder layers, 2 vision blocks, 32 new tokens
    python bench/paper_scale.py --layers 1 --vision-blocks 1 --new-tokens 8
    python bench/paper_scale.py --size small                 # bench/random_qwen.py's "small" model, fp32
    python bench/paper_scale.py --write-config /tmp/huatuo7b # only write the published config.json (28 layers)

The model: text hidden 3584, intermediate 18,944, 28 heads over 4 KV heads, vocabulary 152,064, untied
output head; vision hidden 1280, intermediate 3420, 16 heads, patch 14, spatial merge 2, window 112, out
hidden 3584 (Qwen2.5-VL-7B's config.json), ``--layers`` decoder layers and ``--vision-blocks`` vision blocks;
bf16, LoRA r128 / alpha 256 on attention and MLP, vision tower frozen, gradient checkpointing (the paper
config's settings). The tokenizer and processor are the project's tiny ones (model/tiny.py); the output head
keeps the real vocabulary. The data: the synthetic world with --image-size pixel views (two views for most
studies; each view is a sample, as data.multi_view=false reads the paper); one optimizer step is
batch.prompts_per_device=1 x grad_accum=2 micro-steps of G=4 completions, forced to --new-tokens tokens.

It prints per-phase seconds, the measured peak resident memory, the memory plan's prediction for this very
process (grpo/memory_plan.py, CPU variant), the decode time of the static engine on a merged copy and with
the adapter's terms side by side, and the plan's per-GPU prediction at full depth (28 layers, 32 vision
blocks) for both merge_lora choices. Last line: ``paper_scale: planned_peak_gb=<x> full_depth_per_gpu_gb=<y>``.
``--json FILE`` also writes every figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_gb  # noqa: E402

GB = 1e9
PAPER_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "paper_iu_xray.yaml"

# Qwen2.5-VL-7B-Instruct's config.json (HuatuoGPT-Vision-7B-Qwen2.5VL has the same shapes), as published.
PUBLISHED_7B_CONFIG = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
    "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656,
    "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944,
    "max_position_embeddings": 128000, "max_window_layers": 28, "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 152064,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {
        "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
        "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
        "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2, "temporal_patch_size": 2,
    },
}  # fmt: skip


def published_config(layers: int = 28, vision_blocks: int = 32) -> dict:
    """The published config.json with ``layers`` decoder layers and ``vision_blocks`` vision blocks."""
    config = copy.deepcopy(PUBLISHED_7B_CONFIG)
    config["num_hidden_layers"] = config["max_window_layers"] = layers
    vision = config["vision_config"]
    vision["depth"] = vision_blocks
    vision["fullatt_block_indexes"] = [i for i in vision["fullatt_block_indexes"] if i < vision_blocks] or [
        vision_blocks - 1
    ]
    return config


def write_config(out_dir: str | Path, layers: int = 28, vision_blocks: int = 32) -> Path:
    """Write ``out_dir/config.json`` (no weights): what ``train.py --plan`` reads."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(published_config(layers, vision_blocks), indent=2) + "\n")
    return out_dir


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size",
        choices=("paper", "small", "tiny"),
        default="paper",
        help="paper: the real widths (bf16, the paper config); small/tiny: the CPU-scale models "
        "(fp32, LoRA r8, no checkpointing) that tests/test_memory_plan.py checks the plan on",
    )
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (paper size)")
    parser.add_argument("--vision-blocks", type=int, default=2, help="vision blocks (paper size)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument(
        "--image-size", type=int, help="pixels per side of a view (default: 448 paper, 112 else)"
    )
    parser.add_argument("--merge-lora", default="auto", choices=("auto", "true", "false"))
    parser.add_argument("--no-decode-compare", action="store_true", help="skip the merged vs adapter timing")
    parser.add_argument("--workdir", default="/tmp/mrg-paper-scale")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--write-config", metavar="DIR", help="only write the full-depth config.json to DIR")
    args = parser.parse_args(argv)
    if args.image_size is None:
        args.image_size = 448 if args.size == "paper" else 112
    for name in ("layers", "vision_blocks", "new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def prepare(workdir: Path, image_size: int) -> tuple[Path, Path]:
    """The synthetic world (views of ``image_size`` pixels) and the tiny model folder (tokenizer, processor)."""
    from data.synthetic import generate_world, world_texts
    from model.tiny import build_tiny_model

    annotation = workdir / f"world{image_size}" / "annotation.json"
    if not annotation.exists():
        generate_world(annotation.parent, n=16, seed=0, image_size=image_size)
    tiny = workdir / "tiny"
    if not (tiny / "config.json").exists():
        build_tiny_model(tiny, world_texts(annotation), seed=0)
    return annotation, tiny


def overrides_for(args, annotation: Path, tiny: Path, out_dir: Path) -> list[str]:
    common = [
        f"model.path={tiny}", f"data.annotation={annotation}", f"output_dir={out_dir}", "device=cpu",
        "max_steps=1", f"sampling.max_new_tokens={args.new_tokens}", f"sampling.min_new_tokens={args.new_tokens}",
        "save_every=100000", "sample_every=100000", "log.tensorboard='off'", f"sampling.merge_lora={args.merge_lora}",
        "sampling.engine=static",
    ]  # fmt: skip
    return common + size_overrides(args.size)


def size_overrides(size: str) -> list[str]:
    """bf16 at the paper's size; fp32, a small LoRA and small images for the CPU-sized rehearsals."""
    if size == "paper":
        return ["model.dtype=bfloat16"]
    return [
        "model.dtype=float32",
        "model.gradient_checkpointing=false",
        "model.lora.rank=8",
        "model.lora.alpha=16",
        "model.min_pixels=3136",
        f"model.max_pixels={112 * 112}",
    ]


def build_model(args, tiny: Path, cfg, attn_implementation: str = "sdpa"):
    """(model, processor) with random weights at the chosen size, at the config's dtype, on the current
    default device (CPU; bench/gpu_paper.py builds under ``torch.device("cuda")``)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from model.processor import load_processor
    from model.tiny import TinySizes, tiny_config

    processor = load_processor(tiny, min_pixels=cfg.model.min_pixels, max_pixels=cfg.model.max_pixels)
    if args.size == "paper":
        p = PUBLISHED_7B_CONFIG
        v = published_config(args.layers, args.vision_blocks)["vision_config"]
        sizes = TinySizes(
            hidden_size=p["hidden_size"], intermediate_size=p["intermediate_size"], num_hidden_layers=args.layers,
            num_attention_heads=p["num_attention_heads"], num_key_value_heads=p["num_key_value_heads"],
            mrope_section=tuple(p["rope_scaling"]["mrope_section"]), max_position_embeddings=128000,
            vision_depth=args.vision_blocks, vision_hidden_size=v["hidden_size"],
            vision_intermediate_size=v["intermediate_size"], vision_num_heads=v["num_heads"],
        )  # fmt: skip
        vocab, fullatt = p["vocab_size"], v["fullatt_block_indexes"]
    else:
        from random_qwen import SIZES

        if args.size == "small":
            sizes, vocab, fullatt = (
                SIZES["small"]["sizes"],
                SIZES["small"]["vocab"],
                SIZES["small"]["fullatt"],
            )
        else:
            sizes, vocab, fullatt = TinySizes(), None, None
    config = tiny_config(processor.tokenizer, sizes)
    if vocab is not None:
        config.text_config.vocab_size = vocab
    if fullatt is not None:
        config.vision_config.fullatt_block_indexes = fullatt
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[cfg.model.dtype]
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration._from_config(
        config, dtype=dtype, attn_implementation=attn_implementation
    )
    model.generation_config.eos_token_id = [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.eval(), processor


def decode_compare(trainer, samples, repeats: int = 2) -> dict:
    """Seconds of the static engine's rollout of one micro-batch with merged weights and with the adapter's
    terms, alternated ``repeats`` times in this process (prefill included, same prompts and settings)."""
    import torch

    from model.engine.static import StaticEngine

    prompts, images, _ = trainer._encode_prompts(samples)
    engines = {"merged": StaticEngine(merge_lora=True), "adapter": StaticEngine(merge_lora=False)}
    times = {name: [] for name in engines}
    with torch.no_grad():
        for _ in range(repeats):
            for name, engine in engines.items():
                start = time.perf_counter()
                engine.generate(trainer.model, dict(prompts), trainer.sampling_params, images=images)
                times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def full_depth_plans(cfg) -> dict:
    """The plan's per-GPU peak for the paper config at full depth, for both merge_lora choices (bitsandbytes
    assumed importable on the GPU machine, as the paper's 8-bit AdamW needs)."""
    from transformers import Qwen2_5_VLConfig

    from grpo.memory_plan import model_shape, plan_memory, settings_from_config

    shape = model_shape(Qwen2_5_VLConfig.from_dict(published_config()), cfg.model.lora.target_regex)
    paper = replace(cfg, model=replace(cfg.model, dtype="bfloat16", gradient_checkpointing=True))
    base = settings_from_config(paper, shape, "cuda", eight_bit_available=True)
    base = replace(base, new_tokens=512)  # the paper config's max_new_tokens, not the rehearsal's
    return {merge: plan_memory(shape, replace(base, merge_lora=merge)) for merge in (True, False)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.write_config:
        print(write_config(args.write_config) / "config.json")
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("model.engine.static").setLevel(logging.INFO)
    t_start = time.perf_counter()

    import torch

    from grpo.config import load_config
    from grpo.memory_plan import model_shape, plan_memory, settings_from_config
    from grpo.trainer import Trainer

    workdir = Path(args.workdir)
    annotation, tiny = prepare(workdir, args.image_size)
    out_dir = workdir / f"run-{args.size}"
    (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    cfg = load_config(PAPER_CONFIG, overrides_for(args, annotation, tiny, out_dir))
    t = time.perf_counter()
    model, processor = build_model(args, tiny, cfg)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    trainer = Trainer(cfg, policy=(model, processor), overwrite=True)
    setup_s = time.perf_counter() - t
    t = time.perf_counter()
    trainer.train()
    step_wall_s = time.perf_counter() - t
    row = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])
    peak_rss = peak_rss_gb() * 1e9

    # the plan for this process: the model built here, the processor's real image size
    shape = model_shape(model.config, cfg.model.lora.target_regex)
    sample = trainer.samples[0]
    from data.batching import load_images

    grid = processor.image_processor(images=load_images(sample.image_paths[:1]), return_tensors="pt")
    pixels = int(grid["image_grid_thw"][0].prod()) * shape.patch**2
    settings = settings_from_config(cfg, shape, "cpu", image_pixels=pixels)
    cpu_plan = plan_memory(shape, settings)

    figures = {
        "size": args.size, "layers": shape.layers, "vision_blocks": shape.vision_depth, "dtype": cfg.model.dtype,
        "parameters": shape.total_params, "new_tokens": args.new_tokens, "image_pixels": pixels,
        "prompt_tokens_planned": settings.prompt_tokens, "build_s": round(build_s, 2), "setup_s": round(setup_s, 2),
        "step_wall_s": round(step_wall_s, 2), "peak_rss_gb": round(peak_rss / GB, 3),
        "planned_peak_gb": round(cpu_plan.total / GB, 3), "engine_merged": trainer.engine.merged,
    }  # fmt: skip
    for phase in (
        "time/generate",
        "time/reward",
        "time/logprob_ref",
        "time/train",
        "time/optim",
        "step_time_s",
    ):
        figures[phase] = round(row.get(phase, float("nan")), 2)
    if not args.no_decode_compare:
        decode = decode_compare(trainer, trainer.samples[:1])
        figures["decode_merged_s"], figures["decode_adapter_s"] = (
            round(decode["merged"], 3),
            round(decode["adapter"], 3),
        )
    trainer.close()
    full = full_depth_plans(cfg) if args.size == "paper" else {}
    for merge, plan in full.items():
        figures[f"full_depth_per_gpu_gb_merge_{str(merge).lower()}"] = round(plan.total / GB, 2)
    figures["wall_s"] = round(time.perf_counter() - t_start, 1)

    print(
        f"\n{args.size} model: {shape.total_params / 1e9:.3f} B parameters ({shape.layers} decoder layers, "
        f"{shape.vision_depth} vision blocks), {cfg.model.dtype}, LoRA r{cfg.model.lora.rank} on "
        f"{len(shape.lora_targets)} projections; views of {pixels:,} pixels; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"model build {build_s:.1f} s, trainer setup {setup_s:.1f} s, one GRPO step {step_wall_s:.1f} s "
        f"(engine static, merge_lora={cfg.sampling.merge_lora} -> "
        f"{'merged copy' if trainer.engine.merged else 'adapter terms'})"
    )
    for phase in ("time/generate", "time/reward", "time/logprob_ref", "time/train", "time/optim"):
        print(f"  {phase[5:]:<14}{figures[phase]:>9.2f} s")
    if "decode_merged_s" in figures:
        m, a = figures["decode_merged_s"], figures["decode_adapter_s"]
        print(
            f"rollout of 1 prompt x G={cfg.sampling.group_size} x {args.new_tokens} tokens: merged {m:.2f} s, "
            f"adapter terms {a:.2f} s ({(a / m - 1):+.1%})"
        )
    print(cpu_plan.table())
    print(
        f"measured peak RSS {peak_rss / GB:.2f} GB, planned {cpu_plan.total / GB:.2f} GB "
        f"({cpu_plan.total / peak_rss - 1:+.1%})"
    )
    for merge, plan in full.items():
        print(
            f"full depth (28 layers, 32 vision blocks), paper config, per GPU, merge_lora={str(merge).lower()}: "
            f"{plan.total / GB:.2f} GB ({plan.peak_phase} peak)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
    worst = max((plan.total for plan in full.values()), default=float("nan"))
    print(f"paper_scale: planned_peak_gb={cpu_plan.total / GB:.2f} full_depth_per_gpu_gb={worst / GB:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
