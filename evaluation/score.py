"""score_reports: label reference and predicted reports, compute every figure, write the folder.

Both ways into ``evaluate.py`` end here: the predictions mode reads the lists from a CSV, the generation
mode produces them with the model. Nothing here imports torch; the labeler object decides what is loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evaluation.ce import AVERAGES, UNCERTAIN_POLICIES, ce_metrics, polarity_analysis
from evaluation.ce_table import field_figures
from evaluation.inputs import check_unique_ids
from evaluation.outputs import write_labels_csv, write_metrics_json, write_reports_csv, write_summary_md
from evaluation.plots import PlotsUnavailable, plot_evaluation
from evaluation.truth import TRUTH_FILE, append_truth_summary, truth_figures, write_truth_csv
from rewards.format import format_reward
from rewards.labeling import Labeler, label_with_progress


def label_reports(labeler: Labeler, texts: Sequence[str], what: str) -> np.ndarray:
    """Run the labeler and check it returned one valid row of 14 codes per text."""
    codes = label_with_progress(labeler, texts, desc=f"label {what}")
    if codes.shape[0] != len(texts):
        raise ValueError(f"labeler returned {codes.shape[0]} label rows for {len(texts)} {what}")
    return codes


def format_compliance(generated_texts: Sequence[str]) -> dict:
    """Share of outputs with the full format reward (1.0), and the mean format reward (rewards.format)."""
    rewards = np.array([format_reward(t) for t in generated_texts], dtype=np.float64)
    return {
        "rate": float((rewards == 1.0).mean()),
        "mean_reward": float(rewards.mean()),
        "n": len(rewards),
    }


def nlg_figures(
    references: Sequence[str], predictions: Sequence[str], meteor: bool | str = "auto"
) -> tuple[dict | None, str | None]:
    """(figures, None) from rewards.nlg, or (None, why) when its optional dependencies are missing.

    ``meteor``: "auto" adds METEOR when java runs it (its start-up takes 5-20 s), False skips it.
    """
    try:
        from rewards.nlg import nlg_metrics
    except ImportError as e:
        return None, f"rewards.nlg could not be imported ({e}); install the extra: pip install -e '.[nlg]'"
    try:
        return dict(nlg_metrics(list(references), list(predictions), meteor=meteor)), None
    except ImportError as e:
        return None, f"an NLG dependency is missing ({e}); install the extra: pip install -e '.[nlg]'"


def _check_lengths(ids, references, predictions, generated_texts) -> None:
    lengths = {"ids": len(ids), "references": len(references), "predictions": len(predictions)}
    if generated_texts is not None:
        lengths["generated_texts"] = len(generated_texts)
    if len(set(lengths.values())) != 1:
        raise ValueError(
            f"ids, references and predictions must have one entry per report, got lengths {lengths}"
        )
    if not ids:
        raise ValueError("no reports to score")


def score_reports(
    ids: Sequence[str],
    references: Sequence[str],
    predictions: Sequence[str],
    generated_texts: Sequence[str] | None = None,
    *,
    labeler: Labeler,
    out_dir: str | Path,
    uncertain_as: str = "negative",
    nlg: bool = True,
    meteor: bool | str = "auto",
    plots: bool = True,
    labeler_name: str | None = None,
    method: str | None = None,
    dataset: str | None = None,
    table_average: str = "macro",
    zero_division: float = 0,
    extra_scorers: Sequence = (),
    settings: dict | None = None,
    truth_codes: np.ndarray | None = None,
) -> dict:
    """Score predicted reports against references and write metrics.json, labels.csv, reports.csv,
    summary.md and (when matplotlib is installed and ``plots``) the per-label F1 and polarity PNGs.

    ``predictions`` are the report texts that get labeled (for model outputs: the extracted ``<report>``
    text); ``generated_texts`` are the full outputs, used for format compliance and kept in reports.csv.
    ``nlg`` / ``meteor`` turn the secondary NLG figures / METEOR (java) off.
    ``method`` / ``dataset`` name the Table I row and column group; ``table_average`` picks the average
    summary.md shows in that layout; ``settings`` (e.g. checkpoint, decoding) are stored as given.
    ``truth_codes`` (``(N, 14)``, when the dataset knows each study's true labels) adds the figures against
    them: metrics.json's ``truth`` section, truth.csv and a summary.md section (evaluation.truth).
    ``extra_scorers`` (evaluation.field_metrics: BERTScore, RadGraph F1) each add ``metrics[name]``.
    Returns the metrics dict written to metrics.json.
    """
    ids = [str(i) for i in ids]
    _check_lengths(ids, references, predictions, generated_texts)
    check_unique_ids(ids, "score_reports ids")
    if uncertain_as not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain_as must be one of {UNCERTAIN_POLICIES}, got {uncertain_as!r}")
    if table_average not in AVERAGES:
        raise ValueError(f"table_average must be one of {AVERAGES}, got {table_average!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    reference_codes = label_reports(labeler, references, "references")
    predicted_codes = label_reports(labeler, predictions, "predictions")
    ce = ce_metrics(reference_codes, predicted_codes, uncertain_as, zero_division)
    name = labeler_name or getattr(labeler, "name", None) or type(labeler).__name__

    metrics: dict = {
        "method": method or out_dir.name,
        "dataset": dataset or "",
        "n_reports": len(ids),
        "labeler": name,
        "uncertain_as": uncertain_as,
        "ce": {"14": ce["14"], "5": ce["5"]},
        "ce_field": field_figures(reference_codes, predicted_codes, name, zero_division),
        "per_label": ce["per_label"],
        "polarity": polarity_analysis(reference_codes, predicted_codes),
    }
    if truth_codes is not None:
        metrics["truth"] = truth_figures(
            truth_codes, reference_codes, predicted_codes, uncertain_as, zero_division
        )
    if generated_texts is not None:
        metrics["format_compliance"] = format_compliance(generated_texts)
    for scorer in extra_scorers:  # BERTScore, RadGraph F1 (evaluation.field_metrics), when asked for
        metrics[scorer.name] = scorer.score(references, predictions)
    if nlg:
        figures, why_not = nlg_figures(references, predictions, meteor)
        if figures is not None:
            metrics["nlg"] = figures
        else:
            metrics["nlg_unavailable"] = why_not
            print(f"warning: NLG metrics skipped: {why_not}", file=sys.stderr)
    metrics["settings"] = {
        "labeler": name,
        "uncertain_as": uncertain_as,
        "zero_division": zero_division,
        "table_average": table_average,
        "nlg": nlg,
        "meteor": meteor if nlg else False,
        **(settings or {}),
    }

    write_labels_csv(ids, reference_codes, predicted_codes, out_dir)
    write_reports_csv(ids, references, predictions, generated_texts, out_dir)
    if plots:
        _draw_plots(metrics, out_dir)
    write_metrics_json(metrics, out_dir)
    write_summary_md(metrics, out_dir, table_average)
    (out_dir / TRUTH_FILE).unlink(missing_ok=True)  # a stale one would make --compare use the wrong truth
    if truth_codes is not None:
        write_truth_csv(ids, truth_codes, out_dir)
        append_truth_summary(metrics, out_dir)
    return metrics


def _draw_plots(metrics: dict, out_dir: Path) -> None:
    try:
        metrics["plots"] = [p.name for p in plot_evaluation(metrics, out_dir)]
    except PlotsUnavailable as e:
        metrics["plots_unavailable"] = str(e)
        print(f"warning: plots skipped: {e}", file=sys.stderr)
