"""The demo's pretrained base model: a small Qwen2.5-VL that can read the synthetic world's images.

The paper starts GRPO from a pretrained medical VLM that already sees the findings; a randomly initialised
model cannot, and GRPO then has nothing to select on. This module makes the offline stand-in:

1. a pretraining world: studies drawn by `data.synthetic` with their own seed (``world_seed``), so they are
   kept apart from the demo world's train / val / test studies;
2. a small Qwen2.5-VL (`model.tiny`: same classes and code paths as the 7B model, sizes in `BASE_SIZES`)
   with a tokenizer trained on the pretraining reports;
3. stage 1: the vision tower learns to see through a finding probe (`FindingProbe`, dropped afterwards);
4. stage 2: every weight on "image(s) -> report" with token cross-entropy (the probe's loss kept on),
   as long as a rule on held-out studies says (``BaseRecipe.steps``, ``held_out_report_loss``);
   ``finding_sentence_weight`` weighs the tokens of sentences that state a finding (docs/results.md measures
   what that does).

The result is an ordinary checkpoint folder (weights in safetensors, tokenizer, processor, and
``base_recipe.json`` recording how it was made). Same recipe and seed -> the same model on a machine.
The demo then does what the paper does: LoRA SFT, then LoRA GRPO, with the vision tower frozen.

    python -m demo.base --out assets/synthetic-base          # rebuild the shipped base (see BaseRecipe)
    python -m demo.base --out DIR --work-dir W --steps 3200 --finding-sentence-weight 3   # a variant; W
                                                              # keeps the world and stage 1 for the next one
    python -m demo.base --held-out-loss DIR                   # the figure that sets the length of stage 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from data.batching import append_completion, collate_prompts, load_images, tokenize_targets
from data.files import atomic_dir
from data.prompts import PromptConfig
from data.r2gen import load_annotation
from data.synthetic import generate_world, world_texts
from model.loading import load_model_and_processor
from model.optim import cosine_lr_factor
from model.tiny import TinySizes, build_tiny_model
from rewards.rules import RuleLabeler
from rewards.vocabulary import FINDINGS, POSITIVE, UNCERTAIN

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
    vision_steps: int = 600  # stage 1: the vision tower and the finding probe alone
    vision_lr: float = 2e-3
    # Stage 2 (every weight, report cross-entropy + the finding probe's loss) is as long as this rule says:
    # from 400 steps, double while doubling lowers the held-out report loss by at least 1 %. Measured
    # (docs/results.md, "The base's stage 2 by a rule"): 400 -> 0.940, 800 -> 0.838, 1600 -> 0.794,
    # 3200 -> 0.815 (it overfits the 4,000 studies): 1600.
    steps: int = 1600
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    finding_loss_weight: float = 1.0  # weight of the probe's loss in stage 2
    finding_sentence_weight: float = 1.0  # stage 2: loss weight of the tokens of finding sentences
    seed: int = 0
    validation_studies: int = 300  # held-out studies that measure stage 2 (``held_out_report_loss``)
    validation_seed: int = 1002  # a world of their own: != world_seed and != the demo worlds' seeds


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
    codes = torch.tensor([s.labels[: len(FINDINGS)] for s in samples])
    return ((codes == POSITIVE) | (codes == UNCERTAIN)).float()


def finding_token_weights(tokenizer, report: str, weight: float, labeler) -> list[float]:
    """Per-token loss weights of one report (its stop token included): ``weight`` on the tokens of
    sentences that state a finding as present or possible, 1 elsewhere."""
    spans, start = [], 0
    for sentence in re.split(r"(?<=\.)\s+", report):
        begin = report.index(sentence, start)
        start = begin + len(sentence)
        codes = labeler.label_one(sentence)[: len(FINDINGS)]
        if ((codes == POSITIVE) | (codes == UNCERTAIN)).any():
            spans.append((begin, start))
    offsets = tokenizer(report, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    stated = [any(b < end and start_ < e for b, e in spans) for start_, end in offsets]
    return [weight if s else 1.0 for s in stated] + [1.0]


def _cosine_with_warmup(optimizer, steps: int, warmup: int):
    """model/optim's schedule with the recipe's warm-up given in steps (not as a share)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_lr_factor(step, steps, warmup))


def _batches(n: int, batch_size: int, steps: int, rng: np.random.Generator):
    """Index batches for ``steps`` steps: epochs of random permutations."""
    order, cursor = rng.permutation(n), 0
    for _ in range(steps):
        if cursor + batch_size > n:
            order, cursor = rng.permutation(n), 0
        yield order[cursor : cursor + batch_size]
        cursor += batch_size


def _finding_loss(probe, per_image, batch_samples) -> torch.Tensor:
    logits = probe(per_image, [len(s.image_paths) for s in batch_samples])
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, finding_targets(batch_samples))


