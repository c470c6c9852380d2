"""Optional report metrics other papers give beside CE: BERTScore and RadGraph F1, each through its
maintained package (``pip install -e '.[metrics]'``: bert-score, radgraph), off by default.

Both run only from weights the user has on disk: ``evaluate.py --bertscore DIR`` (a Hugging Face encoder
folder, e.g. a local roberta-large or distilroberta-base) and ``--radgraph DIR`` (the extracted RadGraph
archive: config.json, vocabulary/, weights.th) with ``--radgraph-bert DIR`` when the archive's config names
its BERT by hub id. Nothing is downloaded: paths are checked before any scoring and every problem is one
line naming the option or the extra.

A scorer is an object with ``name`` and ``score(references, predictions) -> dict``; ``score_reports``
stores each result under ``metrics[name]``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rewards.labeling import PROGRESS_MIN_REPORTS

RADGRAPH_FILES = ("config.json", "weights.th", "vocabulary")
RADGRAPH_MODELS = ("radgraph", "radgraph-xl", "modern-radgraph-xl")
RADGRAPH_LEVELS = ("simple", "partial", "complete")  # entity-only, entity+relation partial, complete


class MetricUnavailable(ValueError):
    """An optional metric cannot run: a missing package, path or option (the message names it)."""


def _local_folder(path: str | Path | None, option: str, what: str) -> Path:
    if path is None:
        raise MetricUnavailable(f"{option} needs a local folder of {what}")
    path = Path(path)
    if not path.is_dir():
        raise MetricUnavailable(f"{option} {path}: no such folder (give a local folder of {what})")
    return path


class BERTScore:
    """Mean BERTScore precision / recall / F1 of predictions against references (bert-score package)."""

    name = "bertscore"

    def __init__(
        self, model_dir: str | Path, num_layers: int | None = None, device: str = "cpu", batch_size: int = 32
    ):
        self.model_dir = _local_folder(
            model_dir, "--bertscore", "a Hugging Face encoder (config.json, weights)"
        )
        try:
            import bert_score  # noqa: F401
        except ImportError:
            raise MetricUnavailable(
                "--bertscore needs the bert-score package: pip install -e '.[metrics]'"
            ) from None
        config = self.model_dir / "config.json"
        if not config.is_file():
            raise MetricUnavailable(
                f"--bertscore {self.model_dir}: no config.json (not a Hugging Face model)"
            )
        layers = json.loads(config.read_text(encoding="utf-8")).get("num_hidden_layers")
        self.num_layers = num_layers or layers  # default: the last layer
        if not self.num_layers or (layers and not 1 <= self.num_layers <= layers):
            raise MetricUnavailable(f"--bertscore-layers must be in 1..{layers}, got {self.num_layers}")
        self.device, self.batch_size = device, batch_size

    def score(self, references: Sequence[str], predictions: Sequence[str]) -> dict:
        from bert_score import BERTScorer

        scorer = BERTScorer(
            model_type=str(self.model_dir),
            num_layers=self.num_layers,
            device=self.device,
            batch_size=self.batch_size,
        )
        positions = getattr(scorer._model.config, "max_position_embeddings", None)
        if positions and scorer._tokenizer.model_max_length > positions:  # a folder that leaves it unset
            scorer._tokenizer.model_max_length = positions
        precision, recall, f1 = scorer.score(
            list(predictions), list(references), verbose=len(predictions) >= PROGRESS_MIN_REPORTS
        )
        return {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
            "model": self.model_dir.name,
            "num_layers": self.num_layers,
            "rescaled": False,
        }


class RadGraphF1:
    """Mean RadGraph F1 (simple, partial, complete reward levels) of predictions against references."""

    name = "radgraph"

    def __init__(
        self,
        model_dir: str | Path,
        bert_dir: str | Path | None = None,
        model_type: str = "radgraph",
        batch_size: int = 1,
        device: str = "cpu",
    ):
        what = "the extracted RadGraph archive (config.json, vocabulary/, weights.th)"
        self.model_dir = _local_folder(model_dir, "--radgraph", what)
        missing = [name for name in RADGRAPH_FILES if not (self.model_dir / name).exists()]
        if missing:
            raise MetricUnavailable(
                f"--radgraph {self.model_dir}: missing {', '.join(missing)} (expected {what})"
            )
        if model_type not in RADGRAPH_MODELS:
            raise MetricUnavailable(f"--radgraph-model must be one of {RADGRAPH_MODELS}, got {model_type!r}")
        try:
            import radgraph  # noqa: F401
        except ImportError:
            raise MetricUnavailable(
                "--radgraph needs the radgraph package: pip install -e '.[metrics]'"
            ) from None
        self.config = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))
        bert_name = self.config["model"]["embedder"]["token_embedders"]["bert"]["model_name"]
        if bert_dir is not None:
            self.bert = str(
                _local_folder(bert_dir, "--radgraph-bert", f"the BERT model RadGraph uses ({bert_name})")
            )
        elif Path(bert_name).is_dir():
            self.bert = bert_name
        else:
            raise MetricUnavailable(
                f"--radgraph {self.model_dir}: its config names the BERT model {bert_name!r}, which is not a local "
                "folder; give its local copy with --radgraph-bert DIR"
            )
        self.model_type, self.batch_size, self.device = model_type, batch_size, device

    def _staged_cache(self, root: Path) -> Path:
        """radgraph reads ``<cache>/<model_type>/``: stage the user's folder there, the BERT path set locally."""
        staged = root / self.model_type
        staged.mkdir()
        for name in ("weights.th", "vocabulary"):
            (staged / name).symlink_to((self.model_dir / name).resolve())
        config = json.loads(json.dumps(self.config))
        config["model"]["embedder"]["token_embedders"]["bert"]["model_name"] = self.bert
        config["dataset_reader"]["token_indexers"]["bert"]["model_name"] = self.bert
        (staged / "config.json").write_text(json.dumps(config), encoding="utf-8")
        return root

    def score(self, references: Sequence[str], predictions: Sequence[str]) -> dict:
        from radgraph import F1RadGraph

        root = Path(tempfile.mkdtemp(prefix="radgraph-"))
        try:
            scorer = F1RadGraph(
                reward_level="all",
                model_type=self.model_type,
                batch_size=self.batch_size,
                cuda=-1 if self.device == "cpu" else 0,
                model_cache_dir=str(self._staged_cache(root)),
            )
            mean_rewards = scorer(refs=list(references), hyps=list(predictions))[0]
        finally:
            shutil.rmtree(root, ignore_errors=True)
        out = {f"f1_{level}": float(value) for level, value in zip(RADGRAPH_LEVELS, mean_rewards)}
        return {**out, "model": self.model_type}


def extra_metrics_markdown(metrics: dict) -> str | None:
    """summary.md's section for whichever of BERTScore / RadGraph F1 were computed (None: neither)."""
    lines = []
    if "bertscore" in metrics:
        b = metrics["bertscore"]
        lines.append(
            f"| BERTScore F1 (P / R) | {b['f1']:.4f} ({b['precision']:.4f} / {b['recall']:.4f}) "
            f"| `{b['model']}`, layer {b['num_layers']}, not rescaled |"
        )
    if "radgraph" in metrics:
        r = metrics["radgraph"]
        lines.append(
            f"| RadGraph F1 partial (simple / complete) | {r['f1_partial']:.4f} "
            f"({r['f1_simple']:.4f} / {r['f1_complete']:.4f}) | `{r['model']}` |"
        )
    if not lines:
        return None
    return "\n".join(["| Metric | Value | Model |", "|---|---|---|", *lines]) + "\n"
