"""Natural-language-generation metrics and the NLG reward (the "+NLG" row of the paper's Table II).

Built on pycocoevalcap, the coco-caption scorers that R2Gen and most report-generation papers use
(``pip install -e .[nlg]``; imported lazily). Both sides are normalized the same way first
(``normalize_report``): lower case, sentence periods as separate tokens, other punctuation dropped.

- ``nlg_metrics(references, predictions)``: corpus-level BLEU-1..4, ROUGE-L and CIDEr (document
  frequencies from the evaluated references, as coco-caption computes them), plus METEOR when java can
  run it. Used by the evaluator.
- ``NLGReward(train_references)``: a per-report reward ``BLEU-4 + ROUGE-L + CIDEr-D``. pycocoevalcap's CIDEr
  is CIDEr-D (clipped n-gram counts, Gaussian length penalty, sigma 6, scores x10); here its document
  frequencies come from the training references, counted once at construction, so a report's score does
  not depend on which other reports share its batch. BLEU-4 is pycocoevalcap's smoothed sentence BLEU.
  The terms are summed unscaled (CIDEr-D ranges over [0, 10], the others over [0, 1]).
"""

from __future__ import annotations

import functools
import math
import re
import shutil
import warnings
from collections.abc import Sequence

import numpy as np

NLG_EXTRA_HINT = "the NLG metrics need pycocoevalcap: install it with `pip install -e .[nlg]`"
CIDER_NGRAM_ORDER = 4
CIDER_SIGMA = 6.0

_PERIOD_NOT_DECIMAL = re.compile(r"(?<!\d)\.|\.(?!\d)")
_OTHER_PUNCTUATION = re.compile(r"[^\w\s.]")
_WHITESPACE = re.compile(r"\s+")


def normalize_report(text: str) -> str:
    """Lower-case, split off sentence periods (not decimal points), drop other punctuation, one space."""
    text = _PERIOD_NOT_DECIMAL.sub(" . ", text.lower())
    text = _OTHER_PUNCTUATION.sub(" ", text)
    return _WHITESPACE.sub(" ", text).strip()


def _pycocoevalcap():
    """Import the pycocoevalcap scorers, or raise ImportError naming the extra to install."""
    try:
        from pycocoevalcap.bleu.bleu_scorer import BleuScorer
        from pycocoevalcap.cider.cider_scorer import CiderScorer, precook
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as error:
        raise ImportError(NLG_EXTRA_HINT) from error
    return BleuScorer, CiderScorer, precook, Rouge


def _check_pairs(references: Sequence[str], predictions: Sequence[str]) -> None:
    if len(references) != len(predictions):
        raise ValueError(f"got {len(references)} references but {len(predictions)} predictions")
    for name, texts in (("references", references), ("predictions", predictions)):
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"{name}[{bad}] is {type(texts[bad]).__name__}, expected str")


def _meteor_score(gts: dict, res: dict, meteor: bool | str) -> float | None:
    """Corpus METEOR via pycocoevalcap's java scorer; None when skipped ('auto' and java missing/failing)."""
    if meteor is False:
        return None
    if meteor not in (True, "auto"):
        raise ValueError(f"meteor must be True, False or 'auto', got {meteor!r}")
    if shutil.which("java") is None:
        if meteor is True:
            raise RuntimeError("METEOR needs java on PATH, and none was found")
        return None
    try:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()  # starts a java subprocess; its __del__ stops it
        return float(scorer.compute_score(gts, res)[0])
    except Exception as error:  # java or the jar failing is not fatal in 'auto' mode
        if meteor is True:
            raise RuntimeError(f"METEOR failed: {error}") from error
        warnings.warn(f"METEOR skipped: {error}", stacklevel=3)
        return None


