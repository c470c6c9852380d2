"""The field's CE figures (micro/macro-F1 over 14, micro-F1 over 5, both uncertain conventions) and the
paper's Table I view of evaluation folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

import evaluate
from evaluation.ce_table import field_figures, paper_table_markdown
from evaluation.score import score_reports
from rewards.vocabulary import BLANK, CE5, NEGATIVE, OBSERVATIONS, POSITIVE, UNCERTAIN

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def random_codes(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.choice([BLANK, POSITIVE, NEGATIVE, UNCERTAIN], size=(n, len(OBSERVATIONS)))
    codes[:, -1] = rng.choice([BLANK, POSITIVE], size=n)  # No Finding is blank or positive
    return codes


class TableLabeler:
    """Labels each text by looking it up: texts are keys of a dict of code rows."""

    name = "table"

    def __init__(self, rows: dict[str, np.ndarray]):
        self.rows = rows

    def label(self, texts):
        return np.stack([self.rows[t] for t in texts])


def test_field_figures_match_sklearn_under_both_conventions():
    ref, pred = random_codes(40, 0), random_codes(40, 1)
    field = field_figures(ref, pred, labeler="rules")
    assert len(field["figures"]) == 6
    ce5 = [OBSERVATIONS.index(name) for name in CE5]
    for figure in field["figures"]:
        assert figure["labeler"] == "rules"
        truth = np.isin(ref, [POSITIVE, UNCERTAIN] if figure["uncertain_as"] == "positive" else [POSITIVE])
        guess = np.isin(pred, [POSITIVE, UNCERTAIN] if figure["uncertain_as"] == "positive" else [POSITIVE])
        if figure["labels"] == "5":
            truth, guess = truth[:, ce5], guess[:, ce5]
        expected = sklearn_metrics.f1_score(truth, guess, average=figure["average"], zero_division=0)
        assert figure["f1"] == pytest.approx(expected)
    by_name = {(f["figure"], f["uncertain_as"]): f["f1"] for f in field["figures"]}
    assert {name for name, _ in by_name} == {"micro_f1_14", "macro_f1_14", "micro_f1_5"}
    assert by_name["micro_f1_14", "negative"] != by_name["micro_f1_14", "positive"]  # uncertain labels matter


def score_folder(out, dataset, method, seed, n=12):
    ref, pred = random_codes(n, seed), random_codes(n, seed + 100)
    rows = {f"ref{i}": ref[i] for i in range(n)} | {f"pred{i}": pred[i] for i in range(n)}
    return score_reports(
        [f"s{i}" for i in range(n)],
        [f"ref{i}" for i in range(n)],
        [f"pred{i}" for i in range(n)],
        labeler=TableLabeler(rows),
        out_dir=out,
        nlg=False,
        plots=False,
        method=method,
        dataset=dataset,
    )


def test_metrics_json_and_summary_name_labeler_and_convention_beside_each_figure(tmp_path):
    metrics = score_folder(tmp_path / "eval", "iu_xray", "GRPO", seed=3)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["ce_field"] == metrics["ce_field"]
    assert saved["ce_field"]["by_convention"]["negative"]["14"] == saved["ce"]["14"]  # default convention
    summary = (tmp_path / "eval" / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| CE ")]
    assert len(rows) == 6
    assert all("`table`" in row for row in rows)
    assert (
        sum("as negative (R2Gen" in row for row in rows) == 3
        and sum("as positive" in row for row in rows) == 3
    )
    micro14 = next(f for f in metrics["ce_field"]["figures"] if f["figure"] == "micro_f1_14")
    assert f"| CE micro-F1, 14 observations | {100 * micro14['f1']:.2f} |" in summary


def test_paper_table_has_table_i_columns_and_one_row_per_method(tmp_path, capsys):
    a_iu = score_folder(tmp_path / "a_iu", "iu_xray", "MRG-R1 (ours)", seed=1)
    a_mimic = score_folder(tmp_path / "a_mimic", "mimic_cxr", "MRG-R1 (ours)", seed=2)
    b_iu = score_folder(tmp_path / "b_iu", "iu_xray", "Base", seed=4)
    argv = ["--paper-table", tmp_path / "b_iu", tmp_path / "a_iu", tmp_path / "a_mimic", "--out", tmp_path]
    assert evaluate.main([str(a) for a in argv]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[2] == (
        "| Method | IU X-Ray Precision | IU X-Ray Recall | IU X-Ray F1 | MIMIC-CXR Precision "
        "| MIMIC-CXR Recall | MIMIC-CXR F1 |"
    )
    assert "macro" in lines[0] and "`table`" in lines[0] and "uncertain counted as negative" in lines[0]
    base, ours = lines[4].split(" | "), lines[5].split(" | ")
    assert base[0] == "| Base" and base[4:] == ["—", "—", "— |"]  # no MIMIC-CXR evaluation
    assert ours[0] == "| MRG-R1 (ours)"
    strip = lambda cell: cell.strip("|* <u/>")  # noqa: E731
    assert strip(ours[6]) == f"{100 * a_mimic['ce']['14']['macro']['f1']:.2f}"
    assert strip(ours[3]) == f"{100 * a_iu['ce']['14']['macro']['f1']:.2f}"
    assert strip(base[3]) == f"{100 * b_iu['ce']['14']['macro']['f1']:.2f}"
    better = ours if a_iu["ce"]["14"]["macro"]["f1"] > b_iu["ce"]["14"]["macro"]["f1"] else base
    assert better[3].startswith("**")  # the best F1 on IU X-Ray is bold
    assert (tmp_path / "paper_table.md").read_text().splitlines()[2] == lines[2]


def test_paper_table_uses_the_asked_convention(tmp_path):
    metrics = score_folder(tmp_path / "iu", "iu_xray", "M", seed=5)
    table = paper_table_markdown([tmp_path / "iu"], average="micro", uncertain_as="positive")
    f1 = metrics["ce_field"]["by_convention"]["positive"]["14"]["micro"]["f1"]
    assert f"{100 * f1:.2f} |" in table.splitlines()[-1] and "uncertain counted as positive" in table


def test_paper_table_rejects_a_dataset_outside_table_i(tmp_path):
    score_folder(tmp_path / "syn", "synthetic", "M", seed=6)
    with pytest.raises(ValueError, match="'synthetic' is not a column of Table I.*--dataset iu_xray"):
        paper_table_markdown([tmp_path / "syn"])


def test_paper_table_on_an_older_folder_needs_its_own_convention(tmp_path):
    score_folder(tmp_path / "old", "iu_xray", "M", seed=7)
    path = tmp_path / "old" / "metrics.json"
    metrics = json.loads(path.read_text())
    del metrics["ce_field"]  # a folder scored before both conventions were stored
    path.write_text(json.dumps(metrics))
    assert "| M |" in paper_table_markdown([tmp_path / "old"], uncertain_as="negative")
    with pytest.raises(ValueError, match="uncertain as negative only"):
        paper_table_markdown([tmp_path / "old"], uncertain_as="positive")