def pretrain_vision(
    model, processor, samples, probe, recipe: BaseRecipe, log_every: int = 100
) -> list[float]:
    """Stage 1: the vision tower (and merger) learns to see, through the finding probe alone. Cheap: no
    language model in the loop, each study's pixels prepared once."""
    visual = model.model.visual
    prepared = []
    for s in samples:
        out = processor.image_processor(images=load_images(s.image_paths), return_tensors="pt")
        prepared.append((out["pixel_values"], out["image_grid_thw"]))
    parameters = [*visual.parameters(), *probe.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=recipe.vision_lr, weight_decay=recipe.weight_decay)
    scheduler = _cosine_with_warmup(optimizer, recipe.vision_steps, recipe.warmup_steps)
    losses, start = [], time.perf_counter()
    visual.train()
    rng = np.random.default_rng([recipe.seed, 1])
    for step, picked in enumerate(_batches(len(samples), recipe.batch_size, recipe.vision_steps, rng)):
        pixels = torch.cat([prepared[i][0] for i in picked])
        grid = torch.cat([prepared[i][1] for i in picked])
        per_image = tuple(model.model.get_image_features(pixels, grid, return_dict=True).pooler_output)
        loss = _finding_loss(probe, per_image, [samples[i] for i in picked])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % log_every == 0:
            logger.info(
                "base stage 1 (vision) step %d/%d: finding loss %.3f (%.1f s)",
                step + 1,
                recipe.vision_steps,
                float(np.mean(losses[-log_every:])),
                time.perf_counter() - start,
            )
    return losses


def _report_token_losses(model, processor, batch_samples, batch_images):
    """Teacher-forced cross-entropy of each report token (the stop token included) after its study's
    prompt: (token losses (B, T), mask of the report's tokens (B, T), the per-image visual features)."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    tokenizer = processor.tokenizer
    stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompts = collate_prompts(processor, batch_samples, PromptConfig(), images=batch_images)
    ids, mask = tokenize_targets(tokenizer, [s.report for s in batch_samples], stop_id)
    inputs = append_completion(prompts, ids, mask)
    prompt_width = prompts["input_ids"].shape[1]
    pixels = inputs.pop("pixel_values")
    per_image = tuple(
        model.model.get_image_features(pixels, inputs["image_grid_thw"], return_dict=True).pooler_output
    )
    encoded = {"image": BaseModelOutputWithPooling(pooler_output=per_image)}
    logits = model(**inputs, mm_encoder_outputs=encoded).logits[:, prompt_width - 1 : -1]
    token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
    return token_loss, mask.bool(), per_image


@torch.no_grad()
def held_out_report_loss(model, processor, samples, batch_size: int = 16) -> float:
    """Stage 2's report cross-entropy (nats per token, every token weighed 1) on studies it never trained
    on: the figure the length of stage 2 is chosen by (``BaseRecipe.steps``)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        token_loss, mask, _ = _report_token_losses(
            model, processor, chunk, [load_images(s.image_paths) for s in chunk]
        )
        total += float((token_loss * mask).sum())
        count += int(mask.sum())
    model.train(was_training)
    return total / count


