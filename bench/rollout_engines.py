"""Generation alone, both rollout engines on the same model in one process, interleaved (hf, static, hf, ...),
so that a noisy machine slows both alike: milliseconds per new token and the speed-up.

    python bench/rollout_engines.py --size small               # ~40 M parameters, Qwen's 151,936 vocabulary
    python bench/rollout_engines.py --size 7b --device cuda --dtype bfloat16 --batch 4 --new-tokens 128

The policy has a LoRA adapter (rank --lora-rank, random non-zero B so that it matters) as in training;
completions are forced to --new-tokens tokens (EOS suppressed until then). Also printed: how much of the
static engine's time is the sampler (its share of a CPU profile is what the inverse-CDF draw addresses).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_model_arguments, prepare_workdir, sync  # noqa: E402

from data.batching import collate_prompts  # noqa: E402
from grpo.config import DataConfig  # noqa: E402
from model.engine import SamplingParams, make_engine  # noqa: E402
from model.generation import stop_token_ids  # noqa: E402
from model.loading import encode_images, vision_token_ids  # noqa: E402
from model.lora import POLICY, add_policy_adapter  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser, default_size="small")
    parser.add_argument("--batch", type=int, default=2, help="prompts")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5, help="timed calls per engine (after one warm-up each)")
    parser.add_argument("--compile-decode", action="store_true")
    parser.add_argument("--workdir", default="/tmp/mrg-grpo-bench")
    args = parser.parse_args()

    annotation, tiny = prepare_workdir(Path(args.workdir))
    dtype = getattr(torch, args.dtype)
    if args.size == "tiny":
        from model.loading import load_model_and_processor

        model, processor = load_model_and_processor(tiny, device=args.device, dtype=dtype)
    else:
        from random_qwen import build_random_qwen

        model, processor = build_random_qwen(tiny, args.size, device=args.device, dtype=dtype)
    model = add_policy_adapter(model, rank=args.lora_rank, alpha=2 * args.lora_rank, dropout=0.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f".{POLICY}." in name and "lora_B" in name:
                p.normal_(0.0, 0.01)
    model.eval()
    samples = DataConfig(annotation=str(annotation)).load_samples("train")[: args.batch]
    prompts = {k: v.to(args.device) for k, v in collate_prompts(processor, samples).items()}
    pixels = prompts.pop("pixel_values")
    images = encode_images(model, pixels, prompts["image_grid_thw"])
    params = SamplingParams(
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        stop_ids=tuple(stop_token_ids(model, processor.tokenizer)),
        pad_id=processor.tokenizer.pad_token_id,
        suppress_ids=tuple(vision_token_ids(processor)),
        num_samples=args.group_size,
    )
    engines = {name: make_engine(name, compile_decode=args.compile_decode) for name in ("hf", "static")}
    times: dict[str, list[float]] = {name: [] for name in engines}
    for rep in range(args.reps + 1):
        for name, engine in engines.items():
            sync(args.device)
            t = time.perf_counter()
            out = engine.generate(model, prompts, params, images=images)
            sync(args.device)
            if rep > 0:
                times[name].append(time.perf_counter() - t)
            assert out.tokens.shape == (args.batch * args.group_size, args.new_tokens)
    rows = args.batch * args.group_size
    print(
        f"\n{args.size} on {args.device} {args.dtype}: {args.batch} prompts x G={args.group_size}, "
        f"{args.new_tokens} new tokens, LoRA r{args.lora_rank}, median of {args.reps} interleaved calls"
    )
    ms = {name: statistics.median(values) / args.new_tokens * 1e3 for name, values in times.items()}
    for name in engines:
        print(
            f"  {name:<7} {statistics.median(times[name]):8.3f} s per call  {ms[name]:8.2f} ms per new token "
            f"({rows} rows)"
        )
    print(f"speedup_static_over_hf={ms['hf'] / ms['static']:.2f}")


if __name__ == "__main__":
    main()
