"""The prepared GPU run: GRPO steps of configs/paper_iu_xray.yaml at full 7B depth with random weights (the
published Qwen2.5-VL-7B widths, bench/paper_scale.py; nothing is downloaded), once per rollout variant:

    static-merge    sampling.engine=static, merge_lora=true   (torch.compile decode where it works)
    static-adapter  sampling.engine=static, merge_lora=false  (decode with the adapter's terms, no copy)
    hf              sampling.engine=hf (HF generate; merge_lora does not apply)
    resume          static, merge_lora=auto: one more step resumed from static-merge's checkpoint

flash-attention 2 when ``flash_attn`` imports, bitsandbytes AdamW8bit when it imports (optim.eight_bit=auto).
Each variant runs in a fresh process, so each peak is its own. Per variant it prints seconds per step, ms per
new token at the step's row count against the bandwidth limit (bytes read per decoded token / HBM bandwidth),
and the peak GPU memory (``torch.cuda.max_memory_allocated``) against the memory plan's prediction.

    python bench/gpu_paper.py --out /tmp/gpu-paper          # all variants (bench/gpu_check.sh calls this)
    python bench/gpu_paper.py --dry-run                     # CPU: the configs and the plan, nothing runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GB = 1e9
VARIANTS = {
    "static-merge": ["sampling.engine=static", "sampling.merge_lora=true", "sampling.compile_decode=true"],
    "static-adapter": ["sampling.engine=static", "sampling.merge_lora=false", "sampling.compile_decode=true"],
    "hf": ["sampling.engine=hf"],
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=[*VARIANTS, "resume"], choices=[*VARIANTS, "resume"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128, help="forced completion length")
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--vision-blocks", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--timeout", type=float, default=110.0, help="seconds per variant")
    parser.add_argument("--workdir", default="/tmp/mrg-gpu-paper")
    parser.add_argument("--out", default="/tmp/gpu-paper", help="JSON figures per variant go here")
    parser.add_argument("--dry-run", action="store_true", help="print the configs and the plan; run nothing")
    parser.add_argument(
        "--device", default="cuda", help="cpu: a smoke run of the whole driver (with --size small)"
    )
    parser.add_argument(
        "--size",
        choices=("paper", "small"),
        default="paper",
        help="small: bench/random_qwen.py's small model, fp32, LoRA r8 (CPU smoke run)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.new_tokens < 1:
        parser.error("--steps and --new-tokens must be >= 1")
    return args


def overrides(args, variant: str, annotation: Path, tiny: Path) -> list[str]:
    """The paper config's overrides for one variant (the run folder is shared: resume continues static-merge)."""
    from paper_scale import size_overrides

    run = Path(args.workdir) / "run"
    base = [
        f"model.path={tiny}", f"data.annotation={annotation}", f"output_dir={run}", f"device={args.device}",
        f"sampling.max_new_tokens={args.new_tokens}", f"sampling.min_new_tokens={args.new_tokens}",
        "sample_every=100000", "log.tensorboard='off'",
    ]  # fmt: skip
    base += size_overrides(args.size)
    if variant == "resume":
        return base + [
            f"max_steps={args.steps + 1}",
            f"save_every={args.steps + 1}",
            "sampling.engine=static",
            "sampling.merge_lora=auto",
        ]
    return base + [f"max_steps={args.steps}", f"save_every={args.steps}", *VARIANTS[variant]]


def planned(
    cfg, new_tokens: int, image_pixels: int, layers: int, vision_blocks: int, shape=None, device="cuda"
):
    """The memory plan of this run (default: the full-depth published config on CUDA; bitsandbytes as it
    imports here)."""
    from paper_scale import published_config
    from transformers import Qwen2_5_VLConfig

    from grpo.memory_plan import merge_choice, model_shape, plan_memory, settings_from_config

    if shape is None:
        shape = model_shape(Qwen2_5_VLConfig.from_dict(published_config(layers, vision_blocks)))
    p = settings_from_config(cfg, shape, device, image_pixels=image_pixels)
    if cfg.sampling.merge_lora == "auto":
        p = replace(p, merge_lora=merge_choice(shape, p, None))
    return plan_memory(shape, replace(p, new_tokens=new_tokens))


