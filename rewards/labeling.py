"""Labelers: what one is, building one by name, and labeling many reports under a progress bar.

A *labeler* is any object with ``label(texts: Sequence[str]) -> np.ndarray`` returning an ``(N, 14)``
int array of the codes of ``rewards.vocabulary``, columns in ``OBSERVATIONS`` order. ``make_labeler``
builds ``rules`` (the default, needs no weights) or ``chexbert`` (needs local files; torch is imported
only then).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from tqdm import tqdm

from rewards.rules import RuleLabeler
from rewards.vocabulary import validate_codes

LABELER_NAMES = ("rules", "chexbert")


class Labeler(Protocol):
    def label(self, texts: Sequence[str]) -> np.ndarray:  # (N, 14) int codes
        ...


def make_labeler(
    name: str = "rules",
    chexbert_path: str | os.PathLike | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    batch_size: int = 32,
):
    """Return an object with ``label(texts) -> (N, 14)`` int codes.

    ``rules``: the rule-based CheXpert-style labeler (``rewards.rules.RuleLabeler``); the CheXbert arguments
    are ignored. ``chexbert``: ``rewards.chexbert.CheXbertLabeler``; ``chexbert_path`` (the ``chexbert.pth``
    file) and ``tokenizer_dir`` (a local ``bert-base-uncased`` folder) are required.
    """
    if name == "rules":
        return RuleLabeler()
    if name == "chexbert":
        missing = [
            flag
            for flag, value in (("chexbert_path", chexbert_path), ("tokenizer_dir", tokenizer_dir))
            if not value
        ]
        if missing:
            raise ValueError(
                f"the chexbert labeler needs {' and '.join(missing)}: the chexbert.pth checkpoint and a local "
                "bert-base-uncased tokenizer directory"
            )
        from rewards.chexbert import CheXbertLabeler

        return CheXbertLabeler(chexbert_path, tokenizer_dir, device=device, batch_size=batch_size)
    raise ValueError(f"unknown labeler {name!r}; known labelers: {', '.join(LABELER_NAMES)}")


PROGRESS_MIN_REPORTS = 500  # label at least this many reports and a progress bar shows on stderr
PROGRESS_CHUNK = 512  # reports per labeler call when a bar is shown


def label_with_progress(labeler: Labeler, texts: Sequence[str], desc: str = "label") -> np.ndarray:
    """``labeler.label(texts)``, in chunks under a tqdm bar when there are many reports (same codes)."""
    texts = list(texts)
    if len(texts) < PROGRESS_MIN_REPORTS:
        return validate_codes(labeler.label(texts))
    chunks = []
    with tqdm(total=len(texts), desc=desc, unit="report") as bar:
        for start in range(0, len(texts), PROGRESS_CHUNK):
            chunk = texts[start : start + PROGRESS_CHUNK]
            chunks.append(validate_codes(labeler.label(chunk)))
            bar.update(len(chunk))
    return np.concatenate(chunks)
