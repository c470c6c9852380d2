"""R2Gen annotation loader: IU X-Ray / MIMIC-CXR structure, sample counts, errors, cleaning, image loading.

The IU X-Ray fixture mirrors the real file's structure (ids like ``CXR1234_IM-0001``, two views
``<id>/0.png`` and ``<id>/1.png``, de-identified ``XXXX`` text) with images generated in tmp_path.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from data.images import ImageLoadError, load_image
from data.r2gen import AnnotationError, clean_report, load_annotation
from data.synthetic import generate_world

IU_REPORTS = {
    "train": [
        ("CXR1001_IM-0001", "The heart is normal in size. The lungs are clear. No pneumothorax or effusion."),
        ("CXR1002_IM-0002", "Heart size is enlarged. XXXX opacity in the right lower lobe. No effusion."),
        ("CXR1003_IM-0003", "1. No acute cardiopulmonary abnormality.. 2. Normal heart size."),
    ],
    "val": [("CXR2001_IM-0101", "Lungs are clear. No pleural effusion.")],
    "test": [("CXR3001_IM-0201", "Mild cardiomegaly. Small left pleural effusion.")],
}


def _write_png(path, seed: int = 0, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(16, 16), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").convert(mode).save(path)


def _write_annotation(folder, content) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "annotation.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


@pytest.fixture
def iu_dir(tmp_path):
    """An IU X-Ray-shaped annotation.json with its images under ``images/`` beside it."""
    content = {}
    for split, rows in IU_REPORTS.items():
        content[split] = []
        for study_id, report in rows:
            paths = [f"{study_id}/0.png", f"{study_id}/1.png"]
            for view, relative in enumerate(paths):
                _write_png(tmp_path / "iu" / "images" / relative, seed=view)
            content[split].append({"id": study_id, "report": report, "image_path": paths, "split": split})
    _write_annotation(tmp_path / "iu", content)
    return tmp_path / "iu"


def _entries(folder, split="train"):
    return json.loads((folder / "annotation.json").read_text())[split]


def _rewrite(folder, split, entries):
    content = json.loads((folder / "annotation.json").read_text())
    content[split] = entries
    (folder / "annotation.json").write_text(json.dumps(content))


def test_iu_structure_gives_one_sample_per_image_with_the_study_report(iu_dir):
    samples = load_annotation(iu_dir / "annotation.json", "train")
    assert len(samples) == 2 * len(IU_REPORTS["train"])
    first, second = samples[:2]
    assert first.id == "CXR1001_IM-0001/0" and second.id == "CXR1001_IM-0001/1"
    assert first.study_id == second.study_id == "CXR1001_IM-0001"
    assert first.image_paths == (iu_dir / "images" / "CXR1001_IM-0001" / "0.png",)
    assert first.report == second.report == IU_REPORTS["train"][0][1]  # verbatim without clean_reports
    assert first.labels is None and first.split == "train"
    assert len({s.id for s in samples}) == len(samples)


def test_multi_view_gives_one_sample_per_study_with_all_images(iu_dir):
    samples = load_annotation(iu_dir / "annotation.json", "train", multi_view=True)
    assert [s.id for s in samples] == [row[0] for row in IU_REPORTS["train"]]
    assert all(len(s.image_paths) == 2 for s in samples)
    assert samples[0].image_paths[1] == iu_dir / "images" / "CXR1001_IM-0001" / "1.png"


def test_every_split_loads_and_split_field_is_kept(iu_dir):
    for split, rows in IU_REPORTS.items():
        samples = load_annotation(iu_dir / "annotation.json", split)
        assert len(samples) == 2 * len(rows) and {s.split for s in samples} == {split}


def test_explicit_images_dir_overrides_the_images_folder_default(iu_dir, tmp_path):
    (iu_dir / "images").rename(tmp_path / "elsewhere")
    with pytest.raises(AnnotationError, match="images_dir"):
        load_annotation(iu_dir / "annotation.json", "val")
    samples = load_annotation(iu_dir / "annotation.json", "val", images_dir=tmp_path / "elsewhere")
    assert samples[0].image_paths[0] == tmp_path / "elsewhere" / "CXR2001_IM-0101" / "0.png"


def test_mimic_entries_of_one_study_merge_in_multi_view_only(tmp_path):
    folder = tmp_path / "mimic"
    entries = []
    for dicom, study, subject in (("d1", 50001, 10001), ("d2", 50001, 10001), ("d3", 50002, 10002)):
        relative = f"p10/p{subject}/s{study}/{dicom}.jpg"
        _write_png(folder / "images" / relative, mode="RGB")
        report = "No acute process." if study == 50001 else "Small right effusion."
        entries.append(
            {
                "id": dicom,
                "study_id": study,
                "subject_id": subject,
                "report": report,
                "image_path": [relative],
                "split": "train",
            }
        )
    _write_annotation(folder, {"train": entries, "val": [], "test": []})
    per_image = load_annotation(folder / "annotation.json", "train")
    assert [s.id for s in per_image] == ["d1/0", "d2/0", "d3/0"]
    assert [s.study_id for s in per_image] == ["50001", "50001", "50002"]
    studies = load_annotation(folder / "annotation.json", "train", multi_view=True)
    assert [(s.id, len(s.image_paths)) for s in studies] == [("50001", 2), ("50002", 1)]


def test_multi_view_rejects_a_study_whose_entries_disagree(tmp_path):
    folder = tmp_path / "mimic"
    entries = []
    for dicom, report in (("d1", "No acute process."), ("d2", "Large effusion.")):
        _write_png(folder / "images" / f"{dicom}.jpg")
        entries.append(
            {"id": dicom, "study_id": 7, "report": report, "image_path": [f"{dicom}.jpg"], "split": "train"}
        )
    path = _write_annotation(folder, {"train": entries})
    with pytest.raises(AnnotationError, match="differ in report"):
        load_annotation(path, "train", multi_view=True)
    assert load_annotation(path, "train", multi_view=True, skip_bad=True) == []


def _break_missing_image(folder, entry):
    (folder / "images" / entry["image_path"][1]).unlink()


def _break_unreadable_image(folder, entry):
    (folder / "images" / entry["image_path"][0]).write_bytes(b"this is not a png")


BAD_ENTRY_CASES = {
    "missing_image": (_break_missing_image, "image not found"),
    "unreadable_image": (_break_unreadable_image, "cannot read image"),
    "empty_report": (lambda folder, entry: entry.update(report="   "), "report is empty"),
    "missing_field": (lambda folder, entry: entry.pop("image_path"), "missing field 'image_path'"),
    "image_path_not_list": (lambda folder, entry: entry.update(image_path=5), "'image_path' must be"),
    "bad_labels": (lambda folder, entry: entry.update(labels=[1, 2]), "'labels' must be"),
    "split_mismatch": (lambda folder, entry: entry.update(split="test"), "listed under 'train'"),
    "report_not_text": (lambda folder, entry: entry.update(report=None), "'report' must be a string"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRY_CASES))
def test_bad_entry_raises_naming_file_and_entry_or_is_skipped_and_counted(iu_dir, case, caplog):
    """Each bad-entry kind: an AnnotationError naming the file and the entry id; with skip_bad the
    other entries load and one warning gives the count for the reason."""
    breaker, message = BAD_ENTRY_CASES[case]
    entries = _entries(iu_dir)
    breaker(iu_dir, entries[1])
    _rewrite(iu_dir, "train", entries)
    path = iu_dir / "annotation.json"
    with pytest.raises(AnnotationError) as error:
        load_annotation(path, "train")
    assert message in str(error.value)
    assert str(path) in str(error.value) and "CXR1002_IM-0002" in str(error.value)
    with caplog.at_level(logging.WARNING, logger="data.r2gen"):
        samples = load_annotation(path, "train", skip_bad=True)
    assert {s.study_id for s in samples} == {"CXR1001_IM-0001", "CXR1003_IM-0003"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 1 of 3 entries" in warnings[0]
    assert f"{error.value.reason}=1" in warnings[0]


def test_duplicate_ids_are_rejected_and_counted(iu_dir, caplog):
    entries = _entries(iu_dir)
    entries.append(dict(entries[0]))
    entries.append({"report": "x"})  # no id: named by its index
    _rewrite(iu_dir, "train", entries)
    with pytest.raises(AnnotationError, match="appears more than once"):
        load_annotation(iu_dir / "annotation.json", "train")
    with caplog.at_level(logging.WARNING, logger="data.r2gen"):
        samples = load_annotation(iu_dir / "annotation.json", "train", skip_bad=True)
    assert len(samples) == 6
    assert "malformed_entry=1, duplicate_id=1" in caplog.records[-1].getMessage()
    assert "#4" in caplog.records[-1].getMessage()


def test_file_level_problems_raise_even_with_skip_bad(tmp_path, iu_dir):
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        load_annotation(tmp_path / "absent.json", "train", skip_bad=True)
    bad_json = tmp_path / "bad" / "annotation.json"
    bad_json.parent.mkdir()
    bad_json.write_text('{"train": [')
    with pytest.raises(AnnotationError, match=r"not valid JSON .* line 1") as error:
        load_annotation(bad_json, "train", skip_bad=True)
    assert str(bad_json) in str(error.value)
    with pytest.raises(
        AnnotationError, match=r"unknown split 'validation'; the file has \['test', 'train', 'val'\]"
    ):
        load_annotation(iu_dir / "annotation.json", "validation", skip_bad=True)
    not_object = _write_annotation(tmp_path / "list", [1, 2])
    with pytest.raises(AnnotationError, match="top level must be an object"):
        load_annotation(not_object, "train")


def test_check_images_false_defers_image_errors_to_load_image(iu_dir):
    (iu_dir / "images" / "CXR1001_IM-0001" / "0.png").unlink()
    samples = load_annotation(iu_dir / "annotation.json", "train", check_images=False)
    assert len(samples) == 6
    with pytest.raises(FileNotFoundError, match="CXR1001_IM-0001"):
        load_image(samples[0].image_paths[0])


def test_load_image_returns_rgb_and_names_unreadable_files(tmp_path):
    _write_png(tmp_path / "gray.png")
    image = load_image(tmp_path / "gray.png")
    assert image.mode == "RGB" and image.size == (16, 16)
    deep = np.linspace(0, 4095, 256, dtype=np.uint16).reshape(16, 16)  # 12-bit data in a 16-bit PNG
    Image.fromarray(deep).save(tmp_path / "deep.png")
    stretched = np.asarray(load_image(tmp_path / "deep.png"))
    assert stretched.min() == 0 and stretched.max() == 255
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageLoadError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError, match="absent.png"):
        load_image(tmp_path / "absent.png")


def test_clean_report_lowercases_strips_numbering_and_normalises_punctuation():
    raw = '1. Heart size is normal.. 2) Lungs clear; no "effusion"/pneumothorax . Nodule 1.5 cm,left base'
    cleaned = clean_report(raw)
    assert cleaned == "heart size is normal. lungs clear no effusion pneumothorax. nodule 1.5 cm, left base."
    assert clean_report(cleaned) == cleaned  # idempotent
    assert clean_report(" ... ") == ""


def test_clean_reports_option_is_applied_only_when_asked(iu_dir):
    raw = load_annotation(iu_dir / "annotation.json", "train", multi_view=True)
    clean = load_annotation(iu_dir / "annotation.json", "train", multi_view=True, clean_reports=True)
    assert raw[2].report == IU_REPORTS["train"][2][1]
    assert clean[2].report == "no acute cardiopulmonary abnormality. normal heart size."
    assert clean[1].report == "heart size is enlarged. xxxx opacity in the right lower lobe. no effusion."


def test_loads_a_generated_world_with_labels_in_every_split(tmp_path):
    path = generate_world(tmp_path / "world", n=20, seed=3, image_size=48)
    content = json.loads(path.read_text())
    for split in ("train", "val", "test"):
        samples = load_annotation(path, split)
        assert len(samples) == sum(len(e["image_path"]) for e in content[split])
        assert all(s.labels is not None and len(s.labels) == 14 for s in samples)
        studies = load_annotation(path, split, multi_view=True)
        assert len(studies) == len(content[split])
    assert load_image(load_annotation(path, "train")[0].image_paths[0]).size == (48, 48)
