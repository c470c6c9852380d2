"""The reward the trainer calls once per GRPO step: named terms, their weights, and the weighted total.

``total = sum_k weight_k * term_k`` per completion (paper: 0.75 MCCS + 0.25 format, section IV.B).
Known terms:

- ``mccs``: eq. (3)-(6) between the labels of the completion's report and of the reference (needs a labeler);
- ``format``: the ``<think>``/``<report>`` structure score of the raw completion (``rewards.format``);
- ``cef1``: report-level CE-F1 between the same two label vectors (needs a labeler);
- ``nlg``: BLEU-4 + ROUGE-L + CIDEr-D of the report against the reference (needs training references).

A term that raises is re-raised as :class:`RewardTermError` naming it (the labeler, shared by ``mccs`` and
``cef1``, is named as such), so a run can stop with one line saying which term failed and why.

Labels are computed from the extracted report (``extract_report``), once per distinct report text per call,
shared by ``mccs`` and ``cef1``. Reference labels are cached by study key and computed only the first time a
key is seen: the reference of a study never changes, so its labels are never recomputed across steps.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rewards.cef1 import ce_f1_reward
from rewards.format import FULL_CREDIT, extract_report, format_reward
from rewards.labeling import make_labeler
from rewards.mccs import DEFAULT_MARGIN, check_margin, mccs_from_codes
from rewards.nlg import NLGReward
from rewards.vocabulary import NUM_OBSERVATIONS, validate_codes

TERM_NAMES = ("mccs", "format", "cef1", "nlg")
LABEL_TERMS = frozenset({"mccs", "cef1"})
PAPER_WEIGHTS: dict[str, float] = {"mccs": 0.75, "format": 0.25}  # the default of config reward.weights

logger = logging.getLogger(__name__)


class RewardTermError(RuntimeError):
    """A reward term raised: ``term`` names it, ``error`` is the original exception."""

    def __init__(self, term: str, error: BaseException):
        self.term, self.error = term, error
        first = (str(error).strip().splitlines() or [""])[0]
        self.description = f"{type(error).__name__}: {first}" if first else type(error).__name__
        super().__init__(f"reward term {term!r} raised {self.description}")


@contextlib.contextmanager
def reward_term(name: str):
    """Name the term whose computation runs inside (an error already naming one passes unchanged)."""
    try:
        yield
    except RewardTermError:
        raise
    except Exception as err:
        raise RewardTermError(name, err) from err


@dataclass
class RewardOutput:
    """Rewards for N completions: the weighted ``total`` and each unweighted term, all ``(N,)`` float32,
    and, when the reward knows it, each completion's full format compliance (``format_ok``, bool)."""

    total: np.ndarray
    terms: dict[str, np.ndarray] = field(default_factory=dict)
    report_texts: list[str] = field(default_factory=list)
    format_ok: np.ndarray | None = None


