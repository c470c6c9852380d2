"""CheXbert (Smit et al., 2020): a BERT-base labeler of the 14 CheXpert observations, for users with the weights.

Architecture, matching the released ``chexbert.pth``: a ``BertModel`` encoder; the final hidden state of
the [CLS] token; dropout; 13 linear heads with 4 classes (0 blank, 1 positive, 2 negative, 3 uncertain)
for the findings in CheXbert's order and one 2-class head (0 blank, 1 positive) for No Finding. The class
indices are this project's label codes, so the argmax of each head is the code.

The checkpoint is a dict whose ``model_state_dict`` holds ``module.bert.*`` and ``module.linear_heads.N.*``
(saved from ``nn.DataParallel``); a bare state dict, with or without the ``module.`` prefix, loads too.
``bert.embeddings.position_ids`` (a buffer older transformers saved) is ignored when present. It is read
with ``torch.load(weights_only=True)``: no code in the file is executed.

Text handling follows CheXbert: strip, newlines to spaces, runs of whitespace to one space; a
``bert-base-uncased`` WordPiece tokenizer read from a local directory; sequences longer than 512 tokens
keep the first 511 and end with [SEP]. Nothing is downloaded: every ``from_pretrained`` is local-only.
The BERT config is ``config.json`` in the tokenizer directory when present, else bert-base-uncased's
shape (``BertConfig()`` defaults), or one passed explicitly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rewards.vocabulary import NUM_OBSERVATIONS, validate_codes

MAX_TOKENS = 512
NUM_FINDING_CLASSES = 4  # blank, positive, negative, uncertain
NUM_NO_FINDING_CLASSES = 2  # blank, positive
DATA_PARALLEL_PREFIX = "module."
IGNORED_CHECKPOINT_KEYS = frozenset({"bert.embeddings.position_ids"})

_WHITESPACE = re.compile(r"\s+")


class CheXbertLoadError(ValueError):
    """A CheXbert checkpoint, tokenizer or config that cannot be used; the message names the file."""


def clean_report(text: str) -> str:
    """CheXbert's cleaning: strip, newlines to spaces, collapse whitespace."""
    return _WHITESPACE.sub(" ", text.strip().replace("\n", " ")).strip()


