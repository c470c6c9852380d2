"""Scoring against the true labels, where a dataset has them (the synthetic world's ``labels`` field).

CE normally compares the labeler's reading of a generated report with its reading of the reference report,
so a labeler mistake on either side looks like a model mistake. The synthetic world knows each study's
true findings: scoring the generated report's labels against them removes the reference side's error, and
scoring the reference report's labels against them measures that error (the labeler's own).

One report per study: a study with two views is two samples in training (the paper's setting), but a
study is one unit of evaluation (as R2Gen scores IU X-Ray), so each study is scored once, on the report
generated from its first view (its first sample in annotation order: view 0, the frontal image).

Files: ``truth.csv`` in an evaluation folder holds ``id`` and ``truth:<label>`` x 14 (CheXpert CSV values);
metrics.json gets a ``truth`` section (see :func:`truth_figures`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.ce import ce_metrics
from evaluation.outputs import LABELS_FILE, METRICS_FILE, percent
from rewards.vocabulary import OBSERVATIONS, binarize, codes_to_csv_rows, csv_rows_to_codes, validate_codes

TRUTH_FILE = "truth.csv"


# ------------------------------------------------------------------------------------ one report per study
def first_per_study(study_ids: Sequence[str]) -> list[int]:
    """Indices of the first occurrence of each study id, in order (its first view)."""
    seen: set[str] = set()
    keep = []
    for index, study_id in enumerate(study_ids):
        if study_id not in seen:
            seen.add(study_id)
            keep.append(index)
    return keep


def one_sample_per_study(samples: Sequence) -> list:
    """The first sample (first view) of each study, in order; samples with one image per study pass as is."""
    return [samples[i] for i in first_per_study([s.study_id for s in samples])]


# ------------------------------------------------------------------------------------ truth from annotation
@dataclass(frozen=True)
class TruthEntry:
    study_id: str
    order: int  # position in the annotation file (all splits), to pick a study's first entry
    labels: tuple[int, ...]


def read_truth(annotation_path: str | Path) -> dict[str, TruthEntry]:
    """Entry id -> its study and true labels, over every split of an R2Gen ``annotation.json``."""
    path = Path(annotation_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such annotation file (--truth)")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected an object of splits, got {type(content).__name__}")
    truth: dict[str, TruthEntry] = {}
    for split, entries in content.items():
        for entry in entries if isinstance(entries, list) else []:
            entry_id = str(entry.get("id"))
            if "labels" not in entry:
                raise ValueError(
                    f"{path}: entry {entry_id!r} (split {split!r}) has no 'labels' field, so the file "
                    "holds no true labels (only the synthetic world's annotation does)"
                )
            labels = validate_codes(np.asarray([entry["labels"]]))[0]
            truth[entry_id] = TruthEntry(
                str(entry.get("study_id", entry_id)), len(truth), tuple(labels.tolist())
            )
    if not truth:
        raise ValueError(f"{path}: no entries")
    return truth


def _lookup(
    truth: dict[str, TruthEntry], studies: dict[str, TruthEntry], report_id: str
) -> tuple[TruthEntry, int]:
    """The truth entry of a report id and its view index: ``<entry id>``, ``<study id>`` or ``<entry id>/<view>``."""
    if report_id in truth:
        return truth[report_id], 0
    if report_id in studies:
        return studies[report_id], 0
    entry_id, _, view = report_id.rpartition("/")
    if entry_id in truth and view.isdigit():
        return truth[entry_id], int(view)
    raise KeyError(report_id)


def match_truth(
    ids: Sequence[str], truth: dict[str, TruthEntry], source: str
) -> tuple[list[int], np.ndarray]:
    """For report ids (per image or per study) -> (indices of the one report kept per study, in order of
    first appearance; ``(K, 14)`` true codes of those studies). The kept report is the study's first
    entry in the annotation and, within it, the lowest view index."""
    studies: dict[str, TruthEntry] = {}
    for entry in truth.values():
        studies.setdefault(entry.study_id, entry)
    found, unknown = [], []
    for index, report_id in enumerate(ids):
        try:
            entry, view = _lookup(truth, studies, report_id)
        except KeyError:
            unknown.append(report_id)
            continue
        found.append((entry.study_id, (entry.order, view), index, entry.labels))
    if unknown:
        raise ValueError(
            f"{len(unknown)} id(s) of {source} are not in the truth annotation (e.g. {unknown[:3]}); "
            "ids must be entry ids, study ids or <entry id>/<view>"
        )
    best: dict[str, tuple] = {}
    for item in found:
        if item[0] not in best or item[1] < best[item[0]][1]:
            best[item[0]] = item
    kept = sorted(best.values(), key=lambda item: item[2])
    return [item[2] for item in kept], np.array([item[3] for item in kept], dtype=np.int64).reshape(-1, 14)


# ---------------------------------------------------------------------------------------------- figures
def truth_figures(
    truth_codes: np.ndarray,
    reference_codes: np.ndarray,
    predicted_codes: np.ndarray,
    uncertain_as: str = "negative",
    zero_division: float = 0,
) -> dict:
    """metrics.json's ``truth`` section: ``ce`` and ``per_label`` of the predictions against the true labels
    (same layout as the top-level ``ce`` / ``per_label``, which are against the reference reports), and
    ``references_ce``: the reference reports' labels against the truth (the labeler's own error)."""
    truth_codes = validate_codes(truth_codes)
    if truth_codes.shape != np.shape(predicted_codes):
        raise ValueError(f"{truth_codes.shape[0]} true label rows for {np.shape(predicted_codes)[0]} reports")
    model = ce_metrics(truth_codes, predicted_codes, uncertain_as, zero_division)
    references = ce_metrics(truth_codes, reference_codes, uncertain_as, zero_division)
    return {
        "ce": {"14": model["14"], "5": model["5"]},
        "per_label": model["per_label"],
        "references_ce": {"14": references["14"], "5": references["5"]},
    }


def truth_markdown(metrics: dict) -> str:
    """The two ways of scoring side by side (micro / macro P R F1 over 14, micro over 5), in %."""
    truth = metrics["truth"]
    rows = [
        ("generated vs **true labels**", truth["ce"]),
        ("generated vs reference-report labels", metrics["ce"]),
        ("reference-report labels vs true labels (labeler error)", truth["references_ce"]),
    ]
    head = "| Scored | 14 micro P | 14 micro R | 14 micro F1 | 14 macro P | 14 macro R | 14 macro F1 | 5 micro F1 |"
    lines = [
        f"CE against the true labels and against the labeled reference reports ({metrics['n_reports']} "
        f"studies, one report each; labeler `{metrics.get('labeler', '?')}`; uncertain counted as "
        f"{metrics.get('uncertain_as', '?')}), in %.",
        "",
        head,
        "|---|" + "---|" * 7,
    ]
    for name, ce in rows:
        cells = [ce["14"]["micro"][k] for k in ("precision", "recall", "f1")]
        cells += [ce["14"]["macro"][k] for k in ("precision", "recall", "f1")]
        cells.append(ce["5"]["micro"]["f1"])
        lines.append(f"| {name} | " + " | ".join(percent(v) for v in cells) + " |")
    return "\n".join(lines) + "\n"


def per_label_truth_markdown(metrics: dict) -> str:
    """Per-observation F1 against the truth and against the references, with true support."""
    truth, reference = metrics["truth"]["per_label"], metrics["per_label"]
    lines = [
        "| Observation | F1 vs truth | F1 vs reference | True positives | Predicted |",
        "|---|---|---|---|---|",
    ]
    for label in OBSERVATIONS:
        t = truth[label]
        lines.append(
            f"| {label} | {percent(t['f1'])} | {percent(reference[label]['f1'])} | {t['support']} | {t['predicted']} |"
        )
    return "\n".join(lines) + "\n"


def append_truth_summary(metrics: dict, out_dir: Path) -> None:
    """Add the truth-based sections to summary.md (written by evaluation.outputs)."""
    path = Path(out_dir) / "summary.md"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    text += "\n## Against the true labels\n\n" + truth_markdown(metrics)
    text += "\n### Per label (%)\n\n" + per_label_truth_markdown(metrics)
    path.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------------------------------ files
def write_truth_csv(ids: Sequence[str], truth_codes: np.ndarray, out_dir: Path) -> Path:
    rows = codes_to_csv_rows(truth_codes)
    if len(rows) != len(ids):
        raise ValueError(f"{TRUTH_FILE}: {len(ids)} ids but {len(rows)} label rows")
    path = Path(out_dir) / TRUTH_FILE
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", *(f"truth:{o}" for o in OBSERVATIONS)])
        for id_, row in zip(ids, rows):
            writer.writerow([id_, *("" if v is None else v for v in row)])
    return path


def _read_label_csv(path: Path, prefixes: Sequence[str]) -> tuple[list[str], list[np.ndarray]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        wanted = [f"{p}:{o}" for p in prefixes for o in OBSERVATIONS]
        missing = [c for c in ["id", *wanted] if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing[:3]}")
        rows = list(reader)
    ids = [row["id"] for row in rows]
    return ids, [
        csv_rows_to_codes([[row[f"{p}:{o}"] for o in OBSERVATIONS] for row in rows]) for p in prefixes
    ]


@dataclass(frozen=True)
class ScoredLabels:
    """An evaluation folder's per-study labels, binarized by its uncertain policy: ``target`` is the truth
    when the folder has truth.csv, else the reference reports' labels (``against`` says which)."""

    folder: Path
    method: str
    ids: list[str]
    target: np.ndarray
    predicted: np.ndarray
    against: str  # "truth" | "reference"
    uncertain_as: str


