"""How likely does a model find the reference reports? Mean negative log-likelihood per report token.

Greedy CE-F1 says which sentences a model writes; this says how well it models the reports as a whole. A
warm start that lowers the greedy CE-F1 while leaving this figure where the base has it has not unlearnt the
findings: it has moved the greedy choice between sentences that were close in probability (docs/demo.md).

    python bench/report_nll.py --run runs/demo --no-adapter           # the base model
    python bench/report_nll.py --run runs/demo/sft                     # the SFT warm start
    python bench/report_nll.py --run runs/demo/sft --checkpoint 50     # its step-50 checkpoint

For each study of the split (one per study, all its views in the prompt as the run trains), the teacher-
forced NLL of the reference report's own tokens, twice: inside the run's SFT target template (after the
``<think>`` block and ``<report>``, before ``</report>``, as the formatted policy writes it) and as the report
alone right after the prompt (as the base was pretrained). Only the report's tokens are counted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.batching import append_completion, collate_prompts  # noqa: E402
from evaluation.generate import resolve_adapter  # noqa: E402
from evaluation.truth import one_sample_per_study  # noqa: E402
from grpo.config import load_config  # noqa: E402
from grpo.logprobs import token_logprobs_from_hidden  # noqa: E402
from model.generation import stop_token_ids  # noqa: E402
from model.loading import language_hidden_states, lm_head_weight, load_model_and_processor  # noqa: E402
from model.lora import load_adapter  # noqa: E402


def framed_targets(tokenizer, prefix: str, suffix: str, reports: list[str], stop_id: int):
    """Right-padded ids of ``prefix + report + suffix + stop``, the mask of all of them, and the mask of the
    report's own tokens (the only ones counted). Raises if the report's tokens depend on the frame."""
    head = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    rows, spans = [], []
    for report in reports:
        body = tokenizer(prefix + report, add_special_tokens=False)["input_ids"]
        ids = tokenizer(prefix + report + suffix, add_special_tokens=False)["input_ids"] + [stop_id]
        if body[: len(head)] != head or ids[: len(body)] != body:
            raise ValueError(
                f"{prefix!r} / {suffix!r} tokenize differently around the report {report[:40]!r}"
            )
        rows.append(ids)
        spans.append((len(head), len(body)))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attended = torch.zeros((len(rows), width), dtype=torch.bool)
    counted = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, (start, end)) in enumerate(zip(rows, spans)):
        ids[i, : len(row)] = torch.tensor(row)
        attended[i, : len(row)] = True
        counted[i, start:end] = True
    return ids, attended, counted


@torch.no_grad()
def report_nll(
    model, processor, samples, prompt_cfg, frame: tuple[str, str], stop_id: int, batch_size: int
) -> float:
    """Mean NLL (nats) per token of the reference reports, teacher-forced inside ``frame`` (prefix, suffix)."""
    total, count = 0.0, 0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        prompts = collate_prompts(processor, chunk, prompt_cfg)
        reports = [s.report for s in chunk]
        ids, attended, counted = framed_targets(processor.tokenizer, *frame, reports, stop_id)
        hidden = language_hidden_states(model, **append_completion(prompts, ids, attended))
        prompt_len = prompts["input_ids"].shape[1]  # position p predicts token p + 1: no full-vocab logits
        token_logp = token_logprobs_from_hidden(hidden[:, prompt_len - 1 : -1], lm_head_weight(model), ids)
        total -= (token_logp * counted).sum().item()
        count += int(counted.sum())
    return total / count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a training run folder")
    parser.add_argument("--no-adapter", action="store_true", help="the run's base model")
    parser.add_argument(
        "--checkpoint", type=int, help="a kept checkpoint's adapter (its step), not the final one"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=20)
    args = parser.parse_args(argv)

    cfg = load_config(args.run / "config.yaml")
    m = cfg.model
    model, processor = load_model_and_processor(
        m.path, device="cpu", dtype="float32", min_pixels=m.min_pixels, max_pixels=m.max_pixels
    )
    adapter = resolve_adapter(args.run, args.checkpoint, args.no_adapter)
    if adapter is not None:
        model = load_adapter(model, adapter, is_trainable=False).merge_and_unload()
    model.eval()
    samples = one_sample_per_study(cfg.data.load_samples(args.split))
    stop_id = stop_token_ids(model, processor.tokenizer)[0]
    template = tuple(cfg.sft.target_template.split("{report}"))
    print(f"{adapter or 'base model'}: {len(samples)} {args.split} studies, NLL per report token (nats)")
    for name, frame in (("in the SFT template", template), ("report alone", ("", ""))):
        nll = report_nll(model, processor, samples, cfg.data.prompt, frame, stop_id, args.batch_size)
        print(f"  {name:20s} {nll:.4f}")


if __name__ == "__main__":
    main()
