"""Generate a report for every sample of a split with a training run's model (base, checkpoint or final adapter).

One report per study by default (its first view, as R2Gen scores IU X-Ray; evaluation.truth), since a
study is the unit that is scored; ``per_study=False`` generates for every image.

Resumable: each finished batch is appended to ``<out>/generations[.rankR].jsonl``; ids already there are not
generated again. Under torchrun each rank takes every world_size-th sample and rank 0 merges the files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass
class Decoding:
    max_new_tokens: int | None = None  # None: the run's sampling.max_new_tokens
    do_sample: bool = False  # greedy by default
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 8
    engine: str | None = None  # None: the run's sampling.engine (model/engine: static | hf)


def resolve_adapter(run_dir: Path, checkpoint: int | None, no_adapter: bool) -> Path | None:
    """The adapter folder to evaluate: none (the base), a checkpoint's, or the run's final adapter."""
    if no_adapter:
        return None
    if checkpoint is not None:
        path = run_dir / "checkpoints" / f"step-{checkpoint:06d}" / "adapter"
        if not path.is_dir():
            from grpo.checkpoint import list_checkpoints

            kept = ", ".join(p.name for p in list_checkpoints(run_dir)) or "none"
            raise FileNotFoundError(f"{path} does not exist (checkpoints kept in {run_dir}: {kept})")
        return path
    final = run_dir / "final_adapter"
    if final.is_dir():
        return final
    from grpo.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise FileNotFoundError(
            f"{run_dir} has no final_adapter and no checkpoint; use --no-adapter for the base"
        )
    return latest / "adapter"


def _read_done(path: Path) -> dict[str, dict]:
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["id"]] = row
    return done


def generate_split(
    run_dir: Path,
    split: str,
    out_dir: Path,
    checkpoint: int | None = None,
    no_adapter: bool = False,
    decoding: Decoding | None = None,
    device: str = "auto",
    per_study: bool = True,
) -> list[dict]:
    """Rows ``{"id", "study_id", "reference", "generated", "labels"}`` for every sample of ``split`` (the
    first of each study when ``per_study``; rank 0 gets all). ``labels`` are the true codes, or None."""
    from data.batching import collate_prompts
    from grpo import distributed
    from grpo.run_dir import read_run_config
    from model.generation import split_completions

    decoding = decoding or Decoding()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = read_run_config(run_dir)
    info = distributed.setup(device)
    d = cfg.data
    samples = d.load_samples(split)
    if per_study:
        from evaluation.truth import one_sample_per_study

        samples = one_sample_per_study(samples)
    mine = samples[info.rank :: info.world_size]
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f".rank{info.rank}" if info.enabled else ""
    part_file = out_dir / f"generations{suffix}.jsonl"
    done = _read_done(part_file)
    todo = [s for s in mine if s.id not in done]
    adapter = resolve_adapter(run_dir, checkpoint, no_adapter)
    log.info(
        "generating %d of %d %s samples (%d already done) with %s",
        len(todo),
        len(mine),
        split,
        len(mine) - len(todo),
        adapter or "the base model",
    )

    if todo:
        model, processor = cfg.model.load_trained(info.device, adapter)
        tokenizer = processor.tokenizer
        engine = cfg.sampling.engine_for(decoding.engine)
        log.info("generation engine: %s", decoding.engine or cfg.sampling.engine)
        # every field that shapes the distribution comes from here, none from the checkpoint; the stop and
        # suppressed ids (the tokens training never drew) are the run's
        params = cfg.sampling.params(
            model,
            processor,
            max_new_tokens=decoding.max_new_tokens or cfg.sampling.max_new_tokens,
            do_sample=decoding.do_sample,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            min_new_tokens=0,
            num_samples=1,
        )
        with open(part_file, "a") as sink, torch.no_grad():
            batches = range(0, len(todo), decoding.batch_size)
            for start in tqdm(batches, disable=not info.is_main, desc=f"generate {split}"):
                batch_samples = todo[start : start + decoding.batch_size]
                batch = {
                    k: v.to(info.device)
                    for k, v in collate_prompts(processor, batch_samples, d.prompt).items()
                }
                tokens = engine.generate(model, batch, params).tokens
                ids, _, _ = split_completions(tokens, list(params.stop_ids), tokenizer.pad_token_id)
                texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
                for sample, text in zip(batch_samples, texts):
                    row = {
                        "id": sample.id,
                        "study_id": sample.study_id,
                        "reference": sample.report,
                        "generated": text,
                    }
                    sink.write(json.dumps(row) + "\n")
                    done[sample.id] = row
                sink.flush()

    distributed.barrier()
    if not info.is_main:
        return []
    rows: dict[str, dict] = {}
    parts = (
        [out_dir / f"generations.rank{r}.jsonl" for r in range(info.world_size)]
        if info.enabled
        else [part_file]
    )
    for part in parts:
        rows.update(_read_done(part))
    missing = [s.id for s in samples if s.id not in rows]
    if missing:
        raise RuntimeError(
            f"{len(missing)} samples have no generation (e.g. {missing[0]}); run again to finish"
        )
    return [{**rows[s.id], "labels": s.labels} for s in samples]
