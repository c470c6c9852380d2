"""BERTScore (a tiny local BERT built from a config) and RadGraph F1 (a fake radgraph package: the real one
needs its released weights) through evaluate.py: off by default, local paths only, one-line errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

import evaluate
from evaluation.field_metrics import BERTScore, MetricUnavailable, RadGraphF1

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = SPECIAL + [
    "the",
    "heart",
    "is",
    "normal",
    "enlarged",
    "no",
    "pleural",
    "effusion",
    "lungs",
    "are",
    "clear",
    "mild",
    "cardiomegaly",
    ".",
]


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer BERT with a 22-word WordPiece vocabulary, saved like a Hugging Face folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)  # model_max_length left unset
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def write_predictions(path, rows):
    path.write_text("id,reference,prediction\n" + "".join(f"{i},{r},{p}\n" for i, r, p in rows))
    return path


ROWS = [
    ("s1", "the heart is normal .", "the heart is normal ."),
    ("s2", "mild cardiomegaly .", "no pleural effusion ."),
]


def test_bertscore_from_a_local_model(tiny_bert_dir):
    pytest.importorskip("bert_score")
    scorer = BERTScore(tiny_bert_dir)
    same = scorer.score(["the heart is normal ."], ["the heart is normal ."])
    different = scorer.score(["mild cardiomegaly ."], ["no pleural effusion ."])
    assert same["f1"] == pytest.approx(1.0, abs=1e-5) and different["f1"] < 0.95
    assert same["num_layers"] == 2 and same["model"] == tiny_bert_dir.name and same["rescaled"] is False


def test_evaluate_adds_bertscore_only_when_asked(tmp_path, tiny_bert_dir):
    pytest.importorskip("bert_score")
    preds = write_predictions(tmp_path / "preds.csv", ROWS)
    common = ["--predictions", preds, "--no-nlg", "--no-plots"]
    assert evaluate.main([str(a) for a in [*common, "--out", tmp_path / "plain"]]) == 0
    assert "bertscore" not in json.loads((tmp_path / "plain" / "metrics.json").read_text())
    argv = [*common, "--out", tmp_path / "bs", "--bertscore", tiny_bert_dir, "--bertscore-layers", "1"]
    assert evaluate.main([str(a) for a in argv]) == 0
    metrics = json.loads((tmp_path / "bs" / "metrics.json").read_text())
    assert metrics["bertscore"]["num_layers"] == 1 and 0 < metrics["bertscore"]["f1"] < 1
    assert "| BERTScore F1 (P / R) |" in (tmp_path / "bs" / "summary.md").read_text()


def test_missing_package_or_path_is_one_line_naming_the_extra_or_option(
    tmp_path, tiny_bert_dir, monkeypatch, capsys
):
    preds = write_predictions(tmp_path / "preds.csv", ROWS)
    argv = ["--predictions", preds, "--out", tmp_path / "x", "--bertscore", tmp_path / "nowhere"]
    assert evaluate.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--bertscore" in err and "nowhere" in err
    assert not (tmp_path / "x").exists()  # checked before anything ran
    monkeypatch.setitem(sys.modules, "bert_score", None)
    with pytest.raises(MetricUnavailable, match=r"bert-score package: pip install -e '\.\[metrics\]'"):
        BERTScore(tiny_bert_dir)
    monkeypatch.setitem(sys.modules, "radgraph", None)
    with pytest.raises(MetricUnavailable, match=r"radgraph package: pip install -e '\.\[metrics\]'"):
        RadGraphF1(radgraph_folder(tmp_path / "rg", "bert-base-uncased"))


def radgraph_folder(folder, bert_name):
    """The layout of an extracted RadGraph archive (the weights are not read by the fake package)."""
    (folder / "vocabulary").mkdir(parents=True)
    (folder / "weights.th").write_bytes(b"")
    bert = {"model_name": bert_name, "max_length": 512}
    config = {
        "model": {"embedder": {"token_embedders": {"bert": bert}}},
        "dataset_reader": {"token_indexers": {"bert": dict(bert)}},
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def fake_radgraph(monkeypatch):
    """A stand-in ``radgraph`` package: F1RadGraph reads the staged folder and scores word overlap."""
    seen = {}

    class F1RadGraph:
        def __init__(self, reward_level, model_type, model_cache_dir, **kwargs):
            staged = json.loads(Path(model_cache_dir, model_type, "config.json").read_text())
            seen.update(
                reward_level=reward_level,
                model_type=model_type,
                kwargs=kwargs,
                bert=staged["model"]["embedder"]["token_embedders"]["bert"]["model_name"],
            )

        def __call__(self, refs, hyps):
            overlap = [
                len(set(r.split()) & set(h.split())) / len(set(r.split()) | set(h.split()))
                for r, h in zip(refs, hyps)
            ]
            mean = sum(overlap) / len(overlap)
            return (mean, mean / 2, mean / 4), None, None, None

    module = types.ModuleType("radgraph")
    module.F1RadGraph = F1RadGraph
    monkeypatch.setitem(sys.modules, "radgraph", module)
    return seen


def test_radgraph_runs_from_local_folders_only(tmp_path, fake_radgraph, tiny_bert_dir):
    folder = radgraph_folder(tmp_path / "radgraph-model", "microsoft/BiomedVLP-CXR-BERT")
    with pytest.raises(
        MetricUnavailable, match="not a local folder; give its local copy with --radgraph-bert"
    ):
        RadGraphF1(folder)
    result = RadGraphF1(folder, bert_dir=tiny_bert_dir).score(["a b", "c d"], ["a b", "c e"])
    assert result == {
        "f1_simple": pytest.approx(2 / 3),
        "f1_partial": pytest.approx(1 / 3),
        "f1_complete": pytest.approx(1 / 6),
        "model": "radgraph",
    }
    assert fake_radgraph["reward_level"] == "all" and fake_radgraph["bert"] == str(tiny_bert_dir)
    with pytest.raises(MetricUnavailable, match="missing weights.th"):
        (folder / "weights.th").unlink()
        RadGraphF1(folder, bert_dir=tiny_bert_dir)


def test_evaluate_writes_radgraph_f1(tmp_path, fake_radgraph, tiny_bert_dir):
    folder = radgraph_folder(tmp_path / "rg", str(tiny_bert_dir))  # config already names a local BERT
    preds = write_predictions(tmp_path / "preds.csv", ROWS)
    argv = ["--predictions", preds, "--out", tmp_path / "e", "--no-nlg", "--no-plots", "--radgraph", folder]
    assert evaluate.main([str(a) for a in argv]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["radgraph"]["f1_simple"] == pytest.approx((1 + 1 / 6) / 2)  # word overlap of ROWS
    assert "| RadGraph F1 partial (simple / complete) |" in (tmp_path / "e" / "summary.md").read_text()