class RewardCombiner:
    """Weighted sum of named reward terms, with reference labels cached per study key.

    ``weights``: term name -> weight (a zero weight still computes and reports the term, e.g. to log CE-F1
    while training on MCCS). ``labeler``: needed by ``mccs`` and ``cef1``. ``nlg_train_references``: the
    training reports whose n-gram document frequencies CIDEr-D uses, needed by ``nlg``.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        labeler=None,
        margin: float = DEFAULT_MARGIN,
        blank_match: bool = False,
        nlg_train_references: Sequence[str] | None = None,
        uncertain_as: str = "positive",
    ):
        self.weights = _check_weights(weights)
        needs_labels = LABEL_TERMS & set(self.weights)
        if needs_labels and labeler is None:
            raise ValueError(f"reward terms {sorted(needs_labels)} need a labeler, and none was given")
        if needs_labels and not callable(getattr(labeler, "label", None)):
            raise TypeError(f"labeler {labeler!r} has no label(texts) method")
        if uncertain_as not in ("positive", "negative"):
            raise ValueError(f"uncertain_as must be 'positive' or 'negative', got {uncertain_as!r}")
        self.labeler = labeler
        self.margin = check_margin(margin)
        self.blank_match = bool(blank_match)
        self.uncertain_as = uncertain_as
        self.nlg = None
        if "nlg" in self.weights:
            if nlg_train_references is None or len(nlg_train_references) == 0:
                raise ValueError(
                    "reward term 'nlg' needs nlg_train_references (the training reports), none given"
                )
            self.nlg = NLGReward(nlg_train_references)
        self._reference_labels: dict[Hashable, np.ndarray] = {}
        self._reference_fingerprints: dict[Hashable, int] = {}

    def __call__(
        self, completions: Sequence[str], references: Sequence[str], ref_keys: Sequence[Hashable]
    ) -> RewardOutput:
        """Score each completion against the reference of its study (``ref_keys[i]`` identifies the study)."""
        if not (len(completions) == len(references) == len(ref_keys)):
            raise ValueError(
                f"completions, references and ref_keys must have one entry each per completion, got "
                f"{len(completions)}, {len(references)} and {len(ref_keys)}"
            )
        reports = [extract_report(c) for c in completions]
        terms: dict[str, np.ndarray] = {}
        if LABEL_TERMS & set(self.weights):
            pred_codes = self._label_unique(reports)
            ref_codes = self._reference_codes(references, ref_keys)
            if "mccs" in self.weights:
                with reward_term("mccs"):
                    terms["mccs"] = mccs_from_codes(pred_codes, ref_codes, self.margin, self.blank_match)
            if "cef1" in self.weights:
                with reward_term("cef1"):
                    terms["cef1"] = ce_f1_reward(pred_codes, ref_codes, uncertain_as=self.uncertain_as)
        with reward_term("format"):
            format_scores = np.array([format_reward(c) for c in completions], dtype=np.float64)
        if "format" in self.weights:
            terms["format"] = format_scores
        if "nlg" in self.weights:
            with reward_term("nlg"):
                terms["nlg"] = self.nlg(reports, list(references))
        total = np.zeros(len(completions), dtype=np.float64)
        for name, weight in self.weights.items():
            total += weight * terms[name]
        ordered = {name: terms[name].astype(np.float32) for name in self.weights}
        return RewardOutput(
            total=total.astype(np.float32),
            terms=ordered,
            report_texts=reports,
            format_ok=format_scores == FULL_CREDIT,
        )

    def _label(self, texts: list[str]) -> np.ndarray:
        with reward_term("labeler (" + ", ".join(t for t in self.weights if t in LABEL_TERMS) + ")"):
            codes = validate_codes(self.labeler.label(texts))
        if codes.shape[0] != len(texts):
            raise ValueError(f"labeler returned {codes.shape[0]} rows for {len(texts)} texts")
        return codes

    def _label_unique(self, texts: list[str]) -> np.ndarray:
        """Label each distinct text once (identical completions are common within a group)."""
        unique = list(dict.fromkeys(texts))
        if not unique:
            return np.zeros((0, NUM_OBSERVATIONS), dtype=np.int64)
        codes = self._label(unique)
        row_of = {text: row for row, text in enumerate(unique)}
        return codes[[row_of[t] for t in texts]]

    def _reference_codes(self, references: Sequence[str], ref_keys: Sequence[Hashable]) -> np.ndarray:
        """Reference labels from the cache; label (once) only keys seen for the first time."""
        new: dict[Hashable, str] = {}
        for key, text in zip(ref_keys, references):
            if key in self._reference_fingerprints:
                known = self._reference_fingerprints[key]
            elif key in new:
                known = hash(new[key])
            else:
                new[key] = text
                continue
            if known != hash(text):
                raise ValueError(f"study key {key!r} was given two different reference texts")
        if new:
            codes = self._label(list(new.values()))
            for row, (key, text) in enumerate(new.items()):
                self._reference_labels[key] = codes[row]
                self._reference_fingerprints[key] = hash(text)
        if not ref_keys:
            return np.zeros((0, NUM_OBSERVATIONS), dtype=np.int64)
        return np.stack([self._reference_labels[key] for key in ref_keys])


def build_reward(cfg, training_reports: Sequence[str], device: str = "cpu") -> RewardCombiner:
    """The combiner a run's ``reward`` config section describes (``grpo.config.RewardConfig``): the
    labeler is built only when a term needs it, and the training reports only feed ``nlg``'s CIDEr-D."""
    labeler = None
    if LABEL_TERMS & set(cfg.weights):
        labeler = make_labeler(cfg.labeler, cfg.chexbert_path, cfg.chexbert_tokenizer, device=device)
    margin = {} if cfg.margin is None else {"margin": cfg.margin}
    logger.info(
        "reward: %s, labeler %s", " + ".join(f"{w} * {k}" for k, w in cfg.weights.items()), cfg.labeler
    )
    return RewardCombiner(
        cfg.weights,
        labeler=labeler,
        blank_match=cfg.blank_match,
        uncertain_as=cfg.uncertain_as,
        nlg_train_references=list(training_reports) if "nlg" in cfg.weights else None,
        **margin,
    )


def _check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(f"weights must be a non-empty mapping of term name -> weight, got {weights!r}")
    unknown = [name for name in weights if name not in TERM_NAMES]
    if unknown:
        raise ValueError(f"unknown reward term(s) {unknown}; known terms: {', '.join(TERM_NAMES)}")
    checked = {}
    for name, weight in weights.items():
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"weight of reward term {name!r} must be a number, got {weight!r}") from None
        if not np.isfinite(weight):
            raise ValueError(f"weight of reward term {name!r} must be finite, got {weight}")
        checked[name] = weight
    return checked
