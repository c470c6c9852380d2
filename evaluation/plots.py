"""PNG figures: per-label F1, the polarity-error breakdown, and a run's training curves.

matplotlib is an optional dependency (the ``plots`` extra); it is imported only when a figure is drawn.
The data preparation (``curve_panels``, ``read_metrics_jsonl``) is pure Python and tested on its own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rewards.vocabulary import OBSERVATIONS

PER_LABEL_F1_PNG = "per_label_f1.png"
POLARITY_PNG = "polarity_errors.png"
CURVES_PNG = "training_curves.png"

# Polarity error kinds drawn as stacked bars (agreements are left out: they are not errors).
POLARITY_ERROR_KINDS = (
    ("reversal_pos_to_neg", "reversal pos→neg"),
    ("reversal_neg_to_pos", "reversal neg→pos"),
    ("uncertainty_mismatch", "uncertainty mismatch"),
    ("omission", "omission"),
    ("unsupported", "unsupported mention"),
)

# Training-curve panels: title -> (exact keys, key prefixes). A key joins the first panel it matches.
CURVE_PANELS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("reward", ("reward",), ("reward/",)),
    ("KL to reference", ("kl", "loss/kl"), ("kl/",)),
    ("clip fraction", ("clip_frac", "loss/clip_frac"), ("clip_frac/",)),
    ("completion length (tokens)", ("completion_len",), ("completion_len/",)),
    ("loss", ("loss",), ()),
    ("learning rate", ("lr",), ()),
)


class PlotsUnavailable(ImportError):
    """matplotlib is not installed."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable(
            "matplotlib is not installed; plots are an optional extra: pip install -e '.[plots]'"
        ) from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


# -------------------------------------------------------------------------------------- evaluation plots
def plot_per_label_f1(metrics: dict, path: Path) -> Path:
    """Horizontal bars of per-label F1 (%), each annotated with its support (reference positives)."""
    plt = _pyplot()
    labels = [label for label in OBSERVATIONS if label in metrics["per_label"]]
    f1 = [100.0 * metrics["per_label"][label]["f1"] for label in labels]
    support = [metrics["per_label"][label]["support"] for label in labels]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.5))
    bars = ax.barh(labels, f1, color="#4C72B0")
    for bar, n in zip(bars, support):
        ax.text(bar.get_width() + 1, bar.get_y() + bar.get_height() / 2, f"n={n}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel("F1 (%)")
    ax.set_title(f"Per-label CE F1 ({metrics.get('method', '')}; uncertain as {metrics.get('uncertain_as')})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_polarity_breakdown(metrics: dict, path: Path) -> Path:
    """Stacked horizontal bars per label: how many report-label pairs fall in each polarity error kind."""
    plt = _pyplot()
    labels = [label for label in OBSERVATIONS if label in metrics["polarity"]]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(labels) + 1.8))
    left = [0] * len(labels)
    for key, name in POLARITY_ERROR_KINDS:
        counts = [metrics["polarity"][label][key] for label in labels]
        ax.barh(labels, counts, left=left, label=name)
        left = [a + b for a, b in zip(left, counts)]
    ax.invert_yaxis()
    ax.xaxis.get_major_locator().set_params(integer=True)  # counts, not fractions
    ax.set_xlabel(f"report-label pairs (of {metrics.get('n_reports', '?')} reports)")
    ax.set_title("Polarity errors per label")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_evaluation(metrics: dict, out_dir: Path) -> list[Path]:
    """Both evaluation figures into ``out_dir``; raises PlotsUnavailable without matplotlib."""
    out_dir = Path(out_dir)
    return [
        plot_per_label_f1(metrics, out_dir / PER_LABEL_F1_PNG),
        plot_polarity_breakdown(metrics, out_dir / POLARITY_PNG),
    ]


# --------------------------------------------------------------------------------------- training curves
def read_metrics_jsonl(path: str | Path) -> list[dict]:
    """Records of a run's metrics.jsonl (one JSON object per line; blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a training run writes metrics.jsonl in its folder)")
    records = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {line_number} is not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {line_number} is not a JSON object")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _panel_of(key: str) -> str | None:
    for title, exact, prefixes in CURVE_PANELS:
        if key in exact or key.startswith(prefixes):
            return title
    return None


def curve_panels(records: list[dict]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Group numeric series by panel: ``{panel title: {key: (steps, values)}}``.

    The x value is the record's ``step`` (its line index when absent). Records without a key (e.g. an
    evaluation line among training lines) simply leave a gap in that series. Panels with no data are
    left out, so a run that logs no clip fraction gets no clip-fraction panel.
    """
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for index, record in enumerate(records):
        step = record.get("step", index)
        if not _is_number(step):
            raise ValueError(f"record {index} has a non-numeric step {step!r}")
        for key, value in record.items():
            title = _panel_of(key)
            if title is None or not _is_number(value):
                continue
            steps, values = panels.setdefault(title, {}).setdefault(key, ([], []))
            steps.append(float(step))
            values.append(float(value))
    order = [title for title, _, _ in CURVE_PANELS]
    return {title: panels[title] for title in order if title in panels}


def plot_training_curves(metrics_jsonl: str | Path, out_dir: str | Path) -> Path:
    """Draw every available panel of a run's metrics.jsonl into ``out_dir/training_curves.png``."""
    panels = curve_panels(read_metrics_jsonl(metrics_jsonl))
    if not panels:
        raise ValueError(
            f"{metrics_jsonl}: none of the keys reward, reward/<term>, kl, clip_frac, completion_len, loss, lr"
        )
    plt = _pyplot()
    columns = 2
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(11, 3.2 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.ravel(), panels.items()):
        for key, (steps, values) in series.items():
            ax.plot(steps, values, label=key, linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        if len(series) > 1:
            ax.legend(fontsize=7)
    for ax in axes.ravel()[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CURVES_PNG
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
