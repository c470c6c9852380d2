"""The demo's pretrained base model: a small Qwen2.5-VL that can read the synthetic world's images.

The paper starts GRPO from a pretrained medical VLM that already sees the findings; a randomly initialised
model cannot, and GRPO then has nothing to select on. This module makes the offline stand-in:

1. a pretraining world: studies drawn by `data.synthetic` with their own seed (``world_seed``), so they are
   kept apart from the demo world's train / val / test studies;
2. a small Qwen2.5-VL (`model.tiny`: same classes and code paths as the 7B model, sizes in `BASE_SIZES`)
   with a tokenizer trained on the pretraining reports;
3. full-weight training, vision tower included, on "image(s) -> report" with token cross-entropy.

The result is an ordinary checkpoint folder (weights in safetensors, tokenizer, processor, and
``base_recipe.json`` recording how it was made). Same recipe and seed -> the same model on a machine.
The demo then does what the paper does: LoRA SFT, then LoRA GRPO, with the vision tower frozen.

    python -m model.base --out assets/synthetic-base          # rebuild the shipped base (see BaseRecipe)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from model.tiny import TinySizes

logger = logging.getLogger(__name__)

# Wider and deeper than the unit tests' tiny model: enough to learn the report language and to read small
# signs (a rib gap, a nodule, a pleural line) through a vision tower of its own.
BASE_SIZES = TinySizes(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    mrope_section=(4, 6, 6),
    vision_depth=4,
    vision_hidden_size=96,
    vision_intermediate_size=192,
    vision_num_heads=4,
    min_pixels=56 * 56,
    max_pixels=112 * 112,
)


@dataclass(frozen=True)
class BaseRecipe:
    """How the base model is made. Every field is recorded in the checkpoint's ``base_recipe.json``."""

    world_studies: int = 4000  # pretraining studies (the demo world has its own, drawn with another seed)
    world_seed: int = 1001  # != the demo world's seed (0): no study is shared with train / val / test
    image_size: int = 112  # the demo world must be rendered at the same size
    sizes: TinySizes = field(default_factory=lambda: BASE_SIZES)
    vocab_size: int = 2048
    multi_view: bool = True  # all views of a study in one prompt, as the demo trains
    steps: int = 400
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    finding_loss_weight: float = 1.0  # the vision tower's auxiliary loss (see FindingProbe); 0: off
    seed: int = 0


