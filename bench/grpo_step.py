"""Time GRPO steps of this project's trainer and break them into phases; print peak memory.

    python bench/grpo_step.py --size tiny                        # the tiny offline model, CPU
    python bench/grpo_step.py --size small                       # ~40 M parameters, Qwen's 151,936 vocab
    python bench/grpo_step.py --size 7b --device cuda --dtype bfloat16 --steps 3

A synthetic world and the tiny model folder (for the tokenizer and processor) are made in --workdir.
Random-weight sizes are built from a config (bench/random_qwen.py). Completions are forced to
--new-tokens tokens (EOS suppressed until then), so lengths do not decide the timing.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import prepare_workdir  # noqa: E402

from grpo.config import load_config  # noqa: E402
from grpo.trainer import Trainer  # noqa: E402

PHASES = ("time/generate", "time/reward", "time/logprob_ref", "time/train", "time/optim")


def peak_memory_gb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB -> GB


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=("tiny", "small", "7b"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2, help="studies per step")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--workdir", default="/tmp/mrg-grpo-bench")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    workdir = Path(args.workdir)
    annotation, tiny = prepare_workdir(workdir)
    dtype = getattr(torch, args.dtype)
    policy = None
    if args.size != "tiny":
        from random_qwen import build_random_qwen

        policy = build_random_qwen(tiny, args.size, device=args.device, dtype=dtype)
        if args.gradient_checkpointing:
            policy[0].gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    cfg = load_config(None, [
        f"model.path={tiny}", f"model.dtype={args.dtype}", f"data.annotation={annotation}",
        f"output_dir={workdir / 'run'}", f"device={args.device}", f"max_steps={args.steps + 1}",
        f"sampling.group_size={args.group_size}", f"batch.prompts_per_device={args.batch}",
        f"sampling.max_new_tokens={args.new_tokens}", f"sampling.min_new_tokens={args.new_tokens}",
        f"grpo.beta={args.beta}", f"model.lora.rank={args.lora_rank}", f"model.lora.alpha={2 * args.lora_rank}",
        "model.lora.dropout=0.0", "save_every=100000", "optim.lr=1e-5", *args.overrides,
    ])  # fmt: skip
    (workdir / "run" / "metrics.jsonl").unlink(missing_ok=True)
    t = time.perf_counter()
    trainer = Trainer(cfg, policy=policy)
    setup_s = time.perf_counter() - t
    params = sum(p.numel() for p in trainer.model.parameters())
    trainer.train()
    rows = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()][1:]
    trainer.close()

    step = statistics.median(r["step_time_s"] for r in rows)
    figures = {
        "size": args.size, "device": args.device, "dtype": args.dtype, "parameters": params,
        "group_size": args.group_size, "studies_per_step": args.batch, "new_tokens": args.new_tokens,
        "setup_s": round(setup_s, 2), "median_step_s": round(step, 4),
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in rows), 1),
        "peak_memory_gb": round(peak_memory_gb(args.device), 3),
    }  # fmt: skip
    print(f"\n{args.size} model ({params / 1e6:.1f} M parameters) on {args.device} {args.dtype}: "
          f"G={args.group_size}, {args.batch} studies/step, {args.new_tokens} new tokens")  # fmt: skip
    print(f"{'phase':<18}{'median s':>10}{'share':>8}")
    for phase in PHASES:
        value = statistics.median(r.get(phase, 0.0) for r in rows)
        figures[phase] = round(value, 4)
        print(f"{phase[5:]:<18}{value:>10.4f}{value / step:>8.1%}")
    print(f"{'step':<18}{step:>10.4f}")
    print(
        f"peak memory: {figures['peak_memory_gb']:.2f} GB ({'CUDA allocated' if args.device == 'cuda' else 'process RSS'})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
