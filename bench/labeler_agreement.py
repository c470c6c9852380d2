"""Agreement of the rule-based labeler with CheXbert labels on real report language, and its speed.

    python bench/labeler_agreement.py --csv ../shared/data/iu_xray/impression_labels.csv [--split all]

The CSV has columns ``id, split, impression`` and then the 14 observations in CheXbert's order, binary
(1 = CheXbert said positive or uncertain). Our codes are made binary the same way
(``rewards.vocabulary.binarize``: positive or uncertain -> 1). Prints, per split group (train+val, test):
per-label precision / recall / F1 / support, micro-F1 over the 14 labels, macro-F1 over the findings
(No Finding excluded) that have >= 10 positives in that group, and reports per second on one core.

The CSV's No Finding is derived ("1 where nothing else fires"), while our No Finding also stays blank for
abnormalities outside the 13 findings (emphysema, hernia ...). A second micro-F1 line therefore derives
No Finding from our 13 findings the CSV's way, so that like is compared with like; both are printed.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards.rules import RuleLabeler  # noqa: E402
from rewards.vocabulary import FINDINGS, NO_FINDING, OBSERVATIONS, binarize  # noqa: E402

SPLIT_GROUPS = {"train": ("train",), "val": ("val",), "test": ("test",), "all": ("train", "val", "test")}
MIN_POSITIVES_FOR_MACRO = 10


def read_labeled_csv(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(splits, impressions, (N, 14) binary labels); a clear error names the file and the problem."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in ("split", "impression", *OBSERVATIONS) if c not in header]
            if missing:
                raise SystemExit(f"error: {path}: missing column(s) {missing}")
            rows = list(reader)
    except OSError as exc:
        raise SystemExit(f"error: cannot read {path}: {exc.strerror or exc}") from None
    labels = np.zeros((len(rows), len(OBSERVATIONS)), dtype=np.int64)
    for i, row in enumerate(rows):
        for j, name in enumerate(OBSERVATIONS):
            value = (row[name] or "0").strip()
            if value not in ("0", "1", "0.0", "1.0"):
                raise SystemExit(f"error: {path}: row {i + 2} column {name!r} has {value!r}, expected 0 or 1")
            labels[i, j] = int(float(value))
    return [r["split"] for r in rows], [r["impression"] or "" for r in rows], labels


def per_label_scores(pred: np.ndarray, gold: np.ndarray) -> list[tuple[float, float, float, int]]:
    """(precision, recall, F1, support) per column; 0/0 counts as 1.0 for P and R when nothing is expected."""
    out = []
    for j in range(gold.shape[1]):
        tp = int(((pred[:, j] == 1) & (gold[:, j] == 1)).sum())
        fp = int(((pred[:, j] == 1) & (gold[:, j] == 0)).sum())
        fn = int(((pred[:, j] == 0) & (gold[:, j] == 1)).sum())
        p = tp / (tp + fp) if tp + fp else 1.0
        r = tp / (tp + fn) if tp + fn else 1.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        out.append((p, r, f, tp + fn))
    return out


def micro_f1(pred: np.ndarray, gold: np.ndarray) -> float:
    tp = int(((pred == 1) & (gold == 1)).sum())
    fp = int(((pred == 1) & (gold == 0)).sum())
    fn = int(((pred == 0) & (gold == 1)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def derived_no_finding(binary: np.ndarray) -> np.ndarray:
    """The CSV's rule: No Finding = 1 where none of the 13 findings is 1."""
    out = binary.copy()
    out[:, NO_FINDING] = (binary[:, :NO_FINDING].sum(axis=1) == 0).astype(np.int64)
    return out


def report(name: str, pred: np.ndarray, gold: np.ndarray, seconds: float) -> None:
    scores = per_label_scores(pred, gold)
    print(f"\n== {name}: {len(gold)} reports ==")
    print(f"{'observation':28s} {'P':>6s} {'R':>6s} {'F1':>6s} {'support':>8s}")
    for obs, (p, r, f, n) in zip(OBSERVATIONS, scores):
        print(f"{obs:28s} {p:6.3f} {r:6.3f} {f:6.3f} {n:8d}")
    macro_labels = [
        obs for obs, s in zip(OBSERVATIONS, scores) if obs in FINDINGS and s[3] >= MIN_POSITIVES_FOR_MACRO
    ]
    macro = float(np.mean([s[2] for obs, s in zip(OBSERVATIONS, scores) if obs in macro_labels]))
    print(f"micro-F1 (14 labels, our No Finding)            {micro_f1(pred, gold):.4f}")
    print(f"micro-F1 (14 labels, No Finding derived as CSV) {micro_f1(derived_no_finding(pred), gold):.4f}")
    print(
        f"micro-F1 (13 findings)                          {micro_f1(pred[:, :NO_FINDING], gold[:, :NO_FINDING]):.4f}"
    )
    print(
        f"macro-F1 over {len(macro_labels)} findings with >= {MIN_POSITIVES_FOR_MACRO} positives  {macro:.4f}"
    )
    print(f"  ({', '.join(macro_labels)})")
    print(
        f"throughput: {len(gold) / seconds:,.0f} reports/s ({seconds * 1e3 / max(len(gold), 1):.3f} ms each)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", required=True, type=Path, help="impression_labels.csv")
    parser.add_argument("--split", default="all", choices=sorted(SPLIT_GROUPS))
    parser.add_argument("--show-errors", type=int, default=0, help="print up to N disagreements per group")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says

    splits, texts, gold = read_labeled_csv(args.csv)
    wanted = set(SPLIT_GROUPS[args.split])
    groups = [("train+val", {"train", "val"} & wanted), ("test", {"test"} & wanted)]
    labeler = RuleLabeler()
    labeler.label(texts[:50])  # warm-up
    for name, members in groups:
        idx = [i for i, s in enumerate(splits) if s in members]
        if not idx:
            continue
        batch = [texts[i] for i in idx]
        start = time.perf_counter()
        codes = labeler.label(batch)
        seconds = time.perf_counter() - start
        pred = binarize(codes)
        report(name, pred, gold[idx], seconds)
        shown = 0
        for k, i in enumerate(idx):
            if shown >= args.show_errors:
                break
            diff = [OBSERVATIONS[j] for j in range(len(OBSERVATIONS)) if pred[k, j] != gold[i, j]]
            if diff:
                shown += 1
                marks = ", ".join(f"{d} ours={pred[k, OBSERVATIONS.index(d)]}" for d in diff)
                print(f"  - {texts[i][:200]!r}: {marks}")


if __name__ == "__main__":
    main()