def _target_ids(tokenizer, reports: list[str], stop_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded report ids, each closed by the end-of-turn token, and their mask."""
    rows = [tokenizer(r, add_special_tokens=False)["input_ids"] + [stop_id] for r in reports]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return ids, mask


class FindingProbe(torch.nn.Module):
    """An auxiliary head used only during pretraining: it scores each of the 13 findings on every visual
    token and pools a study's tokens with a max (a finding is present if it shows anywhere).

    Report cross-entropy alone teaches the report language long before it teaches the vision tower to see:
    most report tokens are predictable without the image. Binary cross-entropy of this probe against the
    study's findings (present = stated or hedged) sends a direct signal to the visual features. A pretrained
    medical VLM has seen such findings; this is how the stand-in gets there in minutes. It is dropped after
    pretraining."""

    def __init__(self, hidden: int, n_findings: int):
        super().__init__()
        self.score = torch.nn.Linear(hidden, n_findings)

    def forward(self, per_image: tuple[torch.Tensor, ...], images_per_sample: list[int]) -> torch.Tensor:
        logits, start = [], 0
        for count in images_per_sample:
            tokens = torch.cat(per_image[start : start + count])
            logits.append(self.score(tokens).max(dim=0).values)
            start += count
        return torch.stack(logits)


def finding_targets(samples) -> torch.Tensor:
    """(N, 13) float: 1 where a finding is present (positive or uncertain), from the samples' labels."""
    from rewards.labels import FINDINGS, POSITIVE, UNCERTAIN

    codes = torch.tensor([s.labels[: len(FINDINGS)] for s in samples])
    return ((codes == POSITIVE) | (codes == UNCERTAIN)).float()


def pretrain(model, processor, samples, recipe: BaseRecipe, log_every: int = 50) -> list[float]:
    """Full-weight training on (image(s) -> report): report cross-entropy plus the vision tower's finding
    loss (`FindingProbe`). Returns the report cross-entropy of every step."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from data.batching import append_completion, collate_prompts, load_images
    from data.prompts import PromptConfig
    from rewards.labels import FINDINGS

    tokenizer = processor.tokenizer
    stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    images = [load_images(s.image_paths) for s in samples]  # decoded once: the world is small
    rng = np.random.default_rng(recipe.seed)
    probe = FindingProbe(model.config.text_config.hidden_size, len(FINDINGS))
    parameters = [*model.parameters(), *probe.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=recipe.lr, weight_decay=recipe.weight_decay)
    inner = model.model

    def lr_at(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    losses: list[float] = []
    finding_losses: list[float] = []
    order = rng.permutation(len(samples))
    cursor, start = 0, time.perf_counter()
    for step in range(recipe.steps):
        if cursor + recipe.batch_size > len(order):
            order, cursor = rng.permutation(len(samples)), 0
        picked = order[cursor : cursor + recipe.batch_size]
        cursor += recipe.batch_size
        batch_samples = [samples[i] for i in picked]
        prompts = collate_prompts(
            processor, batch_samples, PromptConfig(), images=[images[i] for i in picked]
        )
        ids, mask = _target_ids(tokenizer, [s.report for s in batch_samples], stop_id)
        inputs = append_completion(prompts, ids, mask)
        labels = torch.full_like(inputs["input_ids"], -100)
        labels[:, prompts["input_ids"].shape[1] :] = ids.masked_fill(~mask, -100)
        pixels = inputs.pop("pixel_values")
        per_image = tuple(
            inner.get_image_features(pixels, inputs["image_grid_thw"], return_dict=True).pooler_output
        )
        encoded = {"image": BaseModelOutputWithPooling(pooler_output=per_image)}
        loss = model(**inputs, mm_encoder_outputs=encoded, labels=labels).loss
        total = loss
        if recipe.finding_loss_weight > 0:
            finding_logits = probe(per_image, [len(s.image_paths) for s in batch_samples])
            finding_loss = torch.nn.functional.binary_cross_entropy_with_logits(
                finding_logits, finding_targets(batch_samples)
            )
            total = loss + recipe.finding_loss_weight * finding_loss
        total.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        finding_losses.append(finding_loss.item() if recipe.finding_loss_weight > 0 else 0.0)
        if (step + 1) % log_every == 0 or step == 0:
            recent = float(np.mean(losses[-log_every:]))
            logger.info("base pretraining step %d/%d: report loss %.3f, finding loss %.3f (%.1f s)", step + 1,
                        recipe.steps, recent, float(np.mean(finding_losses[-log_every:])),
                        time.perf_counter() - start)  # fmt: skip
    model.eval()
    return losses


def build_base_model(
    out_dir: str | Path, recipe: BaseRecipe | None = None, work_dir: str | Path | None = None
) -> Path:
    """Make the base checkpoint folder at ``out_dir`` (written to a temporary folder, then renamed)."""
    from data.prompts import PromptConfig
    from data.r2gen import load_annotation
    from data.synthetic import generate_world, world_texts
    from model.loading import load_model_and_processor
    from model.tiny import build_tiny_model

    recipe = recipe or BaseRecipe()
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    work = Path(work_dir) if work_dir else tmp / "_work"
    world = work / "pretrain-world"
    annotation = world / "annotation.json"
    if not annotation.exists():
        logger.info("pretraining world: %d studies, seed %d", recipe.world_studies, recipe.world_seed)
        generate_world(world, n=recipe.world_studies, seed=recipe.world_seed, image_size=recipe.image_size,
                       split_fractions=(1.0, 0.0, 0.0))  # fmt: skip
    prompt = PromptConfig()
    texts = [*world_texts(annotation), prompt.system, prompt.instruction, *_FORMAT_WORDS]
    init = work / "init"
    build_tiny_model(init, texts, vocab_size=recipe.vocab_size, seed=recipe.seed, sizes=recipe.sizes)
    torch.manual_seed(recipe.seed)
    model, processor = load_model_and_processor(init, device="cpu")
    samples = load_annotation(annotation, "train", multi_view=recipe.multi_view, check_images=False)
    losses = pretrain(model, processor, samples, recipe)
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    for name in ("tiny_sizes.json",):
        shutil.copy(init / name, tmp / name)
    record = {**asdict(recipe), "final_loss": float(np.mean(losses[-50:]))}
    (tmp / "base_recipe.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


# Words of the SFT target template (configs/demo.yaml) that the reports never use: the tokenizer learns them.
_FORMAT_WORDS = ("<think>Heart, mediastinum, lungs, pleura, bones and devices reviewed.</think>",)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write the base checkpoint to")
    parser.add_argument("--work-dir", type=Path, help="keep the pretraining world here (default: removed)")
    parser.add_argument("--steps", type=int, help=f"pretraining steps (default {BaseRecipe.steps})")
    parser.add_argument("--seed", type=int, help=f"init and batch-order seed (default {BaseRecipe.seed})")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    recipe = BaseRecipe()
    overrides = {k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None}
    out = build_base_model(args.out, replace(recipe, **overrides), work_dir=args.work_dir)
    print(f"base model written to {out}")


if __name__ == "__main__":
    main()