def pretrain(model, processor, samples, probe, recipe: BaseRecipe, log_every: int = 50) -> list[float]:
    """Stage 2: every weight on (image(s) -> report) with token cross-entropy, the finding probe's loss
    kept on so the visual features stay sharp. Returns the report cross-entropy of every step."""
    tokenizer = processor.tokenizer
    images = [load_images(s.image_paths) for s in samples]  # decoded once: the world is small
    labeler = RuleLabeler()
    token_weights = [
        finding_token_weights(tokenizer, s.report, recipe.finding_sentence_weight, labeler) for s in samples
    ]
    parameters = [*model.parameters(), *probe.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = _cosine_with_warmup(optimizer, recipe.steps, recipe.warmup_steps)
    model.train()
    losses: list[float] = []
    finding_losses: list[float] = []
    start = time.perf_counter()
    rng = np.random.default_rng([recipe.seed, 2])
    for step, picked in enumerate(_batches(len(samples), recipe.batch_size, recipe.steps, rng)):
        batch_samples = [samples[i] for i in picked]
        token_loss, mask, per_image = _report_token_losses(
            model, processor, batch_samples, [images[i] for i in picked]
        )
        weights = torch.zeros(token_loss.shape)
        for row, i in enumerate(picked):
            weights[row, : len(token_weights[i])] = torch.tensor(token_weights[i])
        loss = (token_loss * weights).sum() / weights.sum()
        finding_loss = _finding_loss(probe, per_image, batch_samples)
        (loss + recipe.finding_loss_weight * finding_loss).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        finding_losses.append(finding_loss.item())
        if (step + 1) % log_every == 0 or step == 0:
            logger.info(
                "base stage 2 (reports) step %d/%d: report loss %.3f, finding loss %.3f (%.1f s)",
                step + 1,
                recipe.steps,
                float(np.mean(losses[-log_every:])),
                float(np.mean(finding_losses[-log_every:])),
                time.perf_counter() - start,
            )
    model.eval()
    return losses


def _stage1_key(recipe: BaseRecipe) -> str:
    """A short hash of the recipe fields stage 1 depends on (a cached stage 1 is reused only for them)."""
    stage2_only = (
        "steps",
        "lr",
        "finding_loss_weight",
        "finding_sentence_weight",
        "validation_studies",
        "validation_seed",
    )
    fields = {k: v for k, v in asdict(recipe).items() if k not in stage2_only}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def _one_split_world(work: Path, name: str, n: int, seed: int, image_size: int) -> Path:
    """A world of ``n`` studies, all in its train split, generated under ``work`` unless it is there already;
    returns its annotation file. The folder is named by what it is drawn from, so a ``--work-dir`` shared by
    recipes of other sizes or seeds never hands one recipe the studies of another."""
    world = work / f"{name}-{n}-seed{seed}-{image_size}px"
    annotation = world / "annotation.json"
    if not annotation.exists():
        logger.info("world of %d studies, seed %d, in %s", n, seed, world)
        generate_world(world, n=n, seed=seed, image_size=image_size, split_fractions=(1.0, 0.0, 0.0))
    return annotation


def validation_samples(recipe: BaseRecipe, work: Path):
    """The held-out studies of ``recipe`` (generated under ``work`` once), one sample per study."""
    annotation = _one_split_world(
        work, "validation-world", recipe.validation_studies, recipe.validation_seed, recipe.image_size
    )
    return load_annotation(annotation, "train", multi_view=recipe.multi_view, check_images=False)


def build_base_model(
    out_dir: str | Path, recipe: BaseRecipe | None = None, work_dir: str | Path | None = None
) -> Path:
    """Make the base checkpoint folder at ``out_dir`` (written to a temporary folder, then renamed)."""
    recipe = recipe or BaseRecipe()
    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir else out_dir.with_name(out_dir.name + ".tmp-work")
    annotation = _one_split_world(
        work, "pretrain-world", recipe.world_studies, recipe.world_seed, recipe.image_size
    )
    prompt = PromptConfig()
    texts = [*world_texts(annotation), prompt.system, prompt.instruction, *_FORMAT_WORDS]
    init = work / "init"
    build_tiny_model(init, texts, vocab_size=recipe.vocab_size, seed=recipe.seed, sizes=recipe.sizes)
    model, processor = load_model_and_processor(init, device="cpu")
    samples = load_annotation(annotation, "train", multi_view=recipe.multi_view, check_images=False)
    torch.manual_seed(recipe.seed)  # the probe's initial weights
    probe = FindingProbe(model.config.text_config.hidden_size, len(FINDINGS))
    stage1 = work / f"stage1-{_stage1_key(recipe)}.pt"
    if stage1.exists():  # kept in --work-dir: stage-2 variants start from the same seeing tower
        state = torch.load(stage1)
        model.load_state_dict(state["model"]), probe.load_state_dict(state["probe"])
        finding_losses = state["losses"]
    else:
        finding_losses = pretrain_vision(model, processor, samples, probe, recipe)
        torch.save(
            {"model": model.state_dict(), "probe": probe.state_dict(), "losses": finding_losses}, stage1
        )
    losses = pretrain(model, processor, samples, probe, recipe)
    record = {
        **asdict(recipe),
        "final_report_loss": float(np.mean(losses[-50:])),
        "stage1_finding_loss": float(np.mean(finding_losses[-50:])),
        "held_out_report_loss": held_out_report_loss(model, processor, validation_samples(recipe, work)),
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        for name in ("tiny_sizes.json",):
            shutil.copy(init / name, tmp / name)
        (tmp / "base_recipe.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


# Words of the SFT target template (configs/demo.yaml) that the reports never use: the tokenizer learns them.
_FORMAT_WORDS = ("<think>Heart, mediastinum, lungs, pleura, bones and devices reviewed.</think>",)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", type=Path, help="folder to write the base checkpoint to")
    action.add_argument(
        "--held-out-loss", type=Path, metavar="BASE", help="print an existing base's held-out report loss"
    )
    parser.add_argument("--work-dir", type=Path, help="keep the pretraining world here (default: removed)")
    parser.add_argument("--steps", type=int, help=f"pretraining steps (default {BaseRecipe.steps})")
    parser.add_argument("--seed", type=int, help=f"init and batch-order seed (default {BaseRecipe.seed})")
    parser.add_argument(
        "--finding-sentence-weight",
        type=float,
        help=f"stage-2 loss weight of finding sentences (default {BaseRecipe.finding_sentence_weight})",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    recipe = BaseRecipe()
    if args.held_out_loss:
        model, processor = load_model_and_processor(args.held_out_loss, device="cpu")
        work = args.work_dir or Path(tempfile.mkdtemp(prefix="held-out-"))
        loss = held_out_report_loss(model, processor, validation_samples(recipe, work))
        print(f"{args.held_out_loss}: held-out report loss {loss:.4f} nats per token")
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
        return
    given = (
        ("steps", args.steps),
        ("seed", args.seed),
        ("finding_sentence_weight", args.finding_sentence_weight),
    )
    overrides = {k: v for k, v in given if v is not None}
    out = build_base_model(args.out, replace(recipe, **overrides), work_dir=args.work_dir)
    print(f"base model written to {out}")


if __name__ == "__main__":
    main()