def nlg_metrics(
    references: Sequence[str], predictions: Sequence[str], meteor: bool | str = "auto"
) -> dict[str, float]:
    """Corpus-level BLEU_1..BLEU_4, ROUGE_L, CIDEr (and METEOR) between paired reports.

    ``meteor``: 'auto' adds METEOR when java runs it (a few seconds to start), True requires it, False
    skips it. Keys follow coco-caption's names.
    """
    _check_pairs(references, predictions)
    if not references:
        raise ValueError("nlg_metrics needs at least one reference/prediction pair")
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as error:
        raise ImportError(NLG_EXTRA_HINT) from error
    gts = {i: [normalize_report(r)] for i, r in enumerate(references)}
    res = {i: [normalize_report(p)] for i, p in enumerate(predictions)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    metrics = {f"BLEU_{n + 1}": float(score) for n, score in enumerate(bleu)}
    metrics["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    metrics["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    meteor_value = _meteor_score(gts, res, meteor)
    if meteor_value is not None:
        metrics["METEOR"] = meteor_value
    return metrics


class _FrozenFrequencies(dict):
    """Document frequencies that read 0 for unseen n-grams without storing them (no growth over training)."""

    def __missing__(self, key):
        return 0.0


def _document_frequencies(train_references: Sequence[str]) -> _FrozenFrequencies:
    _, _, precook, _ = _pycocoevalcap()
    counts: dict[tuple[str, ...], float] = {}
    for text in train_references:
        for ngram in precook(normalize_report(text), CIDER_NGRAM_ORDER):
            counts[ngram] = counts.get(ngram, 0.0) + 1.0
    return _FrozenFrequencies(counts)


@functools.cache
def _corpus_cider_scorer_class():
    """pycocoevalcap's CiderScorer (CIDEr-D) with the idf corpus fixed from outside.

    Its ``compute_cider`` assigns ``ref_len = log(number of scored pairs)``, the idf corpus size; the
    property below ignores that write and reads the training corpus size instead.
    """
    _, CiderScorer, _, _ = _pycocoevalcap()

    class CorpusCiderScorer(CiderScorer):
        fixed_log_num_documents: float | None = None
        ref_len = property(lambda self: self.fixed_log_num_documents, lambda self, _value: None)

    return CorpusCiderScorer


class NLGReward:
    """Per-report ``BLEU-4 + ROUGE-L + CIDEr-D`` with CIDEr-D document frequencies from training references.

    ``train_references``: one reference report per training study (duplicates count as more documents).
    """

    def __init__(self, train_references: Sequence[str]):
        if isinstance(train_references, str) or len(train_references) == 0:
            raise ValueError("NLGReward needs a non-empty sequence of training reference reports")
        _check_pairs(train_references, train_references)
        BleuScorer, _, _, Rouge = _pycocoevalcap()
        self._bleu_scorer_class = BleuScorer
        self._rouge = Rouge()
        self.document_frequency = _document_frequencies(train_references)
        self.log_num_documents = math.log(len(train_references))

    def components(self, predictions: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
        """Per-report ``BLEU_4``, ``ROUGE_L`` and ``CIDEr_D`` arrays, each ``(N,)`` float64."""
        _check_pairs(references, predictions)
        if not predictions:
            empty = np.zeros(0)
            return {"BLEU_4": empty, "ROUGE_L": empty.copy(), "CIDEr_D": empty.copy()}
        preds = [normalize_report(p) for p in predictions]
        refs = [normalize_report(r) for r in references]

        bleu = self._bleu_scorer_class(n=4)
        cider = _corpus_cider_scorer_class()(n=CIDER_NGRAM_ORDER, sigma=CIDER_SIGMA)
        cider.document_frequency = self.document_frequency
        cider.fixed_log_num_documents = self.log_num_documents
        for pred, ref in zip(preds, refs):
            bleu += (pred, [ref])
            cider += (pred, [ref])
        _, bleu_per_report = bleu.compute_score(option="closest", verbose=0)
        rouge = [self._rouge.calc_score([pred], [ref]) for pred, ref in zip(preds, refs)]
        return {
            "BLEU_4": np.asarray(bleu_per_report[3], dtype=np.float64),
            "ROUGE_L": np.asarray(rouge, dtype=np.float64),
            "CIDEr_D": np.asarray(cider.compute_cider(), dtype=np.float64),
        }

    def __call__(self, predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
        """``(N,)`` float64: BLEU-4 + ROUGE-L + CIDEr-D for each prediction against its reference."""
        parts = self.components(predictions, references)
        return parts["BLEU_4"] + parts["ROUGE_L"] + parts["CIDEr_D"]
