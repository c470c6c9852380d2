"""The synthetic chest X-ray world: determinism, layout, label rules, co-occurrences, report text, images
that show their findings, and the rule-based labeler's agreement with the world's labels."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from data.r2gen import load_annotation
from data.synthetic import (
    ATEL,
    CARDIO,
    CONSOL,
    DEVICE,
    EDEMA,
    EFF,
    FX,
    LESION,
    PNA,
    PTX,
    Finding,
    Study,
    generate_world,
    render_view,
    sample_study,
    world_texts,
    write_report,
)
from rewards.vocabulary import FINDINGS, NEGATIVE, NO_FINDING, OBSERVATIONS, POSITIVE, UNCERTAIN

SIZE = 112


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 300-study world at 112 px (about 3 s) shared by the tests of this module."""
    return generate_world(tmp_path_factory.mktemp("world"), n=300, seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def entries(world):
    content = json.loads(world.read_text())
    return [e for split in ("train", "val", "test") for e in content[split]]


@pytest.fixture(scope="module")
def drawn_studies():
    """4,000 studies and their reports without images (sampling only: fast)."""
    studies = []
    for index in range(4000):
        rng = np.random.default_rng([11, index])
        study = sample_study(rng, f"S{index}")
        studies.append((study, write_report(study, rng)))
    return studies


def _files(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    first = generate_world(tmp_path / "a", n=12, seed=5, image_size=64)
    second = generate_world(tmp_path / "b", n=12, seed=5, image_size=64)
    other = generate_world(tmp_path / "c", n=12, seed=6, image_size=64)
    assert _files(first.parent) == _files(second.parent)
    assert first.read_bytes() != other.read_bytes()


def test_blank_images_keep_the_studies_and_show_one_flat_grey_at_the_worlds_mean(tmp_path):
    seen = generate_world(tmp_path / "seen", n=12, seed=5, image_size=64)
    blind = generate_world(tmp_path / "blind", n=12, seed=5, image_size=64, blank_images=True)
    assert blind.read_bytes() == seen.read_bytes()  # the same studies, reports, labels and image paths
    paths = sorted(p.relative_to(seen.parent) for p in (seen.parent / "images").rglob("*.png"))
    assert paths == sorted(p.relative_to(blind.parent) for p in (blind.parent / "images").rglob("*.png"))
    seen_pixels = np.stack([np.asarray(Image.open(seen.parent / p)) for p in paths])
    blind_pixels = np.stack([np.asarray(Image.open(blind.parent / p)) for p in paths])
    assert seen_pixels.std(axis=(1, 2)).min() > 5  # the rendered views show something
    assert np.all(blind_pixels == blind_pixels.flat[0])  # every blank view is the same flat grey
    assert abs(int(blind_pixels.flat[0]) - seen_pixels.mean()) <= 0.5


def test_command_line_writes_the_world_and_prints_prevalences(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "data.synthetic", "--out", str(tmp_path / "cli"), "--n", "10", "--image-size", "48"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert (tmp_path / "cli" / "annotation.json").is_file()
    assert "Pleural Effusion" in result.stdout and "train: 8, val: 1, test: 1" in result.stdout


def test_layout_is_r2gen_with_split_fractions_and_one_or_two_views(world, entries):
    content = json.loads(world.read_text())
    assert {k: len(v) for k, v in content.items()} == {"train": 240, "val": 30, "test": 30}
    assert Counter(len(e["image_path"]) for e in entries).keys() == {1, 2}
    for split, rows in content.items():
        for e in rows:
            assert list(e) == ["id", "report", "image_path", "split", "labels"] and e["split"] == split
            assert e["image_path"] == [f"{e['id']}/{view}.png" for view in range(len(e["image_path"]))]
            assert (world.parent / "images" / e["image_path"][0]).is_file()
    assert len(load_annotation(world, "train")) == sum(len(e["image_path"]) for e in content["train"])


def test_no_finding_is_one_exactly_when_nothing_but_devices_is_positive_or_uncertain(entries, drawn_studies):
    rows = [e["labels"] for e in entries] + [list(s.codes()) for s, _ in drawn_studies]
    device = OBSERVATIONS.index("Support Devices")
    for codes in rows:
        abnormal = any(codes[i] in (POSITIVE, UNCERTAIN) for i in range(NO_FINDING) if i != device)
        assert codes[NO_FINDING] == (0 if abnormal else 1)
    assert 0.25 < np.mean([codes[NO_FINDING] for codes in rows]) < 0.45


def test_each_observation_is_seen_positive_hedged_negated_and_unmentioned(drawn_studies):
    codes = np.array([s.codes() for s, _ in drawn_studies])
    for index, name in enumerate(FINDINGS):
        seen = set(codes[:, index].tolist())
        expected = {0, POSITIVE} if name == "Support Devices" else {0, POSITIVE, NEGATIVE, UNCERTAIN}
        assert expected <= seen, f"{name}: codes seen {sorted(seen)}"


def test_findings_co_occur_as_in_practice(drawn_studies):
    """Edema goes with cardiomegaly, effusion with atelectasis, consolidation with pneumonia."""
    present = np.array([[s.has(name) for name in FINDINGS] for s, _ in drawn_studies])

    def lift(a: str, b: str) -> float:
        x, y = present[:, FINDINGS.index(a)], present[:, FINDINGS.index(b)]
        return y[x].mean() / max(y[~x].mean(), 1e-3)

    assert lift(CARDIO, EDEMA) > 3 and lift(ATEL, EFF) > 1.5 and lift(PNA, CONSOL) > 3
    prevalence = present.mean(axis=0)
    assert all(0.03 < p < 0.35 for p in prevalence), dict(zip(FINDINGS, prevalence.round(3)))


def test_reports_are_findings_style_varied_and_of_realistic_length(drawn_studies):
    reports = [r for _, r in drawn_studies]
    words = np.array([len(r.split()) for r in reports])
    assert 25 <= words.mean() <= 45 and np.percentile(words, 5) >= 12 and np.percentile(words, 95) <= 65
    assert len(set(reports)) / len(reports) > 0.95
    sentences = Counter(s for r in reports for s in re.split(r"(?<=\.) ", r))
    assert len(sentences) > 500
    assert any(re.match(r"No [a-z ]+(, [a-z ]+)*,? or [a-z ]+\.$", s) for s in sentences)  # combined negation
    first_sentences = Counter(r.split(". ")[0] for r in reports)
    assert first_sentences.most_common(1)[0][1] < 0.1 * len(reports)  # sentence order varies


# Words that name each observation; an unmentioned (blank) observation must not appear in the report.
MENTION_WORDS = {
    "Cardiomegaly": r"heart|cardiac |cardiomegaly",
    "Enlarged Cardiomediastinum": r"mediastin",
    "Lung Opacity": r"opacit|airspace",
    "Lung Lesion": r"nodule|mass\b",
    "Edema": r"edema|congestion",
    "Consolidation": r"consolidat",
    "Pneumonia": r"pneumonia",
    "Atelectasis": r"atelecta",
    "Pneumothorax": r"pneumothora",
    "Pleural Effusion": r"effusion",
    "Pleural Other": r"pleural thickening",
    "Fracture": r"fracture",
    "Support Devices": r"pacemaker|catheter|picc|tube|wires",
}


def test_blank_observations_are_never_named_and_others_always_are(drawn_studies):
    for study, report in drawn_studies:
        text = report.lower()
        for name, pattern in MENTION_WORDS.items():
            code = study.codes()[OBSERVATIONS.index(name)]
            named = re.search(pattern, text) is not None
            if name == "Cardiomegaly" and "cardiomediastinal" in text and code == 0:
                named = (
                    re.search(r"heart|cardiac |cardiomegaly", text.replace("cardiomediastinal", ""))
                    is not None
                )
            assert named == (code != 0), f"{name} code {code} in: {report}"


# ----------------------------------------------------------------------------------------------- images


def _render(findings, view=0, seed=1):
    study = Study("T", tuple(findings), (), 2)
    return render_view(study, view, np.random.default_rng(seed), SIZE).astype(float)


def _region(image, x0, x1, y0, y1):
    return image[int(y0 * SIZE) : int(y1 * SIZE), int(x0 * SIZE) : int(x1 * SIZE)]


RIGHT_ANGLE, LEFT_ANGLE = (
    (0.21, 0.29, 0.63, 0.71),
    (0.71, 0.79, 0.63, 0.71),
)  # costophrenic angles (x0, x1, y0, y1)


def _heart_width(image) -> float:
    """Mean count of heart-bright pixels per row across the lower heart (rows 64-72%, columns 20-80%)."""
    return float((_region(image, 0.2, 0.8, 0.64, 0.72) > 140).sum(axis=1).mean())


FINDING_EXAMPLES = {
    name: Finding(name, kind={DEVICE: "pacemaker", FX: "6", LESION: "nodule"}.get(name, ""), zone="mid")
    for name in FINDINGS
}


@pytest.mark.parametrize("name", FINDINGS)
@pytest.mark.parametrize("severity", [0.3, 0.8])
def test_every_finding_changes_the_frontal_image_even_when_subtle(name, severity):
    finding = FINDING_EXAMPLES[name]
    if name == FX:
        finding = Finding(FX, kind="6", side="left")
    changed = np.abs(_render([Finding(**{**finding.__dict__, "severity": severity})]) - _render([]))
    assert changed.max() > 25 and (changed > 10).sum() >= 4, f"{name} at severity {severity}"


def test_pose_and_noise_make_every_image_different(world, entries):
    images = [(world.parent / "images" / p).read_bytes() for e in entries for p in e["image_path"]]
    assert len(set(images)) == len(images)
    a, b = _render([], seed=1), _render([], seed=2)
    assert np.abs(a - b).mean() > 3


def test_effusion_fills_its_costophrenic_angle_only():
    right = _render([Finding(EFF, side="right", severity=0.5)]) - _render([])
    right_angle = _region(right, *RIGHT_ANGLE).mean()  # the patient's right is the image's left
    left_angle = _region(right, *LEFT_ANGLE).mean()
    assert right_angle > 40 and abs(left_angle) < 2


def test_cardiomegaly_widens_the_heart_silhouette():
    normal, enlarged = _heart_width(_render([])), _heart_width(_render([Finding(CARDIO, severity=0.8)]))
    assert enlarged - normal > 0.06 * 2 * SIZE * 0.8  # both borders move out


def test_pneumothorax_shows_a_pleural_line_and_darker_lung_without_markings_beyond_it():
    diff = _render([Finding(PTX, side="left", severity=0.8, zone="upper")]) - _render([])
    outer = _region(diff, 0.78, 0.82, 0.22, 0.4)  # patient's left apex-lateral, beyond the line
    assert outer.mean() < -5
    assert diff[:, SIZE // 2 :].max() > 25  # the bright visceral pleural line
    assert np.abs(diff[:, : SIZE // 2 - 10]).max() < 1  # the other lung is untouched


def test_world_images_show_heart_size_and_effusion_at_population_level(world, entries):
    """Measured on the world's own frontal images: wider hearts with cardiomegaly, brighter
    costophrenic angles with an effusion."""
    cardio, eff = OBSERVATIONS.index("Cardiomegaly"), OBSERVATIONS.index("Pleural Effusion")
    widths, angles = {True: [], False: []}, {True: [], False: []}
    for e in entries:
        image = np.asarray(Image.open(world.parent / "images" / e["image_path"][0]), dtype=float)
        if e["labels"][eff] not in (POSITIVE, UNCERTAIN):
            widths[e["labels"][cardio] == POSITIVE].append(_heart_width(image))
        corners = (_region(image, *RIGHT_ANGLE).mean() + _region(image, *LEFT_ANGLE).mean()) / 2
        angles[e["labels"][eff] == POSITIVE].append(corners)
    assert np.mean(widths[True]) > np.mean(widths[False]) + 8
    assert np.mean(angles[True]) > np.mean(angles[False]) + 10


def test_hedged_findings_are_drawn_fainter_than_stated_ones(drawn_studies):
    severities = {True: [], False: []}
    for study, _ in drawn_studies:
        for f in study.findings:
            if f.observation != DEVICE:
                severities[f.certain].append(f.severity)
    assert max(severities[False]) < min(severities[True])


def test_world_texts_returns_every_report_in_split_order(world, entries):
    assert world_texts(world) == [e["report"] for e in entries]


# ------------------------------------------------------------------------------------------ the labeler


def test_rule_labeler_recovers_world_labels(entries):
    """RuleLabeler on the world's reports: presence (positive/uncertain vs not) micro-F1 >= 0.98 over the
    14 observations against the ``labels`` field; exact 4-way agreement is printed (run with -s)."""
    rules = pytest.importorskip("rewards.rules")
    reports = [e["report"] for e in entries]
    truth = np.array([e["labels"] for e in entries])
    predicted = np.asarray(rules.RuleLabeler().label(reports))
    present_true, present_pred = (
        np.isin(truth, (POSITIVE, UNCERTAIN)),
        np.isin(predicted, (POSITIVE, UNCERTAIN)),
    )
    tp = (present_true & present_pred).sum()
    micro_f1 = 2 * tp / (present_true.sum() + present_pred.sum())
    exact = (truth == predicted).mean()
    print(
        f"\nrule labeler on {len(reports)} world reports: presence micro-F1 {micro_f1:.4f}, 4-way agreement {exact:.4f}"
    )
    wrong = [
        f"{OBSERVATIONS[j]}: truth {truth[i, j]} got {predicted[i, j]} in {reports[i]!r}"
        for i, j in zip(*np.nonzero(present_true != present_pred))
    ]
    assert micro_f1 >= 0.98, "\n".join(wrong[:15])
