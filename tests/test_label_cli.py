"""The labeling CLI (python -m rewards.label_csv) and make_labeler: output layout, CSV values, one-line errors."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import rewards.label_csv as label_cli
from rewards.labeling import make_labeler
from rewards.vocabulary import NEGATIVE, OBSERVATIONS, POSITIVE, UNCERTAIN, codes_to_csv_rows

REPO = Path(__file__).resolve().parents[1]


class StubLabeler:
    """Positive for 'effusion', negative for 'no effusion', uncertain for 'possible effusion'."""

    def label(self, texts):
        codes = np.zeros((len(texts), len(OBSERVATIONS)), dtype=np.int64)
        column = OBSERVATIONS.index("Pleural Effusion")
        for i, text in enumerate(texts):
            if "no effusion" in text:
                codes[i, column] = NEGATIVE
            elif "possible effusion" in text:
                codes[i, column] = UNCERTAIN
            elif "effusion" in text:
                codes[i, column] = POSITIVE
        return codes


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def run_module(*args):
    return subprocess.run(
        [sys.executable, "-m", "rewards.label_csv", *map(str, args)], cwd=REPO, capture_output=True, text=True
    )


def test_one_row_per_input_row_id_first_and_chexpert_values(tmp_path, monkeypatch):
    monkeypatch.setattr(label_cli, "make_labeler", lambda *args, **kwargs: StubLabeler())
    rows = [
        ["s1", "small effusion", "x"],
        ["s2", "no effusion.\nheart normal", "y"],  # a multi-line cell stays one row
        ["s3", "possible effusion", "z"],
        ["s4", "", "w"],
    ]
    source = write_csv(tmp_path / "in.csv", ["id", "report", "other"], rows)
    assert label_cli.main(["--in", str(source), "--out", str(tmp_path / "out.csv")]) == 0
    table = read_csv(tmp_path / "out.csv")
    assert table[0] == ["id", *OBSERVATIONS]
    assert [r[0] for r in table[1:]] == ["s1", "s2", "s3", "s4"]
    effusion = 1 + OBSERVATIONS.index("Pleural Effusion")
    assert [r[effusion] for r in table[1:]] == ["1", "0", "-1", ""]
    assert all(cell == "" for r in table[1:] for i, cell in enumerate(r[1:], 1) if i != effusion)


def test_without_id_column_the_observations_come_first(tmp_path, monkeypatch):
    monkeypatch.setattr(label_cli, "make_labeler", lambda *args, **kwargs: StubLabeler())
    source = write_csv(tmp_path / "in.csv", ["text"], [["effusion"]])
    assert label_cli.main(["--in", str(source), "--column", "text", "--out", str(tmp_path / "o.csv")]) == 0
    assert read_csv(tmp_path / "o.csv")[0] == list(OBSERVATIONS)


def test_missing_column_is_one_line_exit_2_naming_it(tmp_path):
    source = write_csv(tmp_path / "in.csv", ["id", "impression"], [["a", "b"]])
    result = run_module("--in", source, "--column", "findings", "--out", tmp_path / "o.csv")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "'findings'" in result.stderr and "in.csv" in result.stderr and "impression" in result.stderr


def test_unreadable_file_is_one_line_exit_2_naming_it(tmp_path):
    result = run_module("--in", tmp_path / "absent.csv", "--out", tmp_path / "o.csv")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert "absent.csv" in result.stderr


def test_non_utf8_file_is_reported(tmp_path, capsys):
    source = tmp_path / "latin.csv"
    source.write_bytes(b"report\n\xff\xfe effusion\n")
    assert label_cli.main(["--in", str(source), "--out", str(tmp_path / "o.csv")]) == 2
    assert "latin.csv" in capsys.readouterr().err


def tiny_chexbert(tmp_path):
    from transformers import BertConfig

    from rewards.chexbert import CheXbertModel

    words = ["no", "effusion", "heart", "normal", "."]
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n"
    )
    config = BertConfig(
        vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    )
    config.save_pretrained(folder)
    torch.manual_seed(1)
    state = {f"module.{k}": v for k, v in CheXbertModel(config).state_dict().items()}
    torch.save({"model_state_dict": state}, tmp_path / "chexbert.pth")
    return tmp_path / "chexbert.pth", folder


def test_chexbert_labeler_through_the_cli(tmp_path):
    checkpoint, tokenizer = tiny_chexbert(tmp_path)
    texts = ["no effusion.", "heart normal", "effusion"]
    source = write_csv(tmp_path / "in.csv", ["report"], [[t] for t in texts])
    args = ["--in", source, "--out", tmp_path / "o.csv", "--labeler", "chexbert"]
    args += ["--chexbert", checkpoint, "--tokenizer", tokenizer, "--batch-size", "2"]
    assert label_cli.main([str(a) for a in args]) == 0
    expected = make_labeler("chexbert", checkpoint, tokenizer).label(texts)
    written = read_csv(tmp_path / "o.csv")[1:]
    assert written == [["" if v is None else str(v) for v in row] for row in codes_to_csv_rows(expected)]


def test_wrong_checkpoint_is_one_line_exit_2_naming_it(tmp_path, capsys):
    _, tokenizer = tiny_chexbert(tmp_path)
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"\x00not torch")
    source = write_csv(tmp_path / "in.csv", ["report"], [["x"]])
    args = ["--in", source, "--out", tmp_path / "o.csv", "--labeler", "chexbert", "--chexbert", bogus]
    assert label_cli.main([str(a) for a in [*args, "--tokenizer", tokenizer]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bogus.pth" in err
    assert label_cli.main([str(a) for a in args]) == 2, "chexbert without --tokenizer"
    assert "--tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_make_labeler_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown labeler 'bert'.*rules, chexbert"):
        make_labeler("bert")
    with pytest.raises(ValueError, match="needs chexbert_path and tokenizer_dir"):
        make_labeler("chexbert")


def test_make_labeler_default_is_the_rule_labeler():
    labeler = make_labeler()
    assert type(labeler).__name__ == "RuleLabeler"
    assert labeler.label(["no pneumothorax", ""]).shape == (2, len(OBSERVATIONS))
