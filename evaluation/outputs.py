"""Files an evaluation folder holds, and the paper-style tables built from them.

``DIR/metrics.json``  every figure plus the settings used (the layout is documented in ``evaluation``).
``DIR/labels.csv``    ``id``, ``ref:<label>`` x 14, ``pred:<label>`` x 14 in the CheXpert CSV convention
                      (1 positive, 0 negative, -1 uncertain, empty blank), readable by R2Gen-style CE scripts.
``DIR/reports.csv``   ``id, reference, prediction, generated`` (generated = the full model output, or empty).
``DIR/summary.md``    the Table I-style row for this model, then every average, per-label and polarity figures.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.field_metrics import extra_metrics_markdown
from rewards.vocabulary import OBSERVATIONS, codes_to_csv_rows

METRICS_FILE = "metrics.json"
LABELS_FILE = "labels.csv"
REPORTS_FILE = "reports.csv"
SUMMARY_FILE = "summary.md"

# The paper's column-group names for the datasets it reports on; other names are shown as given.
DATASET_DISPLAY_NAMES = {"iu_xray": "IU X-Ray", "mimic_cxr": "MIMIC-CXR", "synthetic": "Synthetic CXR"}
# How each uncertain-label convention is named under a CE figure (evaluation.ce_table computes both)
CONVENTION_NOTES = {
    "negative": "uncertain counted as negative (R2Gen's compute_ce.py)",
    "positive": "uncertain counted as positive",
}


# ----------------------------------------------------------------------------------------------- writers
def write_metrics_json(metrics: dict, out_dir: Path) -> Path:
    path = Path(out_dir) / METRICS_FILE
    path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return path


def labels_csv_header() -> list[str]:
    return ["id", *(f"ref:{o}" for o in OBSERVATIONS), *(f"pred:{o}" for o in OBSERVATIONS)]


def write_labels_csv(
    ids: Sequence[str], reference_codes: np.ndarray, predicted_codes: np.ndarray, out_dir: Path
) -> Path:
    """One row per id: reference then prediction labels, CheXpert CSV values (blank = empty cell)."""
    ref_rows, pred_rows = codes_to_csv_rows(reference_codes), codes_to_csv_rows(predicted_codes)
    if not (len(ids) == len(ref_rows) == len(pred_rows)):
        raise ValueError(f"labels.csv: {len(ids)} ids but {len(ref_rows)} / {len(pred_rows)} label rows")
    path = Path(out_dir) / LABELS_FILE
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(labels_csv_header())
        for id_, ref, pred in zip(ids, ref_rows, pred_rows):
            writer.writerow([id_, *("" if v is None else v for v in (*ref, *pred))])
    return path


def write_reports_csv(
    ids: Sequence[str],
    references: Sequence[str],
    predictions: Sequence[str],
    generated_texts: Sequence[str] | None,
    out_dir: Path,
) -> Path:
    path = Path(out_dir) / REPORTS_FILE
    generated = generated_texts if generated_texts is not None else [""] * len(ids)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "reference", "prediction", "generated"])
        writer.writerows(zip(ids, references, predictions, generated))
    return path


# ----------------------------------------------------------------------------------------- table layout
def percent(value: float | None) -> str:
    return "—" if value is None else f"{100.0 * value:.2f}"


def dataset_display_name(dataset: str | None) -> str:
    return DATASET_DISPLAY_NAMES.get(dataset or "", dataset or "")


@dataclass(frozen=True)
class TableRow:
    """One method's CE precision / recall / F1 (fractions) on one dataset."""

    method: str
    dataset: str
    precision: float
    recall: float
    f1: float


def rank_marks(values: list[float | None]) -> list[str]:
    """'best' / 'second' / '' per value, as the paper marks columns (ties share a mark)."""
    distinct = sorted({round(v, 6) for v in values if v is not None}, reverse=True)
    if len(distinct) < 2:
        return [""] * len(values)
    best, second = distinct[0], distinct[1]
    return [
        "" if v is None else "best" if round(v, 6) == best else "second" if round(v, 6) == second else ""
        for v in values
    ]


def marked(text: str, rank: str) -> str:
    """``text`` bold when ``rank`` is 'best', underlined when 'second' (a mark of ``rank_marks``)."""
    return f"**{text}**" if rank == "best" else f"<u>{text}</u>" if rank == "second" else text


