"""Time GRPO steps of this project's trainer and break them into phases; print peak memory.

    python bench/grpo_step.py --size tiny                        # the tiny offline model, CPU
    python bench/grpo_step.py --size small                       # ~40 M parameters, Qwen's 151,936 vocab
    python bench/grpo_step.py --size 7b --device cuda --dtype bfloat16 --steps 3
    python bench/grpo_step.py --size small --engine hf             # the reference engine (default: static)

A synthetic world and the tiny model folder (for the tokenizer and processor) are made in --workdir.
Random-weight sizes are built from a config (bench/random_qwen.py). Completions are forced to
--new-tokens tokens (EOS suppressed until then), so lengths do not decide the timing.

"ms per token" is the generate phase over the new tokens (prefill included). On CUDA the bandwidth limit of
a decode step is reading the text model's weights once: their bytes over the GPU's memory bandwidth
(BANDWIDTH_TBS by device name, or --bandwidth-tbs); "share of limit" is that limit over the measured ms.
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

from _common import add_model_arguments, prepare_workdir  # noqa: E402

from grpo.config import load_config  # noqa: E402
from grpo.trainer import Trainer  # noqa: E402

# peak memory bandwidth in TB/s by a substring of torch.cuda.get_device_name() (vendor data sheets)
BANDWIDTH_TBS = {"H200": 4.8, "H100 PCIe": 2.0, "H100": 3.35, "A100-SXM4-80GB": 2.04, "A100 80GB PCIe": 1.94,
                 "A100": 1.56, "L40S": 0.864, "A10G": 0.6}  # fmt: skip
PHASES = ("time/generate", "time/reward", "time/logprob_ref", "time/train", "time/optim")


def peak_memory_gb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB -> GB


def decode_limit_ms(model, bandwidth_tbs: float) -> float:
    """Milliseconds to read the text decoder's weights and the output head once at ``bandwidth_tbs``."""
    from model.loading import unwrap_model

    inner = unwrap_model(model)
    tensors = {id(p): p for p in inner.model.language_model.parameters()}
    tensors[id(inner.lm_head.weight)] = inner.lm_head.weight
    weight_bytes = sum(p.numel() * p.element_size() for p in tensors.values())
    return weight_bytes / (bandwidth_tbs * 1e12) * 1e3


def gpu_bandwidth_tbs() -> float | None:
    name = torch.cuda.get_device_name()
    return next((tbs for key, tbs in BANDWIDTH_TBS.items() if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2, help="studies per step")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--engine", choices=("static", "hf"), help="sampling.engine (default: the config's)")
    parser.add_argument("--compile-decode", action="store_true", help="sampling.compile_decode (CUDA only)")
    parser.add_argument("--bandwidth-tbs", type=float, help="GPU memory bandwidth (default: by device name)")
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
    cfg = load_config(
        None,
        [
            f"model.path={tiny}",
            f"model.dtype={args.dtype}",
            f"data.annotation={annotation}",
            f"output_dir={workdir / 'run'}",
            f"device={args.device}",
            f"max_steps={args.steps + 1}",
            f"sampling.group_size={args.group_size}",
            f"batch.prompts_per_device={args.batch}",
            f"sampling.max_new_tokens={args.new_tokens}",
            f"sampling.min_new_tokens={args.new_tokens}",
            f"grpo.beta={args.beta}",
            f"model.lora.rank={args.lora_rank}",
            f"model.lora.alpha={2 * args.lora_rank}",
            "model.lora.dropout=0.0",
            "save_every=100000",
            "optim.lr=1e-5",
            *([f"sampling.engine={args.engine}"] if args.engine else []),
            *(["sampling.compile_decode=true"] if args.compile_decode else []),
            *args.overrides,
        ],
    )
    (workdir / "run" / "metrics.jsonl").unlink(missing_ok=True)
    t = time.perf_counter()
    trainer = Trainer(cfg, policy=policy)
    setup_s = time.perf_counter() - t
    params = sum(p.numel() for p in trainer.model.parameters())
    bandwidth = args.bandwidth_tbs or (gpu_bandwidth_tbs() if args.device == "cuda" else None)
    limit_ms = decode_limit_ms(trainer.model, bandwidth) if bandwidth else None
    trainer.train()
    rows = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()][1:]
    trainer.close()

    step = statistics.median(r["step_time_s"] for r in rows)
    figures = {
        "size": args.size,
        "engine": cfg.sampling.engine,
        "device": args.device,
        "dtype": args.dtype,
        "parameters": params,
        "group_size": args.group_size,
        "studies_per_step": args.batch,
        "new_tokens": args.new_tokens,
        "setup_s": round(setup_s, 2),
        "median_step_s": round(step, 4),
        "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in rows), 1),
        "peak_memory_gb": round(peak_memory_gb(args.device), 3),
    }
    print(
        f"\n{args.size} model ({params / 1e6:.1f} M parameters) on {args.device} {args.dtype}, "
        f"engine {cfg.sampling.engine}: "
        f"G={args.group_size}, {args.batch} studies/step, {args.new_tokens} new tokens"
    )
    print(f"{'phase':<18}{'median s':>10}{'share':>8}")
    for phase in PHASES:
        value = statistics.median(r.get(phase, 0.0) for r in rows)
        figures[phase] = round(value, 4)
        print(f"{phase[5:]:<18}{value:>10.4f}{value / step:>8.1%}")
    print(f"{'step':<18}{step:>10.4f}")
    ms_per_token = figures["time/generate"] / args.new_tokens * 1e3
    figures["ms_per_token"] = round(ms_per_token, 3)
    line = f"engine {cfg.sampling.engine}: {ms_per_token:.2f} ms per new token ({args.batch * args.group_size} rows)"
    if limit_ms is not None:
        figures["bandwidth_limit_ms"], figures["share_of_limit"] = (
            round(limit_ms, 3),
            round(limit_ms / ms_per_token, 3),
        )
        line += f", bandwidth limit {limit_ms:.2f} ms ({limit_ms / ms_per_token:.0%} of it reached)"
    print(line)
    print(
        f"peak memory: {figures['peak_memory_gb']:.2f} GB ({'CUDA allocated' if args.device == 'cuda' else 'process RSS'})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
