"""Label the reports of a CSV file: ``python -m rewards.label_csv --in FILE.csv --column report --out labels.csv``.

Writes one output row per input row: the input's ``id`` column first when it has one, then one column per
observation named as in CheXbert's list, with CheXpert CSV values (1 positive, 0 negative, -1 uncertain,
empty blank), the format R2Gen's ``compute_ce.py`` reads. Errors in the input (unreadable file, missing
column, unusable checkpoint) print one line naming the problem and exit with status 2.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

from rewards.labeling import LABELER_NAMES, label_with_progress, make_labeler
from rewards.vocabulary import OBSERVATIONS, codes_to_csv_rows

EXIT_BAD_INPUT = 2
ID_COLUMN = "id"


class InputError(Exception):
    """A problem with the user's input, reported as one line."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rewards.label_csv", description=__doc__.splitlines()[0])
    parser.add_argument("--in", dest="input", required=True, type=Path, help="input CSV file")
    parser.add_argument("--column", default="report", help="column holding the report text (default: report)")
    parser.add_argument("--out", required=True, type=Path, help="output CSV file")
    parser.add_argument("--labeler", choices=LABELER_NAMES, default="rules", help="default: rules")
    parser.add_argument("--chexbert", type=Path, help="chexbert.pth checkpoint (with --labeler chexbert)")
    parser.add_argument(
        "--tokenizer", type=Path, help="local bert-base-uncased directory (with --labeler chexbert)"
    )
    parser.add_argument("--device", default="cpu", help="torch device for CheXbert (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=32, help="CheXbert batch size (default: 32)")
    return parser.parse_args(argv)


def read_reports(path: Path, column: str) -> tuple[list[str] | None, list[str]]:
    """Return (ids or None, report texts) from a CSV file with a header row."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            if column not in header:
                raise InputError(
                    f"column {column!r} not found in {path} (columns: {', '.join(header) or 'none'})"
                )
            ids, texts = [], []
            for row in reader:
                texts.append(row.get(column) or "")
                ids.append(row.get(ID_COLUMN) or "")
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot parse {path} as a UTF-8 CSV file: {error}") from None
    return (ids if ID_COLUMN in header else None), texts


def write_labels(path: Path, ids: list[str] | None, rows: list[list[int | None]]) -> None:
    try:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(([ID_COLUMN] if ids is not None else []) + list(OBSERVATIONS))
            for i, values in enumerate(rows):
                cells = ["" if v is None else str(v) for v in values]
                writer.writerow(([ids[i]] if ids is not None else []) + cells)
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror or error}") from None


def run(args: argparse.Namespace) -> int:
    if args.labeler == "chexbert" and not (args.chexbert and args.tokenizer):
        raise InputError("--labeler chexbert needs --chexbert PATH (chexbert.pth) and --tokenizer DIR")
    ids, texts = read_reports(args.input, args.column)
    try:
        labeler = make_labeler(args.labeler, args.chexbert, args.tokenizer, args.device, args.batch_size)
    except (OSError, ValueError) as error:
        raise InputError(str(error)) from None
    rows = codes_to_csv_rows(label_with_progress(labeler, texts, desc=f"label ({args.labeler})"))
    write_labels(args.out, ids, rows)
    print(
        f"labeled {len(texts)} reports from {args.input} with {args.labeler} -> {args.out}", file=sys.stderr
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except InputError as error:
        print("error: " + " ".join(str(error).splitlines()), file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