def paper_table(rows: Sequence[TableRow], mark_best: bool = False) -> str:
    """A Markdown table in the layout of the paper's Tables I / II.

    One row per entry, one Precision / Recall / F1 column group per dataset (in order of first appearance),
    "—" where a row has no figure for a dataset, figures in %. With ``mark_best`` the best value of each
    column is bold and the second best underlined, as in the paper.
    """
    if not rows:
        raise ValueError("a table needs at least one row")
    datasets = list(dict.fromkeys(r.dataset for r in rows))
    header = ["Method"]
    for d in datasets:
        prefix = f"{dataset_display_name(d)} " if d else ""
        header += [f"{prefix}Precision", f"{prefix}Recall", f"{prefix}F1"]
    cells: list[list[float | None]] = []
    for r in rows:
        line: list[float | None] = []
        for d in datasets:
            line += [r.precision, r.recall, r.f1] if r.dataset == d else [None, None, None]
        cells.append(line)
    marks_by_column = [
        rank_marks([c[j] for c in cells]) if mark_best else [""] * len(rows) for j in range(len(header) - 1)
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, (r, line) in enumerate(zip(rows, cells)):
        shown = [marked(percent(v), marks_by_column[j][i]) for j, v in enumerate(line)]
        lines.append("| " + " | ".join([r.method.replace("|", "/"), *shown]) + " |")
    return "\n".join(lines) + "\n"


def table_row(
    metrics: dict, average: str = "macro", subset: str = "14", method: str | None = None
) -> TableRow:
    """The Table I row of one metrics.json dict: ``ce[subset][average]`` P / R / F1."""
    try:
        figures = metrics["ce"][subset][average]
    except KeyError:
        raise ValueError(f"metrics have no ce[{subset!r}][{average!r}] figures") from None
    return TableRow(
        method=method or metrics.get("method") or "model",
        dataset=metrics.get("dataset") or "",
        precision=figures["precision"],
        recall=figures["recall"],
        f1=figures["f1"],
    )


def ce_caption(metrics: dict, average: str, subset: str) -> str:
    labels = "the 14 observations" if subset == "14" else "the 5-label subset"
    return (
        f"CE against the reference reports ({average} average over {labels}; "
        f"labeler `{metrics.get('labeler', '?')}`; uncertain counted as {metrics.get('uncertain_as', '?')}), in %."
    )


# --------------------------------------------------------------------------------------------- summary
_POLARITY_COLUMNS = (
    ("agree", "agree"),
    ("reversal_pos_to_neg", "pos→neg"),
    ("reversal_neg_to_pos", "neg→pos"),
    ("uncertainty_mismatch", "uncertain mismatch"),
    ("omission", "omitted"),
    ("omitted_positive", "omitted positive"),
    ("unsupported", "unsupported"),
    ("unsupported_positive", "unsupported positive"),
)


def headline_markdown(metrics: dict, table_average: str = "macro") -> str:
    """The caption and one-row Table I-style table of an evaluation (14 observations)."""
    return (
        ce_caption(metrics, table_average, "14")
        + "\n\n"
        + paper_table([table_row(metrics, table_average, "14")])
    )


def field_figures_markdown(field: dict) -> str:
    """The field's CE figures as a table whose every row names its labeler and convention."""
    lines = [
        "| Figure | F1 (%) | Precision (%) | Recall (%) | Labeler | Uncertain labels |",
        "|---|---|---|---|---|---|",
    ]
    for f in field["figures"]:
        what = f"CE {f['average']}-F1, {'14 observations' if f['labels'] == '14' else '5 observations (CE5)'}"
        lines.append(
            f"| {what} | {percent(f['f1'])} | {percent(f['precision'])} | {percent(f['recall'])} "
            f"| `{f['labeler']}` | {CONVENTION_NOTES[f['uncertain_as']]} |"
        )
    return "\n".join(lines) + "\n"


def summary_markdown(metrics: dict, table_average: str = "macro") -> str:
    """summary.md: the Table I row first, then the figures behind it."""
    settings = metrics.get("settings", {})
    title = metrics.get("method") or "model"
    out = [f"# CE evaluation: {title}", ""]
    out.append(
        f"{metrics['n_reports']} reports; labeler `{metrics['labeler']}`; uncertain counted as "
        f"{metrics['uncertain_as']}; a precision, recall or F1 whose denominator is 0 counts "
        f"{settings.get('zero_division', 0)} (zero_division)."
    )
    out += ["", "## Table I layout", "", headline_markdown(metrics, table_average)]
    if metrics.get("ce_field"):  # the three F1 figures papers compare on, under both conventions
        out += ["## CE F1 as papers report it", "", field_figures_markdown(metrics["ce_field"])]
    out += [
        "## Every CE average (%)",
        "",
        "| Labels | Average | Precision | Recall | F1 |",
        "|---|---|---|---|---|",
    ]
    for subset in ("14", "5"):
        for average in ("micro", "macro", "example"):
            f = metrics["ce"][subset][average]
            out.append(
                f"| {subset} | {average} | {percent(f['precision'])} | {percent(f['recall'])} | {percent(f['f1'])} |"
            )
    out += ["", "## Per label (%)", "", "| Observation | Precision | Recall | F1 | Support | Predicted |"]
    out.append("|---|---|---|---|---|---|")
    for label, f in metrics["per_label"].items():
        out.append(
            f"| {label} | {percent(f['precision'])} | {percent(f['recall'])} | {percent(f['f1'])} "
            f"| {f['support']} | {f['predicted']} |"
        )
    out += ["", "## Polarity (counts of report-label pairs)", ""]
    out.append("| Observation | " + " | ".join(name for _, name in _POLARITY_COLUMNS) + " |")
    out.append("|---|" + "---|" * len(_POLARITY_COLUMNS))
    for label, counts in metrics["polarity"].items():
        out.append(f"| {label} | " + " | ".join(str(counts[key]) for key, _ in _POLARITY_COLUMNS) + " |")
    if metrics.get("format_compliance"):
        fc = metrics["format_compliance"]
        out += [
            "",
            "## Format compliance",
            "",
            f"{percent(fc['rate'])}% of {fc['n']} outputs get the full format reward "
            f"(mean format reward {fc['mean_reward']:.3f}).",
        ]
    extra = extra_metrics_markdown(metrics)
    if extra:
        out += ["", "## BERTScore and RadGraph F1", "", extra.rstrip("\n")]
    if metrics.get("nlg"):
        names = list(metrics["nlg"])
        out += ["", "## NLG (secondary)", "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        out.append("| " + " | ".join(_format_number(metrics["nlg"][n]) for n in names) + " |")
    elif metrics.get("nlg_unavailable"):
        out += ["", "## NLG (secondary)", "", f"Not computed: {metrics['nlg_unavailable']}"]
    return "\n".join(out) + "\n"


def _format_number(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_summary_md(metrics: dict, out_dir: Path, table_average: str = "macro") -> Path:
    path = Path(out_dir) / SUMMARY_FILE
    path.write_text(summary_markdown(metrics, table_average), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------- compare
def load_metrics(folder: str | Path) -> dict:
    """metrics.json of an evaluation folder, with a clear error when it is missing or unreadable."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: no {METRICS_FILE} (is it an evaluation folder written by evaluate.py?)"
        )
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(metrics, dict) or "ce" not in metrics:
        raise ValueError(f"{path}: no 'ce' figures")
    return metrics


def compare_markdown(folders: Sequence[str | Path], average: str = "macro", subset: str = "14") -> str:
    """The Table II-style comparison: one row per evaluation folder, best bold, second underlined."""
    if not folders:
        raise ValueError("--compare needs at least one folder")
    all_metrics = [load_metrics(f) for f in folders]
    rows = [
        table_row(m, average, subset, method=m.get("method") or Path(f).name)
        for m, f in zip(all_metrics, folders)
    ]
    out = [ce_caption(all_metrics[0], average, subset), "", paper_table(rows, mark_best=len(rows) > 1)]
    settings = {(m.get("labeler"), m.get("uncertain_as")) for m in all_metrics}
    if len(settings) > 1:
        out.append("Warning: the folders were scored under different settings, so rows are not comparable:")
        out += [
            f"- {f}: labeler {m.get('labeler')}, uncertain as {m.get('uncertain_as')}"
            for f, m in zip(folders, all_metrics)
        ]
        out.append("")
    return "\n".join(out)
