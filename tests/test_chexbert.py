"""CheXbert loading and inference with a tiny random BERT saved the way the released chexbert.pth is saved."""

import numpy as np
import pytest
import torch

from rewards.chexbert import CheXbertLabeler, CheXbertLoadError, CheXbertModel, clean_report
from rewards.vocabulary import NO_FINDING, NUM_OBSERVATIONS

WORDS = ["no", "pleural", "effusion", "heart", "size", "normal", "mild", "cardio", "##megaly", "."]


def tiny_config(**overrides):
    from transformers import BertConfig

    settings = dict(
        vocab_size=5 + len(WORDS),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=512,
    )
    settings.update(overrides)
    return BertConfig(**settings)


@pytest.fixture
def tokenizer_dir(tmp_path):
    folder = tmp_path / "bert-tiny"
    folder.mkdir()
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n"
    )
    tiny_config().save_pretrained(folder)  # config.json beside the vocabulary, read by the labeler
    return folder


def save_released_style(model, path, extra=None, drop=None):
    """Save as CheXbert's training script does: DataParallel keys under 'model_state_dict'."""
    state = {f"module.{k}": v for k, v in model.state_dict().items() if k != drop}
    state.update(extra or {})
    torch.save({"epoch": 3, "model_state_dict": state, "optimizer_state_dict": {}}, path)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = CheXbertModel(tiny_config())
    path = tmp_path / "chexbert.pth"
    save_released_style(model, path, extra={"module.bert.embeddings.position_ids": torch.arange(512)[None]})
    return path, model


def test_loaded_weights_equal_saved_ones(checkpoint, tokenizer_dir):
    path, model = checkpoint
    labeler = CheXbertLabeler(path, tokenizer_dir)
    loaded = labeler.model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_label_shapes_codes_and_agreement_with_direct_forward(checkpoint, tokenizer_dir):
    path, model = checkpoint
    labeler = CheXbertLabeler(path, tokenizer_dir, batch_size=2)
    texts = ["No pleural effusion.", "mild cardiomegaly", "", "heart size normal.\n\n no  effusion", "zzz"]
    codes = labeler.label(texts)
    assert codes.shape == (5, NUM_OBSERVATIONS) and codes.dtype == np.int64
    assert codes[:, :NO_FINDING].max() <= 3 and set(codes[:, NO_FINDING]) <= {0, 1}
    model.eval()
    for i, text in enumerate(texts):  # one at a time, no padding: the batched, length-sorted path must agree
        ids = torch.tensor([labeler.encode([text])[0]])
        logits = model(ids, torch.ones_like(ids))
        assert codes[i].tolist() == [int(head.argmax()) for head in logits]


def test_empty_input_list_gives_empty_array(checkpoint, tokenizer_dir):
    labeler = CheXbertLabeler(checkpoint[0], tokenizer_dir)
    assert labeler.label([]).shape == (0, NUM_OBSERVATIONS)


def test_clean_report_and_truncation_to_512_ending_in_sep(checkpoint, tokenizer_dir):
    assert clean_report("  No effusion.\n\nHeart   normal. ") == "No effusion. Heart normal."
    labeler = CheXbertLabeler(checkpoint[0], tokenizer_dir)
    ids = labeler.encode(["no effusion " * 400])[0]
    assert len(ids) == 512
    assert ids[0] == labeler.tokenizer.cls_token_id and ids[-1] == labeler.tokenizer.sep_token_id
    assert labeler.label(["no effusion " * 400]).shape == (1, NUM_OBSERVATIONS)


def test_bare_state_dict_without_prefix_also_loads(tmp_path, tokenizer_dir):
    model = CheXbertModel(tiny_config())
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    assert CheXbertLabeler(path, tokenizer_dir).label(["no effusion"]).shape == (1, NUM_OBSERVATIONS)


def test_missing_key_is_named(tmp_path, tokenizer_dir):
    path = tmp_path / "partial.pth"
    save_released_style(CheXbertModel(tiny_config()), path, drop="linear_heads.13.weight")
    with pytest.raises(CheXbertLoadError, match=r"missing weights: linear_heads\.13\.weight"):
        CheXbertLabeler(path, tokenizer_dir)


def test_wrong_shapes_are_named(tmp_path, tokenizer_dir):
    path = tmp_path / "wide.pth"
    save_released_style(CheXbertModel(tiny_config(hidden_size=32, num_attention_heads=2)), path)
    with pytest.raises(CheXbertLoadError, match=r"wide\.pth.*has shape"):
        CheXbertLabeler(path, tokenizer_dir)


def test_not_a_torch_file_is_named(tmp_path, tokenizer_dir):
    path = tmp_path / "notes.pth"
    path.write_text("this is not a checkpoint")
    with pytest.raises(CheXbertLoadError, match=r"notes\.pth is not a readable torch file"):
        CheXbertLabeler(path, tokenizer_dir)


def test_checkpoint_without_model_state_dict_is_named(tmp_path, tokenizer_dir):
    path = tmp_path / "other.pth"
    torch.save({"epoch": 1, "weights": [1, 2]}, path)
    with pytest.raises(CheXbertLoadError, match=r"other\.pth has no 'model_state_dict'"):
        CheXbertLabeler(path, tokenizer_dir)


def test_missing_files_are_named(tmp_path, checkpoint, tokenizer_dir):
    with pytest.raises(CheXbertLoadError, match="absent.pth does not exist"):
        CheXbertLabeler(tmp_path / "absent.pth", tokenizer_dir)
    with pytest.raises(CheXbertLoadError, match="no-such-dir does not exist"):
        CheXbertLabeler(checkpoint[0], tmp_path / "no-such-dir")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(CheXbertLoadError, match="has no vocab.txt"):
        CheXbertLabeler(checkpoint[0], empty_dir)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_labeler_matches_cpu(checkpoint, tokenizer_dir):
    texts = ["No pleural effusion.", "mild cardiomegaly", "", "heart size normal. no effusion"] * 5
    cpu = CheXbertLabeler(checkpoint[0], tokenizer_dir, batch_size=4)
    gpu = CheXbertLabeler(checkpoint[0], tokenizer_dir, device="cuda", batch_size=4)
    codes = gpu.label(texts)
    assert codes.shape == (20, NUM_OBSERVATIONS) and codes.dtype == np.int64
    ids = torch.tensor([cpu.encode([texts[3]])[0]])
    with torch.no_grad():
        cpu_logits = torch.cat(cpu.model(ids, torch.ones_like(ids)), dim=1)
        gpu_logits = torch.cat(gpu.model(ids.cuda(), torch.ones_like(ids).cuda()), dim=1).cpu()
    assert torch.allclose(cpu_logits, gpu_logits, atol=1e-4)