class CheXbertModel(nn.Module):
    """BERT encoder + dropout on the [CLS] state + 13 four-way heads and 1 two-way head (No Finding)."""

    def __init__(self, config, dropout: float = 0.1):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(config)
        self.dropout = nn.Dropout(dropout)
        hidden = config.hidden_size
        heads = [nn.Linear(hidden, NUM_FINDING_CLASSES) for _ in range(NUM_OBSERVATIONS - 1)]
        heads.append(nn.Linear(hidden, NUM_NO_FINDING_CLASSES))
        self.linear_heads = nn.ModuleList(heads)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Logits per head: 13 tensors ``(B, 4)`` then one ``(B, 2)``."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        cls_state = self.dropout(hidden[:, 0, :])
        return [head(cls_state) for head in self.linear_heads]


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Load the checkpoint file and return its state dict with the DataParallel prefix removed."""
    if not path.is_file():
        raise CheXbertLoadError(f"CheXbert checkpoint {path} does not exist or is not a file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a foreign file (UnpicklingError, IndexError...)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheXbertLoadError(
            f"CheXbert checkpoint {path} is not a readable torch file: {reason}"
        ) from None
    if isinstance(payload, dict) and "model_state_dict" in payload:
        state = payload["model_state_dict"]
    elif isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state = payload
    else:
        raise CheXbertLoadError(
            f"CheXbert checkpoint {path} has no 'model_state_dict' entry (found {_describe(payload)})"
        )
    if not isinstance(state, dict):
        raise CheXbertLoadError(f"CheXbert checkpoint {path}: 'model_state_dict' is {type(state).__name__}")
    return {
        (k[len(DATA_PARALLEL_PREFIX) :] if k.startswith(DATA_PARALLEL_PREFIX) else k): v
        for k, v in state.items()
    }


def _describe(payload: object) -> str:
    if isinstance(payload, dict):
        keys = list(payload)[:5]
        return f"keys {keys}" + (" ..." if len(payload) > 5 else "")
    return type(payload).__name__


def _load_weights(model: CheXbertModel, state: dict[str, torch.Tensor], path: Path) -> None:
    """Copy ``state`` into ``model``; every expected key must be present with its shape, nothing extra."""
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k not in IGNORED_CHECKPOINT_KEYS or k in expected}
    missing = [k for k in expected if k not in state]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
        raise CheXbertLoadError(f"CheXbert checkpoint {path} is missing weights: {shown}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (
            f" (and {len(unexpected) - 5} more)" if len(unexpected) > 5 else ""
        )
        raise CheXbertLoadError(f"CheXbert checkpoint {path} has weights this architecture lacks: {shown}")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheXbertLoadError(
                f"CheXbert checkpoint {path}: {key} has shape {tuple(state[key].shape)}, the config "
                f"expects {tuple(tensor.shape)} (is the tokenizer directory's config.json the checkpoint's?)"
            )
    model.load_state_dict(state, strict=True)


def _load_config(tokenizer_dir: Path, config):
    from transformers import BertConfig

    if config is not None:
        return (
            config
            if isinstance(config, BertConfig)
            else BertConfig.from_pretrained(config, local_files_only=True)
        )
    if (tokenizer_dir / "config.json").is_file():
        try:
            return BertConfig.from_pretrained(tokenizer_dir, local_files_only=True)
        except (OSError, ValueError) as error:
            raise CheXbertLoadError(
                f"cannot read BERT config {tokenizer_dir / 'config.json'}: {error}"
            ) from None
    return BertConfig()  # bert-base-uncased: 12 layers, hidden 768, 12 heads, vocab 30522


def _load_tokenizer(tokenizer_dir: Path):
    from transformers import BertTokenizer

    if not (tokenizer_dir / "vocab.txt").is_file():
        raise CheXbertLoadError(
            f"tokenizer directory {tokenizer_dir} has no vocab.txt (a bert-base-uncased folder)"
        )
    try:
        return BertTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except (OSError, ValueError) as error:
        raise CheXbertLoadError(f"cannot load the BERT tokenizer from {tokenizer_dir}: {error}") from None


class CheXbertLabeler:
    """A labeler (``label(texts) -> (N, 14)`` codes) running CheXbert from a local checkpoint and tokenizer.

    ``config``: a ``BertConfig`` or a path to one, overriding the tokenizer directory's ``config.json``.
    """

    def __init__(
        self,
        checkpoint_path: str | os.PathLike,
        tokenizer_dir: str | os.PathLike,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        config=None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.checkpoint_path = Path(checkpoint_path)
        self.tokenizer_dir = Path(tokenizer_dir)
        if not self.tokenizer_dir.is_dir():
            raise CheXbertLoadError(f"tokenizer directory {self.tokenizer_dir} does not exist")
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.tokenizer = _load_tokenizer(self.tokenizer_dir)
        bert_config = _load_config(self.tokenizer_dir, config)
        self.max_tokens = min(MAX_TOKENS, bert_config.max_position_embeddings)
        state = _read_checkpoint(self.checkpoint_path)
        self.model = CheXbertModel(bert_config)
        _load_weights(self.model, state, self.checkpoint_path)
        self.model.to(self.device).eval()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text: [CLS] ... [SEP], at most ``max_tokens`` (first max-1 tokens + [SEP])."""
        cleaned = [clean_report(t) for t in texts]
        encoded = self.tokenizer(cleaned, add_special_tokens=True, truncation=False)["input_ids"]
        sep = self.tokenizer.sep_token_id
        return [ids if len(ids) <= self.max_tokens else ids[: self.max_tokens - 1] + [sep] for ids in encoded]

    @torch.inference_mode()
    def label(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, 14)`` int64 codes; batches are formed from texts of similar length to limit padding."""
        if isinstance(texts, str):
            raise TypeError("label() takes a sequence of report texts, not a single string")
        codes = np.zeros((len(texts), NUM_OBSERVATIONS), dtype=np.int64)
        if not texts:
            return codes
        encoded = self.encode(texts)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        pad = self.tokenizer.pad_token_id or 0
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = max(len(encoded[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[r, : len(encoded[i])] = 1
            logits = self.model(ids.to(self.device), mask.to(self.device))
            batch_codes = torch.stack([head.argmax(dim=1) for head in logits], dim=1)
            codes[rows] = batch_codes.cpu().numpy()
        return validate_codes(codes)
