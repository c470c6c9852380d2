"""Speed of the rule-based labeler on one core: reports per second on typical impressions, and the time for
one degenerate 300 kB generation (its length is capped, so it must stay well under a second).

    python bench/labeler_speed.py [--repeats 5]

Prints the figures (median of the repeats) next to their targets, and exits with status 1 when a target
is missed: 2,000 short reports/s (500/s is the floor a slow shared machine may show), and 1 s for the
long input. These were wall-clock asserts in tests/test_rules_labeler.py; on a shared CI machine a
timing is not a test of behaviour, so they live here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards.rules import RuleLabeler  # noqa: E402

TYPICAL = [
    "No acute cardiopulmonary abnormality.",
    "Mild cardiomegaly with small bilateral pleural effusions. No pneumothorax.",
    "Left basilar opacity may reflect atelectasis, though pneumonia cannot be excluded.",
    "Heart size and mediastinal contours are within normal limits. Lungs are clear.",
]
LONG = "No pneumothorax. Small left pleural effusion, possibly atelectasis or pneumonia, " * 4000
RATE_FLOOR = 500.0  # reports/s; the target on an idle core is 2,000
LONG_LIMIT_S = 1.0


def seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    labeler = RuleLabeler()
    texts = TYPICAL * 250
    labeler.label(texts[:8])  # warm up the compiled patterns
    rate = statistics.median(len(texts) / seconds(lambda: labeler.label(texts)) for _ in range(args.repeats))
    long_s = statistics.median(seconds(lambda: labeler.label_one(LONG)) for _ in range(args.repeats))
    print(f"typical impressions: {rate:,.0f} reports/s (target 2,000; floor {RATE_FLOOR:,.0f})")
    print(f"one {len(LONG) / 1000:.0f} kB generation: {long_s:.3f} s (limit {LONG_LIMIT_S:.1f} s)")
    missed = rate < RATE_FLOOR or long_s > LONG_LIMIT_S
    if missed:
        print("a target was missed", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