def worker(args) -> None:
    import torch
    from grpo_step import BANDWIDTH_TBS
    from paper_scale import PAPER_CONFIG, build_model, prepare

    from grpo.config import load_config
    from grpo.trainer import Trainer
    from model.loading import flash_attn_available

    variant = args.worker
    annotation, tiny = prepare(Path(args.workdir), args.image_size)
    cfg = load_config(PAPER_CONFIG, overrides(args, variant, annotation, tiny))
    cuda = args.device == "cuda"
    attn = "flash_attention_2" if cuda and flash_attn_available() else "sdpa"
    shim = argparse.Namespace(size=args.size, layers=args.layers, vision_blocks=args.vision_blocks)
    t = time.perf_counter()
    with torch.device(args.device):
        model, processor = build_model(shim, tiny, cfg, attn_implementation=attn)
    build_s = time.perf_counter() - t
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    resume = variant == "resume"  # one more step (max_steps) with merge_lora=auto: changes the run's config
    trainer = Trainer(
        cfg,
        policy=(model, processor),
        resume=resume,
        overwrite=not resume,
        allow_config_change=("max_steps", "sampling") if resume else (),
    )
    trainer.train()
    engine_merged = getattr(trainer.engine, "merged", None)
    eight_bit = type(trainer.optimizer).__name__
    trainer.close()
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    rows = rows[-(1 if variant == "resume" else args.steps) :]
    last = rows[-1]
    generated = args.new_tokens * cfg.batch.grad_accum  # tokens per row per step (grad_accum rollouts)
    ms_per_token = last["time/generate"] / generated * 1e3
    # bytes read per decoded token: the text decoder and the output head at bf16, plus the adapter's float32
    # A and B when they are not merged, plus the KV cache (read once per token at its full length)
    from grpo.memory_plan import kv_cache_bytes, lora_params

    plan = planned(
        cfg,
        args.new_tokens,
        args.image_size**2,
        args.layers,
        args.vision_blocks,
        shape=None if args.size == "paper" else shape_of(model),
        device=args.device,
    )
    s = plan.settings
    base_text = sum(t.numel() for n, t in model.model.language_model.named_parameters() if "lora_" not in n)
    text_bytes = 2 * (base_text + model.lm_head.weight.numel())
    text_bytes += 0 if engine_merged in (True, None) else 4 * lora_params(shape_of(model), s.lora_rank)
    read = text_bytes + kv_cache_bytes(shape_of(model), s) // 2
    name = torch.cuda.get_device_name() if cuda else "cpu"
    bandwidth = next((v for k, v in BANDWIDTH_TBS.items() if k in name), None)
    limit_ms = read / (bandwidth * 1e12) * 1e3 if bandwidth else None
    figures = {
        "variant": variant, "device": name, "attn": attn, "optimizer": eight_bit,
        "engine": cfg.sampling.engine, "merged": engine_merged, "steps": [r["step"] for r in rows],
        "step_s": [round(r["step_time_s"], 2) for r in rows], "generate_s": round(last["time/generate"], 2),
        "ms_per_token": round(ms_per_token, 2), "rows": cfg.batch.prompts_per_device * cfg.sampling.group_size,
        "bandwidth_limit_ms": round(limit_ms, 2) if limit_ms else None, "peak_allocated_gb": round(peak / GB, 2),
        "planned_allocated_gb": round(plan.allocated_peak / GB, 2), "planned_total_gb": round(plan.total / GB, 2),
        "planned_peak_phase": plan.peak_phase, "build_s": round(build_s, 1),
    }  # fmt: skip
    print(json.dumps(figures))


def shape_of(model):
    from grpo.memory_plan import model_shape

    return model_shape(model.config)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        from paper_scale import PAPER_CONFIG

        from grpo.config import load_config

        for variant in args.variants:
            ov = overrides(args, variant, Path("/data/annotation.json"), Path("/models/tiny"))
            cfg = load_config(PAPER_CONFIG, ov)
            plan = planned(cfg, args.new_tokens, args.image_size**2, args.layers, args.vision_blocks)
            print(f"{variant}: {' '.join(ov[3:])}")
            print(
                f"  plan: {plan.total / GB:.2f} GB per GPU ({plan.peak_phase} peak), "
                f"{plan.allocated_peak / GB:.2f} GB allocated"
            )
        return 0
    env = dict(
        os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error", PYTHONUNBUFFERED="1"
    )
    failed = 0
    for variant in args.variants:
        t = time.perf_counter()
        try:
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    *(argv if argv is not None else sys.argv[1:]),
                    "--worker",
                    variant,
                ],
                capture_output=True,
                text=True,
                timeout=args.timeout,
                env=env,
            )
        except subprocess.TimeoutExpired:
            print(f"== {variant}: timed out after {args.timeout:.0f} s")
            failed += 1
            continue
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            print(f"== {variant}: failed (exit {done.returncode}) after {time.perf_counter() - t:.0f} s")
            print("\n".join(done.stderr.splitlines()[-15:]))
            failed += 1
            continue
        f = json.loads(lines[-1])
        (out / f"{variant}.json").write_text(json.dumps(f, indent=2))
        limit = f["bandwidth_limit_ms"]
        share = f" = {limit / f['ms_per_token']:.0%} of the limit" if limit else ""
        print(
            f"== {variant} ({f['device']}, {f['attn']}, {f['optimizer']}, merged={f['merged']}): steps "
            f"{f['steps']} in {f['step_s']} s; {f['ms_per_token']:.2f} ms per new token at {f['rows']} rows "
            f"(bandwidth limit {limit} ms{share}); peak allocated {f['peak_allocated_gb']:.2f} GB vs plan "
            f"{f['planned_allocated_gb']:.2f} GB ({f['planned_peak_phase']} peak; "
            f"{f['planned_total_gb']:.2f} GB with overhead); wall {time.perf_counter() - t:.0f} s"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
