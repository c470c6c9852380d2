"""Build a labeler by name: ``rules`` (the default, needs no weights) or ``chexbert`` (needs local files)."""

from __future__ import annotations

import os

LABELER_NAMES = ("rules", "chexbert")


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
        from rewards.rules import RuleLabeler

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
