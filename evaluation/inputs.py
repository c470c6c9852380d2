"""Reading reports to score: CSV files keyed by study id, with clear errors for bad input."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ReportTable:
    """Texts from one CSV column, keyed by id, in file order."""

    source: str  # file path, for error messages
    ids: list[str]
    texts: list[str]

    def by_id(self) -> dict[str, str]:
        return dict(zip(self.ids, self.texts))


def check_unique_ids(ids: Sequence[str], source: str) -> None:
    """Raise ValueError naming the source and the first duplicated ids."""
    seen: set[str] = set()
    duplicates: list[str] = []
    for id_ in ids:
        if id_ in seen and id_ not in duplicates:
            duplicates.append(id_)
        seen.add(id_)
    if duplicates:
        shown = ", ".join(repr(d) for d in duplicates[:5])
        more = f" (and {len(duplicates) - 5} more)" if len(duplicates) > 5 else ""
        raise ValueError(f"{source}: duplicated id(s) {shown}{more}; every id must appear once")


def _raise_field_limit() -> None:
    """csv refuses fields over 131,072 characters by default; a degenerate generation can be longer."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # C long is 32 bits on some platforms
            limit //= 2


def read_text(path: Path) -> str:
    """A UTF-8 file's text; a decode error names the file and the line (a BOM is accepted)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: line {line} is not valid UTF-8 ({err.reason} at byte {err.start})"
        ) from None


def read_columns(path: str | Path, id_column: str, text_columns: Sequence[str]) -> dict[str, ReportTable]:
    """Read ``id_column`` and each of ``text_columns`` from a CSV; one ReportTable per text column.

    Missing cells in a text column read as "" (an empty report is a valid, if poor, prediction).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    _raise_field_limit()
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in (id_column, *text_columns) if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; the file has columns {header}")
        ids: list[str] = []
        columns: dict[str, list[str]] = {c: [] for c in text_columns}
        for line_number, row in enumerate(reader, start=2):
            id_ = (row[id_column] or "").strip()
            if not id_:
                raise ValueError(f"{path}: line {line_number} has an empty {id_column!r}")
            ids.append(id_)
            for c in text_columns:
                columns[c].append(row[c] or "")
    if not ids:
        raise ValueError(f"{path}: no rows")
    check_unique_ids(ids, f"{path} (column {id_column!r})")
    return {c: ReportTable(str(path), ids, texts) for c, texts in columns.items()}


def align_by_id(predictions: ReportTable, references: ReportTable) -> tuple[list[str], list[str], list[str]]:
    """Pair predictions with references by id, in the predictions' order -> (ids, references, predictions).

    Every id must be in both tables; otherwise a ValueError names the ids found in only one file.
    """
    check_unique_ids(predictions.ids, predictions.source)
    check_unique_ids(references.ids, references.source)
    ref_ids = set(references.ids)
    pred_ids = set(predictions.ids)
    pred_only = [i for i in predictions.ids if i not in ref_ids]
    ref_only = [i for i in references.ids if i not in pred_ids]
    if pred_only or ref_only:
        parts = []
        if pred_only:
            parts.append(f"{len(pred_only)} id(s) only in {predictions.source}: {pred_only[:5]}")
        if ref_only:
            parts.append(f"{len(ref_only)} id(s) only in {references.source}: {ref_only[:5]}")
        raise ValueError("ids do not match between predictions and references; " + "; ".join(parts))
    reference_by_id = references.by_id()
    return list(predictions.ids), [reference_by_id[i] for i in predictions.ids], list(predictions.texts)
