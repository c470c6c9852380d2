"""Scoring against the true labels (evaluation.truth), one report per study, and evaluate.py --compare's
paired bootstrap table; at the end, the README's path: train, then base / SFT / GRPO evaluations, compared."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_evaluate_cli import KeyLabeler  # a labeler that reads "Edema: pos" spelled out

import evaluate
from evaluation.bootstrap import compare_folders
from evaluation.score import score_reports
from evaluation.truth import TRUTH_FILE, first_per_study, match_truth, one_sample_per_study, read_truth
from rewards.vocabulary import BLANK, NEGATIVE, NO_FINDING, OBSERVATIONS, POSITIVE


def codes(**labels) -> list[int]:
    """14 codes from keyword names (spaces as underscores): codes(Edema=POSITIVE)."""
    row = [BLANK] * len(OBSERVATIONS)
    for name, value in labels.items():
        row[OBSERVATIONS.index(name.replace("_", " "))] = value
    if not any(row[i] == POSITIVE for i in range(NO_FINDING)):
        row[NO_FINDING] = POSITIVE
    return row


# Four studies; the reference of s2 names Edema the truth does not have (a labeler / report error),
# the reference of s4 misses the truth's Cardiomegaly.
TRUTH = {
    "s1": codes(Edema=POSITIVE),
    "s2": codes(Cardiomegaly=NEGATIVE),
    "s3": codes(Pleural_Effusion=POSITIVE, Atelectasis=POSITIVE),
    "s4": codes(Cardiomegaly=POSITIVE),
}
REFERENCES = {
    "s1": "Edema: pos",
    "s2": "Edema: pos; Cardiomegaly: neg",
    "s3": "Pleural Effusion: pos; Atelectasis: pos",
    "s4": "Cardiomegaly: neg",
}
# A model that writes exactly the truth: perfect against the truth, not against the references.
EXACT = {
    "s1": "Edema: pos",
    "s2": "Cardiomegaly: neg; No Finding: pos",
    "s3": "Pleural Effusion: pos; Atelectasis: pos",
    "s4": "Cardiomegaly: pos",
}


@pytest.fixture
def annotation(tmp_path):
    """An R2Gen annotation with true labels; s1 and s3 have two views."""
    views = {"s1": 2, "s2": 1, "s3": 2, "s4": 1}
    entries = [
        {"id": i, "report": REFERENCES[i], "image_path": [f"{i}/{v}.png" for v in range(views[i])],
         "split": "test", "labels": TRUTH[i]}
        for i in TRUTH
    ]  # fmt: skip
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps({"train": [], "val": [], "test": entries}))
    return path


@pytest.fixture
def key_labeler(monkeypatch):
    monkeypatch.setattr(evaluate, "build_labeler", lambda args: KeyLabeler())


def write_predictions(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "reference", "prediction"])
        writer.writerows(rows)
    return path


def per_image_rows(predictions):
    """Rows per image, as the per-image samples name them (<id>/<view>); the second view's prediction is
    empty, so scoring it instead of the first view would show."""
    rows = []
    for i in TRUTH:
        if i in ("s1", "s3"):
            rows.append((f"{i}/1", REFERENCES[i], ""))
        rows.append((f"{i}/0", REFERENCES[i], predictions[i]))
    return rows


def test_first_per_study_keeps_each_study_once_in_order():
    assert first_per_study(["a", "a", "b", "c", "b"]) == [0, 2, 3]


def test_one_sample_per_study_keeps_each_synthetic_studys_first_view(tmp_path):
    from data.r2gen import load_annotation
    from data.synthetic import generate_world

    world = generate_world(tmp_path / "world", n=12, seed=0, image_size=32)
    samples = load_annotation(world, "train")
    kept = one_sample_per_study(samples)
    assert len(kept) == len({s.study_id for s in samples}) < len(samples)  # some studies have two views
    assert all(s.id.endswith("/0") and s.labels is not None for s in kept)


def test_match_truth_keeps_the_first_view_and_names_unknown_ids(annotation):
    truth = read_truth(annotation)
    kept, codes_ = match_truth(["s1/1", "s1/0", "s2", "s3/0"], truth, "preds.csv")
    assert kept == [1, 2, 3]
    assert codes_.tolist() == [TRUTH["s1"], TRUTH["s2"], TRUTH["s3"]]
    with pytest.raises(ValueError, match=r"preds.csv.*'s9'"):
        match_truth(["s1", "s9"], truth, "preds.csv")


def test_annotation_without_labels_is_a_clear_error(tmp_path):
    path = tmp_path / "iu.json"
    path.write_text(json.dumps({"test": [{"id": "x", "report": "r", "image_path": ["x.png"]}]}))
    with pytest.raises(ValueError, match="'x'.*no 'labels'"):
        read_truth(path)


def test_predictions_mode_scores_against_the_truth_one_report_per_study(
    tmp_path, annotation, key_labeler, capsys
):
    preds = write_predictions(tmp_path / "preds.csv", per_image_rows(EXACT))
    out = tmp_path / "eval"
    code = evaluate.main(
        ["--predictions", str(preds), "--out", str(out), "--truth", str(annotation), "--no-nlg", "--no-plots"]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_reports"] == 4  # one per study: the empty second views were not scored
    # Writing the truth is perfect against it; against the flawed references it is not.
    assert metrics["truth"]["ce"]["14"]["micro"]["f1"] == 1.0
    assert metrics["truth"]["ce"]["14"]["macro"]["recall"] == pytest.approx(
        np.mean([1.0 if any(TRUTH[s][i] == POSITIVE for s in TRUTH) else 0.0 for i in range(14)])
    )
    assert metrics["ce"]["14"]["micro"]["f1"] < 1.0
    # The references' own error against the truth: s2's Edema (fp) and s4's Cardiomegaly (fn).
    assert metrics["truth"]["references_ce"]["14"]["micro"]["precision"] < 1.0
    assert metrics["truth"]["references_ce"]["14"]["micro"]["recall"] < 1.0
    with (out / TRUTH_FILE).open() as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["s1/0", "s2/0", "s3/0", "s4/0"]
    assert rows[3]["truth:Cardiomegaly"] == "1"
    summary = (out / "summary.md").read_text()
    assert "Against the true labels" in summary and "labeler error" in summary
    printed = capsys.readouterr().out
    assert "one report per study: 4 of 6 rows" in printed and "true labels" in printed


def test_rescoring_without_truth_removes_a_stale_truth_file(tmp_path):
    ids, refs = ["a", "b"], ["Edema: pos", "Edema: neg"]
    score_reports(
        ids,
        refs,
        refs,
        labeler=KeyLabeler(),
        out_dir=tmp_path,
        nlg=False,
        plots=False,
        truth_codes=np.array([codes(Edema=POSITIVE), codes(Edema=NEGATIVE)]),
    )
    assert (tmp_path / TRUTH_FILE).exists()
    score_reports(ids, refs, refs, labeler=KeyLabeler(), out_dir=tmp_path, nlg=False, plots=False)
    assert not (tmp_path / TRUTH_FILE).exists()
    assert "truth" not in json.loads((tmp_path / "metrics.json").read_text())


def score_folder(tmp_path, name, predictions, truth=True):
    ids = list(TRUTH)
    score_reports(
        ids, [REFERENCES[i] for i in ids], [predictions[i] for i in ids], labeler=KeyLabeler(),
        out_dir=tmp_path / name, nlg=False, plots=False, method=name,
        truth_codes=np.array([TRUTH[i] for i in ids]) if truth else None,
    )  # fmt: skip
    return tmp_path / name


def test_compare_prints_each_rows_difference_to_the_first_with_its_interval(tmp_path, capsys):
    empty = score_folder(tmp_path, "base", dict.fromkeys(TRUTH, ""))
    exact = score_folder(tmp_path, "exact", EXACT)
    assert evaluate.main(["--compare", str(empty), str(exact), str(empty), "--bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    assert "against the true labels" in printed and "200 resamples" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| base") or line.startswith("| exact")]
    table = rows[-3:]  # the difference table follows the P / R / F1 table
    assert table[0] == "| base | 0.00 | — | 0.00 | — |"
    assert table[1].startswith("| exact | 100.00 | +100.00 [+100.00, +100.00] |")
    assert table[2].startswith("| base | 0.00 | +0.00 [+0.00, +0.00] |")


def test_compare_folders_uses_the_references_when_a_folder_lacks_the_truth(tmp_path):
    base = score_folder(tmp_path, "base", dict.fromkeys(TRUTH, ""))
    exact_truth = score_folder(tmp_path, "exact", EXACT)
    with_truth = compare_folders(base, exact_truth, n_resamples=100)
    assert with_truth["micro"].other == 1.0
    exact_refs = score_folder(tmp_path, "exact-no-truth", EXACT, truth=False)
    without = compare_folders(base, exact_refs, n_resamples=100)
    assert without["micro"].other < 1.0  # against the flawed references


def test_compare_of_folders_with_different_studies_is_a_clear_error(tmp_path, capsys):
    base = score_folder(tmp_path, "base", dict.fromkeys(TRUTH, ""))
    other = tmp_path / "other"
    score_reports(
        ["s1", "s2"],
        ["Edema: pos", ""],
        ["", ""],
        labeler=KeyLabeler(),
        out_dir=other,
        nlg=False,
        plots=False,
        truth_codes=np.array([TRUTH["s1"], TRUTH["s2"]]),
    )
    assert evaluate.main(["--compare", str(base), str(other)]) == 2
    assert "different studies" in capsys.readouterr().err


@pytest.mark.slow
def test_readme_path_base_sft_grpo_evaluated_on_test_studies_and_compared(tiny_model_dir, tmp_path, capsys):
    """train.py's SFT warm start then GRPO; the README's three evaluate.py calls and --compare."""
    import train
    from data.synthetic import generate_world
    from grpo.config import load_config

    world = generate_world(tmp_path / "world", n=40, seed=0, image_size=56)
    run = tmp_path / "run"
    cfg = load_config(None, [
        f"model.path={tiny_model_dir}", f"data.annotation={world}", f"output_dir={run}", "device=cpu",
        "model.lora.rank=8", "model.lora.alpha=16", "sampling.max_new_tokens=6", "batch.prompts_per_device=2",
        "max_steps=1", "sft.steps=2", "save_every=100",
    ])  # fmt: skip
    assert train.train(cfg, resume=False) == 0
    assert (run / "sft" / "final_adapter").is_dir() and (run / "final_adapter").is_dir()

    common = ["--split", "test", "--no-nlg", "--no-plots", "--max-new-tokens", "6"]
    assert evaluate.main(["--run", str(run), *common, "--no-adapter"]) == 0
    assert evaluate.main(["--run", str(run / "sft"), *common]) == 0
    assert evaluate.main(["--run", str(run), *common]) == 0
    folders = [run / "eval-test-base", run / "sft" / "eval-test-final", run / "eval-test-final"]
    studies = json.loads(world.read_text())["test"]
    for folder, method in zip(folders, ["Base", "SFT (final)", "GRPO (final)"]):
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["method"] == method
        assert metrics["n_reports"] == len(studies)  # one report per study, though some have two views
        assert "truth" in metrics and (folder / TRUTH_FILE).is_file()
    capsys.readouterr()
    assert evaluate.main(["--compare", *map(str, folders), "--bootstrap", "100"]) == 0
    printed = capsys.readouterr().out
    assert "| Base | " in printed and "| SFT (final) | " in printed and "| GRPO (final) | " in printed
    assert "against the true labels" in printed