def read_scored_labels(folder: str | Path, against: str = "auto") -> ScoredLabels:
    """Load labels.csv (+ truth.csv) of an evaluation folder. ``against``: "auto" (truth when there),
    "truth" or "reference"."""
    folder = Path(folder)
    metrics_path, labels_path = folder / METRICS_FILE, folder / LABELS_FILE
    for path in (metrics_path, labels_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder}: no {path.name} (is it an evaluation folder written by evaluate.py?)"
            )
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    uncertain_as = metrics.get("uncertain_as", "negative")
    ids, (reference, predicted) = _read_label_csv(labels_path, ("ref", "pred"))
    truth_path = folder / TRUTH_FILE
    if against == "truth" and not truth_path.is_file():
        raise FileNotFoundError(f"{folder}: no {TRUTH_FILE}; it was scored without true labels")
    target, used = reference, "reference"
    if against in ("auto", "truth") and truth_path.is_file():
        truth_ids, (target,) = _read_label_csv(truth_path, ("truth",))
        if truth_ids != ids:
            raise ValueError(f"{folder}: the ids of {TRUTH_FILE} and {LABELS_FILE} differ")
        used = "truth"
    return ScoredLabels(
        folder,
        metrics.get("method") or folder.name,
        ids,
        binarize(target, uncertain_as),
        binarize(predicted, uncertain_as),
        used,
        uncertain_as,
    )
