"""Loaders for R2Gen-format ``annotation.json`` files (IU X-Ray, MIMIC-CXR, the synthetic world).

The format: ``{"train": [...], "val": [...], "test": [...]}``; each entry has ``id``, ``report`` (the
FINDINGS text), ``image_path`` (a list of paths relative to an images folder) and ``split``. MIMIC-CXR
entries add ``study_id`` and ``subject_id`` and usually hold one image each (a study's other images are
separate entries with the same ``study_id`` and report). The synthetic world adds ``labels``: the 14 codes
of ``rewards.vocabulary`` (CheXbert order, 0 blank / 1 positive / 2 negative / 3 uncertain).

Images folder rule: ``images_dir=None`` means ``<folder of annotation.json>/images`` -- the layout R2Gen
uses (``data/iu_xray/annotation.json`` beside ``data/iu_xray/images/``) and the one the synthetic world
writes. Pass ``images_dir`` explicitly for any other layout.

Samples (MRG-R1, Sec. IV-A): by default each image is its own sample paired with its study's report, so
an IU X-Ray study with two views gives two samples (ids ``<entry id>/0`` and ``<entry id>/1``). With
``multi_view=True`` a study gives one sample holding all its images (id = the study id); MIMIC-CXR entries
sharing a ``study_id`` are merged into that study, in file order.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.images import ImageLoadError, check_image_header, load_image
from rewards.vocabulary import NO_FINDING, NUM_OBSERVATIONS, UNCERTAIN

__all__ = [
    "AnnotationError",
    "Sample",
    "clean_report",
    "load_annotation",
    "load_image",
]

log = logging.getLogger(__name__)

# Why an entry can be rejected; with skip_bad=True the warning counts skipped entries by these names.
BAD_ENTRY_REASONS = (
    "malformed_entry",
    "duplicate_id",
    "empty_report",
    "missing_image",
    "unreadable_image",
    "conflicting_study",
)


class AnnotationError(ValueError):
    """A problem in an annotation file. ``entry_id`` is None for file-level problems."""

    def __init__(self, path: Path, message: str, entry_id: str | None = None, reason: str | None = None):
        where = f"{path}" if entry_id is None else f"{path}, entry {entry_id!r}"
        super().__init__(f"{where}: {message}")
        self.path, self.entry_id, self.reason = path, entry_id, reason


@dataclass(frozen=True)
class Sample:
    """One model input: image(s) of a study and its reference report."""

    id: str  # unique within a split: "<entry id>/<view>" per image, the study id with multi_view
    study_id: str
    image_paths: tuple[Path, ...]
    report: str
    labels: tuple[int, ...] | None  # the 14 codes when the annotation carries them
    split: str


@dataclass(frozen=True)
class _Entry:
    id: str
    study_id: str
    image_paths: tuple[Path, ...]
    report: str
    labels: tuple[int, ...] | None


class _BadEntry(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------------------------------------- cleaning

_LIST_NUMBER = re.compile(r"(^|[.:]\s*)\d{1,2}[.)]\s+")
_NOT_KEPT = re.compile(r"[^a-z0-9.,\-\s]")
_PERIOD_RUN = re.compile(r"\.(?:\s*\.)+")
_SPACE_BEFORE_MARK = re.compile(r"\s+([.,])")
_NO_SPACE_AFTER_PERIOD = re.compile(r"\.(?=[a-z])")
_NO_SPACE_AFTER_COMMA = re.compile(r",(?=\S)")
_COMMA_BEFORE_PERIOD = re.compile(r",\s*\.")


def clean_report(text: str) -> str:
    """R2Gen-style report cleaning, used only when ``clean_reports=True``. Exactly these steps, in order:

    1. lower-case;
    2. drop list numbering ("1. ", "2) ") at the start of the text or after a period or colon;
    3. replace every character other than a-z, 0-9, whitespace, ".", "," and "-" by a space
       ("and/or" -> "and or", "(left)" -> "left", quotes and "?" vanish); de-identification tokens such
       as "xxxx" are kept, as R2Gen keeps them;
    4. collapse runs of periods ("..", ". .") to one; drop a comma right before a period;
    5. no space before "." or ","; one space after a "," and after a "." that precedes a letter
       (decimals such as "1.5" are kept); whitespace collapsed, ends stripped;
    6. end with a "." when the text is not empty.

    Unlike R2Gen's ``clean_report_iu_xray``, commas are kept (a labeler scopes negation by clause) and
    sentences are joined as ordinary text rather than " . "-separated tokens.
    """
    text = text.lower()
    text = _LIST_NUMBER.sub(lambda m: m.group(1) + " ", text)
    text = _NOT_KEPT.sub(" ", text)
    text = _PERIOD_RUN.sub(".", text)
    text = _COMMA_BEFORE_PERIOD.sub(".", text)
    text = _SPACE_BEFORE_MARK.sub(r"\1", text)
    text = _NO_SPACE_AFTER_PERIOD.sub(". ", text)
    text = _NO_SPACE_AFTER_COMMA.sub(", ", text)
    text = " ".join(text.split()).strip(" ,")
    text = text.lstrip(". ")
    if text and not text.endswith("."):
        text += "."
    return text


# ----------------------------------------------------------------------------------------------- reading


def _read_annotation(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise AnnotationError(
            path, f"not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        ) from None
    except UnicodeDecodeError as error:
        raise AnnotationError(path, f"not UTF-8 text ({error})") from None
    if not isinstance(content, dict):
        raise AnnotationError(path, f"top level must be an object of splits, got {type(content).__name__}")
    return content


def _entry_name(entry: Any, index: int) -> str:
    if isinstance(entry, dict) and isinstance(entry.get("id"), (str, int)) and str(entry["id"]).strip():
        return str(entry["id"])
    return f"#{index}"


def _parse_labels(raw: Any) -> tuple[int, ...]:
    ok = (
        isinstance(raw, list)
        and len(raw) == NUM_OBSERVATIONS
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= UNCERTAIN for v in raw)
    )
    if not ok:
        raise _BadEntry(
            "malformed_entry", f"'labels' must be a list of {NUM_OBSERVATIONS} ints in 0..3, got {raw!r}"
        )
    if raw[NO_FINDING] not in (0, 1):
        raise _BadEntry("malformed_entry", f"'labels' No Finding must be 0 or 1, got {raw[NO_FINDING]}")
    return tuple(raw)


def _parse_image_paths(raw: Any, images_dir: Path) -> tuple[Path, ...]:
    relative = [raw] if isinstance(raw, str) else raw  # a bare string is accepted as one view
    if not isinstance(relative, list) or not relative:
        raise _BadEntry("malformed_entry", f"'image_path' must be a non-empty list of paths, got {raw!r}")
    if not all(isinstance(p, str) and p.strip() for p in relative):
        raise _BadEntry("malformed_entry", f"'image_path' holds a non-string or empty path: {raw!r}")
    return tuple(images_dir / p for p in relative)


def _check_images(paths: Sequence[Path], images_dir: Path, decode: bool = False) -> None:
    for image_path in paths:
        try:
            if decode:
                load_image(image_path)
            else:
                check_image_header(image_path)
        except FileNotFoundError:
            raise _BadEntry(
                "missing_image", f"image not found: {image_path} (images_dir={images_dir})"
            ) from None
        except ImageLoadError as error:
            raise _BadEntry("unreadable_image", str(error)) from None


def _parse_entry(
    entry: Any,
    split: str,
    images_dir: Path,
    clean_reports: bool,
    check_images: bool,
    decode_images: bool = False,
) -> _Entry:
    if not isinstance(entry, dict):
        raise _BadEntry("malformed_entry", f"entry must be an object, got {type(entry).__name__}")
    for field in ("id", "report", "image_path"):
        if field not in entry:
            raise _BadEntry("malformed_entry", f"missing field {field!r}")
    entry_id = entry["id"]
    if not isinstance(entry_id, (str, int)) or isinstance(entry_id, bool) or not str(entry_id).strip():
        raise _BadEntry("malformed_entry", f"'id' must be a non-empty string, got {entry_id!r}")
    if "split" in entry and entry["split"] != split:
        raise _BadEntry(
            "malformed_entry", f"'split' is {entry['split']!r} but the entry is listed under {split!r}"
        )
    report = entry["report"]
    if not isinstance(report, str):
        raise _BadEntry("malformed_entry", f"'report' must be a string, got {type(report).__name__}")
    if clean_reports:
        report = clean_report(report)
    report = report.strip()
    if not report:
        raise _BadEntry("empty_report", "report is empty" + (" after cleaning" if clean_reports else ""))
    image_paths = _parse_image_paths(entry["image_path"], images_dir)
    labels = _parse_labels(entry["labels"]) if "labels" in entry else None
    study_id = entry.get("study_id", entry_id)
    if not isinstance(study_id, (str, int)) or isinstance(study_id, bool) or not str(study_id).strip():
        raise _BadEntry("malformed_entry", f"'study_id' must be a non-empty string or int, got {study_id!r}")
    if check_images:
        _check_images(image_paths, images_dir, decode=decode_images)
    return _Entry(str(entry_id), str(study_id), image_paths, report, labels)


def _per_image_samples(entries: Sequence[_Entry], split: str) -> list[Sample]:
    return [
        Sample(f"{e.id}/{view}", e.study_id, (image_path,), e.report, e.labels, split)
        for e in entries
        for view, image_path in enumerate(e.image_paths)
    ]


def _group_studies(entries: Sequence[_Entry]) -> tuple[list[list[_Entry]], dict[str, str]]:
    """Entries grouped by study id (file order); and, per study, why it conflicts (reports/labels differ)."""
    groups: dict[str, list[_Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.study_id, []).append(entry)
    conflicts = {}
    for study_id, members in groups.items():
        first = members[0]
        for other in members[1:]:
            if other.report != first.report or other.labels != first.labels:
                field = "report" if other.report != first.report else "labels"
                conflicts[study_id] = (
                    f"entries {first.id!r} and {other.id!r} of study {study_id!r} differ in {field}"
                )
                break
    return list(groups.values()), conflicts


def _study_sample(members: Sequence[_Entry], split: str) -> Sample:
    first = members[0]
    paths = tuple(p for m in members for p in m.image_paths)
    return Sample(first.study_id, first.study_id, paths, first.report, first.labels, split)


def load_annotation(
    annotation_path: str | Path,
    split: str,
    images_dir: str | Path | None = None,
    multi_view: bool = False,
    clean_reports: bool = False,
    skip_bad: bool = False,
    check_images: bool = True,
    decode_images: bool = False,
) -> list[Sample]:
    """Read one split of an R2Gen ``annotation.json`` into Samples (see the module docstring for layout).

    Args:
        annotation_path: the JSON file.
        split: a key of the file (R2Gen uses "train", "val", "test").
        images_dir: folder the ``image_path`` entries are relative to; None -> ``<annotation folder>/images``.
        multi_view: False (the paper's setting) -> one sample per image; True -> one sample per study.
        clean_reports: apply :func:`clean_report` to every report (off by default: reports are kept verbatim).
        skip_bad: skip bad entries and log one warning with counts per reason instead of raising.
        check_images: check that every image exists and has a readable header (off: nothing is opened
            here, and :func:`load_image` raises later with the file's path).
        decode_images: with ``check_images``, decode every image fully (finds files truncated after a valid
            header, at the cost of reading every pixel once).

    Raises:
        FileNotFoundError: the annotation file is absent.
        AnnotationError: bad JSON, a top level that is not an object of lists, an unknown split (these
            always raise), or a bad entry when ``skip_bad`` is False: malformed (missing/ill-typed field,
            bad ``labels``, ``split`` field disagreeing with its list), duplicate id, empty report, missing
            image, unreadable image, or entries of one study with different reports (multi_view only).
            The message names the file and the entry id (or ``#<index>`` when the id itself is bad).
    """
    path = Path(annotation_path)
    content = _read_annotation(path)
    if split not in content:
        raise AnnotationError(path, f"unknown split {split!r}; the file has {sorted(content)}")
    raw_entries = content[split]
    if not isinstance(raw_entries, list):
        raise AnnotationError(
            path, f"split {split!r} must be a list of entries, got {type(raw_entries).__name__}"
        )
    images_root = Path(images_dir) if images_dir is not None else path.parent / "images"

    skipped: Counter[str] = Counter()
    first_problem: dict[str, str] = {}

    def reject(name: str, reason: str, message: str) -> None:
        if not skip_bad:
            raise AnnotationError(path, message, entry_id=name, reason=reason)
        skipped[reason] += 1
        first_problem.setdefault(reason, f"{name}: {message}")

    entries: list[_Entry] = []
    seen_ids: set[str] = set()
    for index, raw in enumerate(raw_entries):
        name = _entry_name(raw, index)
        try:
            entry = _parse_entry(raw, split, images_root, clean_reports, check_images, decode_images)
        except _BadEntry as bad:
            reject(name, bad.reason, str(bad))
            continue
        if entry.id in seen_ids:
            reject(name, "duplicate_id", f"id {entry.id!r} appears more than once in split {split!r}")
            continue
        seen_ids.add(entry.id)
        entries.append(entry)

    if multi_view:
        groups, conflicts = _group_studies(entries)
        samples = []
        for members in groups:
            study_id = members[0].study_id
            if study_id in conflicts:
                reject(study_id, "conflicting_study", conflicts[study_id])
                skipped["conflicting_study"] += len(members) - 1  # count entries, like the other reasons
                continue
            samples.append(_study_sample(members, split))
    else:
        samples = _per_image_samples(entries, split)

    if skipped:
        counts = ", ".join(f"{reason}={skipped[reason]}" for reason in BAD_ENTRY_REASONS if skipped[reason])
        examples = "; ".join(first_problem[reason] for reason in BAD_ENTRY_REASONS if reason in first_problem)
        log.warning(
            "%s split %r: skipped %d of %d entries (%s); first of each: %s",
            path,
            split,
            sum(skipped.values()),
            len(raw_entries),
            counts,
            examples,
        )
    return samples
