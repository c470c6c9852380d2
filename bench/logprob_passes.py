"""Time the log-prob passes of a GRPO step with each prompt once (grpo.prompt_once) and with full rows.

    python bench/logprob_passes.py --size tiny                      # the tiny offline model, CPU
    python bench/logprob_passes.py --size small                     # ~40 M parameters, Qwen's 151,936 vocab
    python bench/logprob_passes.py --size 7b --device cuda --dtype bfloat16

One rollout of the trainer (G completions of --batch studies, forced to --new-tokens tokens), then, alternating
the two ways --repeats times in the same process: the policy's pass with its backward (what the update runs)
and the reference pass without gradients. Prints the median seconds of each, their ratio (full rows over
prompt once), the prompt and completion lengths, and the largest log-prob difference between the two ways.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_model_arguments, prepare_workdir, sync  # noqa: E402

from grpo.config import load_config  # noqa: E402
from grpo.trainer import Trainer  # noqa: E402
from model.lora import reference_policy  # noqa: E402


def timed_passes(trainer: Trainer, ro, device: str) -> tuple[float, float, torch.Tensor]:
    """Seconds of the policy's pass + backward, seconds of the reference pass, and the policy's log-probs."""

    for p in trainer.params:
        p.grad = None
    sync(device)
    t = time.perf_counter()
    logp = trainer._rollout_logprobs(trainer.model, ro)
    logp[ro.completion_mask].sum().backward()
    sync(device)
    policy_s = time.perf_counter() - t
    with torch.no_grad(), reference_policy(trainer.model) as reference:
        t = time.perf_counter()
        trainer._rollout_logprobs(reference, ro)
        sync(device)
    return policy_s, time.perf_counter() - t, logp.detach()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4, help="studies in the rollout")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of each way (after a warm-up)")
    parser.add_argument("--workdir", default="/tmp/mrg-grpo-bench")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    annotation, tiny = prepare_workdir(Path(args.workdir))
    policy = None
    if args.size != "tiny":
        from random_qwen import build_random_qwen

        policy = build_random_qwen(tiny, args.size, device=args.device, dtype=getattr(torch, args.dtype))
    cfg = load_config(
        None,
        [
            f"model.path={tiny}",
            f"model.dtype={args.dtype}",
            f"data.annotation={annotation}",
            f"output_dir={Path(args.workdir) / 'passes'}",
            f"device={args.device}",
            "max_steps=1",
            f"sampling.group_size={args.group_size}",
            f"batch.prompts_per_device={args.batch}",
            f"sampling.max_new_tokens={args.new_tokens}",
            f"sampling.min_new_tokens={args.new_tokens}",
            "model.lora.rank=8",
            "model.lora.alpha=16",
            "model.lora.dropout=0.0",
            "save_every=100000",
        ],
    )
    trainer = Trainer(cfg, policy=policy, overwrite=True)
    with torch.no_grad():  # an adapter away from zero, so the policy differs from the reference
        for p in trainer.params:
            p.add_(0.01 * torch.randn_like(p))
    ro = trainer.sample_group(trainer._draw_step()[0])

    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    logps = {}
    for round_ in range(args.repeats + 1):
        for prompt_once in (False, True):
            trainer.prompt_once = prompt_once
            policy_s, reference_s, logps[prompt_once] = timed_passes(trainer, ro, args.device)
            if round_ > 0:  # the first round warms up
                times[prompt_once].append((policy_s, reference_s))
    trainer.close()

    mask = ro.completion_mask
    gap = (logps[True] - logps[False]).float()[mask].abs().max().item()
    rows, prompt_len = mask.shape[0], ro.prompt_len
    print(
        f"\n{args.size} model on {args.device} {args.dtype}: {args.batch} prompts of {prompt_len} tokens "
        f"(padded), G = {args.group_size}, {ro.completion_ids.shape[1]} new tokens, {rows} rows"
    )
    print(f"{'pass':<26}{'full rows s':>12}{'prompt once s':>15}{'ratio':>8}")
    for index, name in enumerate(("policy + backward", "reference (no gradient)")):
        full = statistics.median(t[index] for t in times[False])
        once = statistics.median(t[index] for t in times[True])
        print(f"{name:<26}{full:>12.3f}{once:>15.3f}{full / once:>7.2f}x")
    print(f"largest |log-prob difference| over the completion tokens: {gap:.2e}")


if __name__ == "__main__":
    main()
