"""evaluate.py and evaluation.score_reports: the files an evaluation writes, their layout, bad-input errors,
--compare, --curves and the promise that rule-based scoring loads no torch models."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import evaluate
from evaluation.outputs import labels_csv_header
from evaluation.plots import CURVES_PNG, curve_panels, read_metrics_jsonl
from evaluation.score import score_reports
from rewards.vocabulary import NEGATIVE, OBSERVATIONS, POSITIVE, UNCERTAIN

REPO = Path(__file__).resolve().parents[1]
_CODES = {"pos": POSITIVE, "neg": NEGATIVE, "unc": UNCERTAIN}


class KeyLabeler:
    """A test labeler that reads labels spelled out in the text: 'Edema: pos; Cardiomegaly: neg'."""

    name = "key"

    def label(self, texts):
        codes = np.zeros((len(texts), len(OBSERVATIONS)), dtype=np.int64)
        for row, text in enumerate(texts):
            for part in filter(None, (p.strip() for p in text.split(";"))):
                label, value = (s.strip() for s in part.split(":"))
                codes[row, OBSERVATIONS.index(label)] = _CODES[value]
        return codes


ROWS = [
    # id, reference, prediction
    ("s1", "Edema: pos; Cardiomegaly: neg", "Edema: pos; Cardiomegaly: pos"),
    ("s2", "Pleural Effusion: unc; Atelectasis: pos", "Pleural Effusion: pos"),
    ("s3", "Cardiomegaly: neg", ""),
]


def write_csv(path: Path, header: list[str], rows: list[tuple]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def key_labeler(monkeypatch):
    monkeypatch.setattr(evaluate, "build_labeler", lambda args: KeyLabeler())


@pytest.fixture
def predictions_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "preds.csv", ["id", "reference", "prediction"], ROWS)


def run_cli(*argv) -> int:
    return evaluate.main([str(a) for a in argv])


def test_predictions_mode_writes_every_file_in_the_documented_layout(tmp_path, predictions_csv, key_labeler):
    out = tmp_path / "eval"
    assert run_cli("--predictions", predictions_csv, "--out", out, "--no-nlg", "--no-plots") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["n_reports"] == 3 and metrics["uncertain_as"] == "negative" and metrics["labeler"] == "rules"
    )
    for subset in ("14", "5"):
        for average in ("micro", "macro", "example"):
            figures = metrics["ce"][subset][average]
            assert set(figures) == {"precision", "recall", "f1"}
            assert all(0.0 <= v <= 1.0 for v in figures.values())
    assert list(metrics["per_label"]) == list(OBSERVATIONS)
    assert metrics["polarity"]["total"]["omission"] == 2  # s2 Atelectasis, s3 Cardiomegaly
    assert metrics["settings"]["uncertain_as"] == "negative" and metrics["settings"]["mode"] == "predictions"
    assert "format_compliance" not in metrics  # no generated texts were given

    with (out / "labels.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == labels_csv_header()
    by_id = {r[0]: dict(zip(rows[0], r)) for r in rows[1:]}
    assert by_id["s1"]["ref:Cardiomegaly"] == "0" and by_id["s1"]["pred:Cardiomegaly"] == "1"
    assert by_id["s2"]["ref:Pleural Effusion"] == "-1" and by_id["s3"]["pred:Cardiomegaly"] == ""

    with (out / "reports.csv").open(newline="") as f:
        reports = list(csv.DictReader(f))
    assert [r["id"] for r in reports] == ["s1", "s2", "s3"]
    assert reports[0]["prediction"] == ROWS[0][2] and reports[0]["generated"] == ""

    summary = (out / "summary.md").read_text()
    assert "| Method | Precision | Recall | F1 |" in summary
    assert "| eval |" in summary  # the row is named after the output folder by default


def test_predictions_mode_figures_match_hand_computation(tmp_path, predictions_csv, key_labeler):
    out = tmp_path / "eval"
    run_cli("--predictions", predictions_csv, "--out", out, "--no-nlg", "--no-plots")
    ce = json.loads((out / "metrics.json").read_text())["ce"]
    # Uncertain as negative. Positives: ref {s1 Edema, s2 Atelectasis}; pred {s1 Edema, s1 Cardiomegaly,
    # s2 Pleural Effusion}. tp 1, fp 2, fn 1.
    assert ce["14"]["micro"] == pytest.approx({"precision": 1 / 3, "recall": 1 / 2, "f1": 2 / 5})
    # Example-based: s1 P 1/2 R 1 F1 2/3; s2 P 0 R 0 F1 0; s3 nothing anywhere -> 0.
    assert ce["14"]["example"] == pytest.approx({"precision": 1 / 6, "recall": 1 / 3, "f1": 2 / 9})
    # Macro over 14: only Edema has F1 1 (P 1, R 1); Atelectasis R 0; the rest 0.
    assert ce["14"]["macro"] == pytest.approx({"precision": 1 / 14, "recall": 1 / 14, "f1": 1 / 14})


def test_uncertain_as_positive_is_applied_and_stated(tmp_path, predictions_csv, key_labeler):
    out = tmp_path / "eval"
    run_cli(
        "--predictions", predictions_csv, "--out", out, "--uncertain-as", "positive", "--no-nlg", "--no-plots"
    )
    metrics = json.loads((out / "metrics.json").read_text())
    # s2's uncertain effusion now matches the predicted positive: tp 2, fp 1, fn 1.
    assert metrics["uncertain_as"] == "positive"
    assert metrics["ce"]["14"]["micro"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    assert "uncertain counted as positive" in (out / "summary.md").read_text()


def test_ids_in_only_one_file_are_a_clear_error(tmp_path, key_labeler, capsys):
    preds = write_csv(tmp_path / "preds.csv", ["id", "prediction"], [("s1", "Edema: pos"), ("s9", "")])
    refs = write_csv(tmp_path / "refs.csv", ["id", "reference"], [("s1", "Edema: pos"), ("s2", "")])
    rc = run_cli(
        "--predictions", preds, "--references", refs, "--out", tmp_path / "e", "--no-nlg", "--no-plots"
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "only in" in err and "'s9'" in err and "'s2'" in err and "preds.csv" in err and "refs.csv" in err
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_separate_references_file_is_joined_by_id_not_by_order(tmp_path, key_labeler):
    preds = write_csv(tmp_path / "p.csv", ["id", "prediction"], [("a", "Edema: pos"), ("b", "Edema: neg")])
    refs = write_csv(tmp_path / "r.csv", ["id", "reference"], [("b", "Edema: neg"), ("a", "Edema: pos")])
    out = tmp_path / "e"
    assert run_cli("--predictions", preds, "--references", refs, "--out", out, "--no-nlg", "--no-plots") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["polarity"]["Edema"]["agree"] == 2 and metrics["ce"]["14"]["micro"]["f1"] == 1.0


def test_duplicated_ids_are_an_error_naming_the_file_and_id(tmp_path, key_labeler, capsys):
    preds = write_csv(
        tmp_path / "dup.csv", ["id", "reference", "prediction"], [("s1", "", ""), ("s1", "", "")]
    )
    assert run_cli("--predictions", preds, "--out", tmp_path / "e", "--no-nlg", "--no-plots") == 2
    err = capsys.readouterr().err
    assert "dup.csv" in err and "duplicated id" in err and "'s1'" in err


def test_missing_column_is_an_error_naming_it(tmp_path, predictions_csv, key_labeler, capsys):
    rc = run_cli("--predictions", predictions_csv, "--prediction-column", "report", "--out", tmp_path / "e")
    err = capsys.readouterr().err
    assert rc == 2 and "'report'" in err and "preds.csv" in err


def test_generated_column_gives_format_compliance(tmp_path, key_labeler):
    full = ["<think>edema</think><report>Edema: pos</report>", "Edema: pos"]  # compliant, then no tags
    preds = write_csv(
        tmp_path / "p.csv",
        ["id", "reference", "prediction", "generated"],
        [("a", "Edema: pos", "Edema: pos", full[0]), ("b", "Edema: pos", "Edema: pos", full[1])],
    )
    out = tmp_path / "e"
    args = ("--predictions", preds, "--generated-column", "generated", "--out", out, "--no-nlg", "--no-plots")
    assert run_cli(*args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["format_compliance"] == {"rate": 0.5, "mean_reward": 0.5, "n": 2}
    with (out / "reports.csv").open(newline="") as f:
        assert [r["generated"] for r in csv.DictReader(f)] == full


def test_extract_report_labels_only_the_report_and_keeps_the_full_output(tmp_path, key_labeler):
    full = "<think>Cardiomegaly: pos</think><report>Edema: pos</report>"  # reasoning must not be labeled
    preds = write_csv(tmp_path / "p.csv", ["id", "reference", "prediction"], [("a", "Edema: pos", full)])
    out = tmp_path / "e"
    assert run_cli("--predictions", preds, "--extract-report", "--out", out, "--no-nlg", "--no-plots") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["per_label"]["Cardiomegaly"]["predicted"] == 0 and metrics["ce"]["14"]["micro"]["f1"] == 1.0
    )
    assert metrics["format_compliance"]["rate"] == 1.0
    with (out / "reports.csv").open(newline="") as f:
        row = next(csv.DictReader(f))
    assert (row["prediction"], row["generated"]) == ("Edema: pos", full)


def test_score_reports_rejects_mismatched_inputs(tmp_path):
    with pytest.raises(ValueError, match="one entry per report"):
        score_reports(["a", "b"], ["x"], ["y", "z"], labeler=KeyLabeler(), out_dir=tmp_path, nlg=False)
    with pytest.raises(ValueError, match="duplicated id"):
        score_reports(["a", "a"], ["", ""], ["", ""], labeler=KeyLabeler(), out_dir=tmp_path, nlg=False)

    class ShortLabeler(KeyLabeler):
        def label(self, texts):
            return super().label(texts)[:1]

    with pytest.raises(ValueError, match="1 label rows for 2"):
        score_reports(["a", "b"], ["", ""], ["", ""], labeler=ShortLabeler(), out_dir=tmp_path, nlg=False)


def test_nlg_figures_are_included_when_available(tmp_path):
    """BLEU / ROUGE-L / CIDEr from rewards.nlg land in metrics.json and summary.md (METEOR off: java is slow)."""
    pytest.importorskip("pycocoevalcap")
    refs, preds = (
        ["no pleural effusion . heart size is normal ."] * 2,
        ["heart size is normal .", "no effusion ."],
    )
    metrics = score_reports(
        ["a", "b"], refs, preds, labeler=KeyLabelerIgnoringText(), out_dir=tmp_path, plots=False, meteor=False
    )
    assert {"BLEU_1", "BLEU_4", "ROUGE_L", "CIDEr"} <= set(metrics["nlg"]) and "METEOR" not in metrics["nlg"]
    assert 0.0 < metrics["nlg"]["BLEU_1"] <= 1.0
    assert "## NLG" in (tmp_path / "summary.md").read_text()


class KeyLabelerIgnoringText:
    def label(self, texts):
        return np.zeros((len(texts), len(OBSERVATIONS)), dtype=np.int64)


def test_plots_are_drawn_when_matplotlib_is_installed(tmp_path):
    pytest.importorskip("matplotlib")
    metrics = score_reports(
        [r[0] for r in ROWS],
        [r[1] for r in ROWS],
        [r[2] for r in ROWS],
        labeler=KeyLabeler(),
        out_dir=tmp_path,
        nlg=False,
    )
    assert metrics["plots"] == ["per_label_f1.png", "polarity_errors.png"]
    for name in metrics["plots"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_plots_are_skipped_with_the_extra_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    metrics = score_reports(
        ["a"], ["Edema: pos"], ["Edema: pos"], labeler=KeyLabeler(), out_dir=tmp_path, nlg=False
    )
    assert ".[plots]" in metrics["plots_unavailable"] and "plots" not in metrics
    assert (tmp_path / "metrics.json").exists()


def _evaluation_folder(tmp_path: Path, name: str, rows, dataset="iu_xray") -> Path:
    out = tmp_path / name
    score_reports(
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        labeler=KeyLabeler(),
        out_dir=out,
        nlg=False,
        plots=False,
        dataset=dataset,
    )
    return out


def test_compare_prints_one_row_per_folder_and_marks_the_best(tmp_path, capsys):
    weak = _evaluation_folder(tmp_path, "Base", [("a", "Edema: pos", ""), ("b", "Atelectasis: pos", "")])
    strong = _evaluation_folder(
        tmp_path, "GRPO", [("a", "Edema: pos", "Edema: pos"), ("b", "Atelectasis: pos", "")]
    )
    assert run_cli("--compare", weak, strong, "--table-average", "micro", "--out", tmp_path / "cmp") == 0
    table = capsys.readouterr().out
    assert "| Method | IU X-Ray Precision | IU X-Ray Recall | IU X-Ray F1 |" in table
    assert "| Base | <u>0.00</u> | <u>0.00</u> | <u>0.00</u> |" in table
    assert "| GRPO | **100.00** | **50.00** | **66.67** |" in table  # micro: tp 1, fp 0, fn 1
    assert table == (tmp_path / "cmp" / "compare.md").read_text() + "\n"  # the same table is saved


def test_compare_puts_each_dataset_in_its_own_column_group(tmp_path, capsys):
    iu = _evaluation_folder(tmp_path, "iu", [("a", "Edema: pos", "Edema: pos")], dataset="iu_xray")
    mimic = _evaluation_folder(tmp_path, "mimic", [("a", "Edema: pos", "Edema: pos")], dataset="mimic_cxr")
    run_cli("--compare", iu, mimic, "--table-average", "micro")
    table = capsys.readouterr().out
    assert "IU X-Ray F1 | MIMIC-CXR Precision" in table
    assert "| iu | 100.00 | 100.00 | 100.00 | — | — | — |" in table


def test_compare_of_a_folder_without_metrics_is_a_clear_error(tmp_path, capsys):
    assert run_cli("--compare", tmp_path) == 2
    assert "no metrics.json" in capsys.readouterr().err


METRICS_JSONL = [
    {"step": 1, "loss": 0.5, "reward": 0.2, "reward/mccs": 0.1, "reward/format": 0.4, "kl": 0.0, "clip_frac": 0.0,
     "completion_len": 30.0, "lr": 1e-6},
    {"step": 2, "loss": 0.4, "reward": 0.3, "reward/mccs": 0.2, "reward/format": 0.5, "kl": 0.01, "clip_frac": 0.1,
     "completion_len": 28.0, "lr": 2e-6, "grad_norm": 1.0},
    {"step": 2, "eval/f1": 0.3},
]  # fmt: skip


def test_curve_panels_group_reward_terms_kl_clip_and_length(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in METRICS_JSONL) + "\n\n")
    panels = curve_panels(read_metrics_jsonl(path))
    assert list(panels) == [
        "reward",
        "KL to reference",
        "clip fraction",
        "completion length (tokens)",
        "loss",
        "learning rate",
    ]
    assert set(panels["reward"]) == {"reward", "reward/mccs", "reward/format"}
    assert panels["KL to reference"]["kl"] == ([1.0, 2.0], [0.0, 0.01])


def test_malformed_metrics_jsonl_line_is_reported_by_number(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "reward": 0.1}\n{"step": 2, "rew\n')
    with pytest.raises(ValueError, match="line 2"):
        read_metrics_jsonl(path)


def test_curves_mode_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in METRICS_JSONL))
    assert run_cli("--run", run, "--curves", "--out", tmp_path / "plots") == 0
    assert (tmp_path / "plots" / CURVES_PNG).read_bytes()[:4] == b"\x89PNG"


def test_curves_mode_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(METRICS_JSONL[0]))
    with pytest.raises(SystemExit, match=r"\.\[plots\]"):
        run_cli("--run", run, "--curves")


def test_rule_labeler_scoring_loads_no_torch_or_transformers(tmp_path):
    """The whole predictions mode (rule labeler, NLG, plots) in a fresh interpreter: no torch, no transformers."""
    preds = write_csv(
        tmp_path / "p.csv",
        ["id", "reference", "prediction"],
        [("a", "Small left pleural effusion. No pneumothorax.", "No pleural effusion or pneumothorax.")],
    )
    script = (
        "import sys, evaluate\n"
        f"rc = evaluate.main(['--predictions', {str(preds)!r}, '--out', {str(tmp_path / 'e')!r}, '--no-meteor'])\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print('RC', rc, 'HEAVY', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert "RC 0 HEAVY []" in result.stdout, result.stdout + result.stderr
    labels = {r["id"]: r for r in csv.DictReader((tmp_path / "e" / "labels.csv").open(newline=""))}
    assert labels["a"]["ref:Pleural Effusion"] == "1" and labels["a"]["pred:Pleural Effusion"] == "0"


def test_a_200k_character_prediction_is_scored(tmp_path):
    """Longer than csv's default field limit (131,072): a degenerate generation must still be scored."""
    long = "No pleural effusion. " * 10_000  # 210,000 characters
    preds = write_csv(tmp_path / "p.csv", ["id", "reference", "prediction"], [("a", "No effusion.", long)])
    out = tmp_path / "e"
    assert run_cli("--predictions", preds, "--out", out, "--no-nlg", "--no-plots") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_reports"] == 1 and metrics["polarity"]["Pleural Effusion"]["agree"] == 1


def test_a_utf8_decode_error_names_the_file_and_the_line(tmp_path, key_labeler, capsys):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"id,reference,prediction\ns1,Edema: pos,Edema: pos\ns2,Edema: pos,caf\xe9\n")
    assert run_cli("--predictions", path, "--out", tmp_path / "e", "--no-nlg", "--no-plots") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "latin1.csv: line 3 is not valid UTF-8" in err[0]
