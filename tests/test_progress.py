"""Progress bars on long labeling runs, with the same labels as labeling all at once."""

from __future__ import annotations

import numpy as np

from rewards.label_csv import main as label_main
from rewards.labeling import PROGRESS_MIN_REPORTS, label_with_progress
from rewards.rules import RuleLabeler

SENTENCES = (
    "Mild cardiomegaly.",
    "No pleural effusion.",
    "Possible left lower lobe atelectasis.",
    "Normal chest.",
)


def reports(n: int) -> list[str]:
    return [f"{SENTENCES[i % 4]} {SENTENCES[(i * 7 + 1) % 4]}" for i in range(n)]


def test_many_reports_show_a_bar_and_get_the_same_codes(capsys):
    texts = reports(PROGRESS_MIN_REPORTS + 100)
    codes = label_with_progress(RuleLabeler(), texts, desc="label references")
    err = capsys.readouterr().err
    assert "label references" in err and f"{len(texts)}/{len(texts)}" in err
    np.testing.assert_array_equal(codes, RuleLabeler().label(texts))


def test_few_reports_show_no_bar(capsys):
    label_with_progress(RuleLabeler(), reports(20))
    assert capsys.readouterr().err == ""


def test_label_cli_shows_progress_on_a_large_file(tmp_path, capsys):
    texts = reports(PROGRESS_MIN_REPORTS)
    src = tmp_path / "reports.csv"
    src.write_text("report\n" + "".join(f'"{t}"\n' for t in texts))
    assert label_main(["--in", str(src), "--out", str(tmp_path / "labels.csv")]) == 0
    assert f"{len(texts)}/{len(texts)}" in capsys.readouterr().err
    assert len((tmp_path / "labels.csv").read_text().splitlines()) == len(texts) + 1
