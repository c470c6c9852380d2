"""Rule labeler time against report length: seconds per 1,000 words at 1,000, 4,000 and 16,000 words.

    python bench/labeler_length.py [--repeats 3]

Two text shapes: report prose (sentences, short clauses) and one long coordinated list with negation and
hedging cues all through it, the shape whose time once grew quadratically (a cue's reach walked the whole
list). Linear time shows as a flat "s / 1k words" column. The labeler caps its input at
``rewards.rules.MAX_CHARS`` (50,000 characters) in use; the cap is lifted here so that 16,000 words are
really labeled. Each figure is the best of ``--repeats`` runs (the least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rewards import rules  # noqa: E402

SHAPES = {
    "prose": "The heart size is mildly enlarged. There is a small left pleural effusion with adjacent "
    "atelectasis. No pneumothorax is seen. Possible early pneumonia in the right lower lobe cannot be "
    "excluded. An endotracheal tube terminates 4 cm above the carina. ",
    "cue list": "no effusion, pneumothorax, consolidation, edema, possible pneumonia, atelectasis, ",
}
SIZES = (1_000, 4_000, 16_000)


def text_of(shape: str, n_words: int) -> str:
    words = SHAPES[shape].split()
    return " ".join((words * (n_words // len(words) + 1))[:n_words])


def best_seconds(labeler: rules.RuleLabeler, text: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        labeler.label_one(text)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rules.MAX_CHARS = 10**9  # measure the growth, not the cap
    labeler = rules.RuleLabeler()
    print(f"{'shape':<10} {'words':>7} {'chars':>8} {'seconds':>8} {'s / 1k words':>13}")
    for shape in SHAPES:
        for n_words in SIZES:
            text = text_of(shape, n_words)
            seconds = best_seconds(labeler, text, args.repeats)
            print(
                f"{shape:<10} {n_words:>7} {len(text):>8} {seconds:>8.3f} {seconds / (n_words / 1000):>13.4f}"
            )


if __name__ == "__main__":
    main()
