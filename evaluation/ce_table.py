"""The CE figures report-generation papers compare on, and the paper's Table I as a view of eval folders.

Recent papers give three CE F1 figures: micro-F1 and macro-F1 over the 14 CheXbert observations and
micro-F1 over the 5-label subset (CE5). They disagree on uncertain labels: R2Gen's ``compute_ce.py``
counts them as absent, others as present. ``field_figures`` computes the three under both conventions, and
every record carries the labeler and the convention, so a figure is never shown without them.

``paper_table_markdown`` lays evaluation folders out in the exact columns of MRG-R1's Table I: Method, then
Precision / Recall / F1 for IU X-Ray, then for MIMIC-CXR; a method scored on both datasets fills one row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evaluation.ce import UNCERTAIN_POLICIES, ce_metrics
from evaluation.outputs import CONVENTION_NOTES, load_metrics, marked, percent, rank_marks

# (labels, average) of the figures papers report, with the name used in metrics.json
FIELD_FIGURES: tuple[tuple[str, str, str], ...] = (
    ("micro_f1_14", "14", "micro"),
    ("macro_f1_14", "14", "macro"),
    ("micro_f1_5", "5", "micro"),
)
# Table I's column groups, in the paper's order: metrics.json "dataset" value -> the paper's heading
TABLE_I_DATASETS: tuple[tuple[str, str], ...] = (("iu_xray", "IU X-Ray"), ("mimic_cxr", "MIMIC-CXR"))


def field_figures(
    reference_codes: np.ndarray, predicted_codes: np.ndarray, labeler: str, zero_division: float = 0
) -> dict:
    """Every CE average under both uncertain conventions, and the three field F1 figures as records.

    Returns ``{"by_convention": {"negative" | "positive": ce_metrics(...)["14" and "5"]},
    "figures": [{"figure", "labels", "average", "f1", "precision", "recall", "labeler", "uncertain_as"}]}``.
    """
    by_convention = {}
    for convention in UNCERTAIN_POLICIES:
        ce = ce_metrics(reference_codes, predicted_codes, convention, zero_division)
        by_convention[convention] = {"14": ce["14"], "5": ce["5"]}
    figures = [
        {
            "figure": name,
            "labels": labels,
            "average": average,
            **by_convention[convention][labels][average],
            "labeler": labeler,
            "uncertain_as": convention,
        }
        for convention in UNCERTAIN_POLICIES
        for name, labels, average in FIELD_FIGURES
    ]
    return {"by_convention": by_convention, "figures": figures}


def _figures_for(metrics: dict, uncertain_as: str, average: str, where: str) -> dict:
    """``ce["14"][average]`` under the asked convention: from ``ce_field`` when the folder has both, else
    from ``ce`` when that was scored under it."""
    by_convention = metrics.get("ce_field", {}).get("by_convention", {})
    if uncertain_as in by_convention:
        return by_convention[uncertain_as]["14"][average]
    if metrics.get("uncertain_as") == uncertain_as:
        return metrics["ce"]["14"][average]
    raise ValueError(
        f"{where}: scored with uncertain as {metrics.get('uncertain_as')} only; "
        f"rescore it or use --uncertain-as {metrics.get('uncertain_as')}"
    )


def paper_table_markdown(
    folders: Sequence[str | Path], average: str = "macro", uncertain_as: str = "negative"
) -> str:
    """Table I of the paper from evaluation folders: one row per method, IU X-Ray then MIMIC-CXR columns.

    A folder's column group is its metrics.json ``dataset`` (``--dataset iu_xray | mimic_cxr`` when it was
    scored); its row is its ``method``. Best values are bold and second best underlined, as in the paper.
    """
    if not folders:
        raise ValueError("--paper-table needs at least one evaluation folder")
    known = dict(TABLE_I_DATASETS)
    entries: dict[str, dict[str, dict]] = {}  # method -> dataset -> figures
    labelers = set()
    for folder in folders:
        metrics = load_metrics(folder)
        dataset, method = metrics.get("dataset") or "", metrics.get("method") or Path(folder).name
        if dataset not in known:
            raise ValueError(
                f"{folder}: dataset {dataset!r} is not a column of Table I; score it with "
                f"--dataset {' or --dataset '.join(known)}"
            )
        if dataset in entries.get(method, {}):
            raise ValueError(f"{folder}: a second {known[dataset]} evaluation of method {method!r}")
        entries.setdefault(method, {})[dataset] = _figures_for(metrics, uncertain_as, average, str(folder))
        labelers.add(metrics.get("labeler", "?"))
    columns = [(d, field) for d, _ in TABLE_I_DATASETS for field in ("precision", "recall", "f1")]
    cells = [
        [by_dataset[d][field] if d in by_dataset else None for d, field in columns]
        for by_dataset in entries.values()
    ]
    marks = [
        rank_marks([row[j] for row in cells]) if len(cells) > 1 else [""] * len(cells)
        for j in range(len(columns))
    ]
    header = [
        "Method",
        *(f"{known[d]} {field.capitalize() if field != 'f1' else 'F1'}" for d, field in columns),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, (method, row) in enumerate(zip(entries, cells)):
        shown = [marked(percent(v), marks[j][i]) for j, v in enumerate(row)]
        lines.append("| " + " | ".join([method.replace("|", "/"), *shown]) + " |")
    table = "\n".join(lines) + "\n"
    caption = (
        f"Table I layout: CE {average} precision / recall / F1 (%) over the 14 observations; labeler "
        f"{', '.join(f'`{name}`' for name in sorted(labelers))}; {CONVENTION_NOTES[uncertain_as]}."
    )
    if len(labelers) > 1:
        caption += " Warning: the rows come from different labelers and are not comparable."
    return caption + "\n\n" + table
