"""Does the policy's sampling distribution depend on the image, finding by finding?

GRPO can only select among reports the policy samples. For each of the 14 observations this prints how
often a sampled report (temperature 1 by default) states it as present when the study truly has it,
P(say | present), and when it does not, P(say | absent). A finding whose two rates are equal is one the
policy does not perceive: no reward can teach it to name that finding from the image. A gap is signal
that GRPO can sharpen into the greedy report (docs/demo.md shows the gap before and after GRPO).

    python bench/sample_signal.py --run runs/demo/sft             # the SFT warm start
    python bench/sample_signal.py --run runs/demo                 # after GRPO
    python bench/sample_signal.py --run runs/demo --no-adapter    # the base model

The reports come from evaluate.py's generation (evaluation/generate.py: the run's model, adapter and rollout
engine), one per study and ``--k`` rounds with different seeds; they are labeled by the rule labeler and
compared with the world's true labels (uncertain mentions count as not stated).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.generate import Decoding, generate_split  # noqa: E402
from rewards.format import extract_report  # noqa: E402
from rewards.rules import RuleLabeler  # noqa: E402
from rewards.vocabulary import OBSERVATIONS, POSITIVE  # noqa: E402


def stated_rates(stated: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per observation: the share of reports stating it among studies that have it, and among those that
    do not (NaN where a group is empty). Both arrays ``(N, 14)`` bool."""

    def rate(mask: np.ndarray) -> np.ndarray:
        counts = mask.sum(0)
        return np.where(counts > 0, (stated & mask).sum(0) / np.maximum(counts, 1), np.nan)

    return rate(present), rate(~present)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a training run folder")
    parser.add_argument("--no-adapter", action="store_true", help="the run's base model")
    parser.add_argument("--split", default="val")
    parser.add_argument("--k", type=int, default=4, help="sampled reports per study")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gen-batch-size", type=int, default=40)
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.k):
            torch.manual_seed(args.seed + round_)
            decoding = Decoding(do_sample=True, temperature=args.temperature, batch_size=args.gen_batch_size)
            rows += generate_split(
                args.run,
                args.split,
                Path(scratch) / f"round-{round_}",
                no_adapter=args.no_adapter,
                decoding=decoding,
            )
    if any(row["labels"] is None for row in rows):
        sys.exit(f"{args.run}: the {args.split} split has no true labels (only the synthetic world has them)")
    stated = RuleLabeler().label([extract_report(row["generated"]) for row in rows]) == POSITIVE
    present = np.array([row["labels"] for row in rows]) == POSITIVE
    said_present, said_absent = stated_rates(stated, present)
    which = "base model" if args.no_adapter else str(args.run)
    print(
        f"{which}: {len(rows) // args.k} {args.split} studies x {args.k} samples, temperature {args.temperature}"
    )
    print(
        "| observation | studies with it | P(say | present) | P(say | absent) | gap |\n|---|---|---|---|---|"
    )
    for j, name in enumerate(OBSERVATIONS):
        gap = said_present[j] - said_absent[j]
        print(
            f"| {name} | {present[:, j].sum() // args.k} | {said_present[j]:.2f} | {said_absent[j]:.2f} | {gap:+.2f} |"
        )


if __name__ == "__main__":
    main()
