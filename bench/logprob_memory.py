"""Peak memory and time of the per-token log-prob pass: full logits vs grpo.logprobs' chunked route.

Both methods compute the log-probs of N*T target tokens from hidden states and an output projection of a
151,936-token vocabulary, then backpropagate a loss to the hidden states and the projection:

- naive:   log_softmax((hidden @ weight.T).float() / temperature).gather(targets)
- chunked: grpo.logprobs.token_logprobs_from_hidden (chunks of --chunk-size tokens, checkpointed)

Each method runs in a fresh subprocess, so one's peak cannot hide the other's. Memory is the peak above
what the inputs already hold: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the growth of the
process's peak resident set (``ru_maxrss``). Prints figures; it passes or fails nothing.

    python bench/logprob_memory.py                      # N=8 T=512 V=151,936 H=64 fp32, CPU: about 1 min
    python bench/logprob_memory.py --device cuda --hidden 3584 --dtype bfloat16 --frozen-weight

With a trained projection the chunked route also holds the projection's gradient twice (each chunk's and
the running sum): 2 * V * H elements, which dominates at H = 3584 in bf16 (2.2 GB).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpo.logprobs import token_logprobs_from_hidden  # noqa: E402

METHODS = ("naive", "chunked")
GB = 1e9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--batch", type=int, default=8, help="N sequences")
    parser.add_argument("--length", type=int, default=512, help="T completion tokens per sequence")
    parser.add_argument(
        "--hidden", type=int, default=64, help="H, the hidden size (memory barely depends on it)"
    )
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--frozen-weight",
        action="store_true",
        help="no gradient for the output projection (LoRA training keeps lm_head frozen)",
    )
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("vocab", "batch", "length", "hidden", "chunk_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def naive_logprobs(hidden, weight, targets, temperature):
    logits = (hidden @ weight.T).float() / temperature
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def run_method(method: str, hidden, weight, targets, args):
    """Forward + backward of a mean negative log-likelihood; returns (loss, grad of hidden, grad of weight)."""
    hidden = hidden.detach().requires_grad_()
    weight = weight.detach().requires_grad_(not args.frozen_weight)
    if method == "naive":
        logp = naive_logprobs(hidden, weight, targets, args.temperature)
    else:
        logp = token_logprobs_from_hidden(hidden, weight, targets, args.temperature, args.chunk_size)
    loss = -logp.mean()
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad


def worker(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.batch, args.length, args.hidden, generator=generator).to(device, dtype)
    weight = (torch.randn(args.vocab, args.hidden, generator=generator) / args.hidden**0.5).to(device, dtype)
    targets = torch.randint(args.vocab, (args.batch, args.length), generator=generator).to(device)

    if device.type == "cuda":
        run_method(args.worker, hidden, weight, targets, args)  # warm-up: kernels, cuBLAS workspace
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        run_method(args.worker, hidden[:1, :8], weight, targets[:1, :8], args)  # small warm-up
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB

    start = time.perf_counter()
    loss, grad_hidden, grad_weight = run_method(args.worker, hidden, weight, targets, args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - baseline
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    result = {
        "peak_bytes": peak,
        "seconds": seconds,
        "loss": loss.item(),
        "grad_hidden_norm": grad_hidden.float().norm().item(),
        "grad_weight_norm": float("nan") if grad_weight is None else grad_weight.float().norm().item(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    print(json.dumps(result))


def measure(method: str, argv: list[str]) -> dict:
    completed = subprocess.run(
        [sys.executable, __file__, *argv, "--worker", method], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise SystemExit(f"bench/logprob_memory.py: the {method} run failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    tokens = args.batch * args.length
    full_logits_gb = tokens * args.vocab * 4 / GB
    chunk_logits_gb = min(args.chunk_size, tokens) * args.vocab * 4 / GB
    print(
        f"log-prob pass, forward + backward: N={args.batch} T={args.length} V={args.vocab:,} H={args.hidden} "
        f"{args.dtype}, temperature {args.temperature}, chunk {args.chunk_size} tokens, device {args.device}, "
        f"gradients to hidden{'' if args.frozen_weight else ' and weight'}"
    )
    print(
        f"one full (N, T, V) fp32 logits tensor: {full_logits_gb:.2f} GB; one chunk's: {chunk_logits_gb:.3f} GB"
    )
    results = {method: measure(method, argv) for method in METHODS}
    print(f"device: {results['naive']['device_name']}")
    print(f"{'method':<10}{'peak extra memory':>20}{'time':>14}")
    for method, result in results.items():
        print(f"{method:<10}{result['peak_bytes'] / GB:>17.3f} GB{result['seconds'] * 1000:>11.1f} ms")
    naive, chunked = results["naive"], results["chunked"]
    print(
        f"naive / chunked: memory {naive['peak_bytes'] / max(chunked['peak_bytes'], 1):.1f}x, "
        f"time {naive['seconds'] / chunked['seconds']:.2f}x"
    )
    same = f"same result: loss {naive['loss']:.6f} vs {chunked['loss']:.6f}; "
    same += f"|grad hidden| {naive['grad_hidden_norm']:.6f} vs {chunked['grad_hidden_norm']:.6f}"
    if not args.frozen_weight:
        same += f"; |grad weight| {naive['grad_weight_norm']:.6f} vs {chunked['grad_weight_norm']:.6f}"
    print(same)


if __name__ == "__main__":
    main()
