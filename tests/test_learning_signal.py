"""GRPO on the pretrained synthetic base makes its greedy reports agree better with the true labels.

The shipped base (assets/synthetic-base, rebuilt by `python -m demo.base`) can see the rendered findings;
a short GRPO run with the MCCS reward on a handful of studies must raise the label agreement (MCCS against
the true labels) of its greedy reports on those studies (measured here: 0.579 -> 0.728 in 24 steps; 0.551 ->
0.583 on the 400-step base before). This is the learning signal the demo relies on, in a minute of CPU time;
the demo and bench/table2.py measure it on the held-out test split.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from data.batching import collate_prompts, load_images
from data.synthetic import generate_world
from demo.base import BaseRecipe
from grpo.config import load_config
from rewards.format import extract_report
from rewards.mccs import mccs_from_codes
from rewards.rules import RuleLabeler

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "assets" / "synthetic-base"
DEMO = ROOT / "configs" / "demo.yaml"


def greedy_reports(trainer, samples) -> list[str]:
    """The policy's greedy report for each sample (adapter active, no sampling)."""
    model, processor = trainer.model, trainer.processor
    batch = collate_prompts(processor, samples, trainer.cfg.data.prompt)
    model.eval()
    with torch.no_grad():
        out = model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=trainer.cfg.sampling.max_new_tokens,
            eos_token_id=list(trainer.sampling_params.stop_ids),
            pad_token_id=processor.tokenizer.pad_token_id,
            suppress_tokens=list(trainer.sampling_params.suppress_ids),
        )
    model.train()
    texts = processor.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return [extract_report(t) for t in texts]


def label_agreement(reports: list[str], samples) -> float:
    """Mean MCCS (eq. 3-6) of each report's labels against its study's true labels (the 14 codes)."""
    predicted = RuleLabeler().label(reports)
    truth = np.array([s.labels for s in samples])
    return float(np.mean(mccs_from_codes(predicted, truth)))


def test_the_shipped_base_is_the_recipe_of_model_base():
    import json

    recorded = json.loads((BASE / "base_recipe.json").read_text())
    assert recorded["image_size"] == BaseRecipe().image_size == load_config(DEMO).data.synthetic_image_size
    assert recorded["steps"] == BaseRecipe().steps and recorded["vision_steps"] == BaseRecipe().vision_steps


@pytest.mark.slow
def test_short_grpo_run_on_the_pretrained_base_raises_greedy_label_agreement(tmp_path):
    from grpo.trainer import Trainer

    assert (BASE / "config.json").is_file(), (
        f"{BASE} is missing: rebuild it with python -m demo.base --out {BASE}"
    )
    world = generate_world(
        tmp_path / "world", n=8, seed=11, image_size=BaseRecipe().image_size, split_fractions=(1.0, 0.0, 0.0)
    )
    cfg = load_config(DEMO, [
        f"output_dir={tmp_path / 'run'}", f"data.annotation={world}", "data.synthetic_n=0", "model.build_base=false",
        f"model.path={BASE}", "sft.steps=0", "max_steps=24", "batch.prompts_per_device=4", "sampling.group_size=8",
        "optim.lr=1e-3", "optim.warmup_ratio=0.0", "reward.weights={mccs: 1.0}",
        "sampling.max_new_tokens=80", "save_every=1000", "sample_every=1000",
    ])  # fmt: skip
    trainer = Trainer(cfg)
    samples = trainer.samples
    before = label_agreement(greedy_reports(trainer, samples), samples)
    trainer.train()
    after = label_agreement(greedy_reports(trainer, samples), samples)
    trainer.close()
    assert after >= before + 0.02, (
        f"greedy label agreement on the trained studies: {before:.3f} -> {after:.3f}"
    )


def test_build_base_model_writes_a_checkpoint_that_loads_and_records_its_recipe(tmp_path):
    import json

    from demo.base import build_base_model
    from model.loading import load_model_and_processor
    from model.tiny import TinySizes

    recipe = replace(
        BaseRecipe(),
        world_studies=12,
        image_size=56,
        sizes=TinySizes(),
        vocab_size=400,
        vision_steps=2,
        steps=2,
        batch_size=4,
        warmup_steps=1,
        validation_studies=3,
    )
    out = build_base_model(tmp_path / "base", recipe)
    recorded = json.loads((out / "base_recipe.json").read_text())
    assert recorded["steps"] == 2 and recorded["world_studies"] == 12 and recorded["image_size"] == 56
    assert 0 < recorded["held_out_report_loss"] < 20  # measured on studies of the validation seed
    assert not (tmp_path / "base.tmp").exists()  # written to a temporary folder, then renamed
    model, processor = load_model_and_processor(out, device="cpu")
    assert processor.tokenizer.convert_tokens_to_ids("<report>") != processor.tokenizer.unk_token_id


def test_a_shared_work_dir_gives_each_recipe_the_world_it_names(tmp_path):
    """`--work-dir` keeps the generated worlds for the next build; a recipe with another size or seed must
    get its own studies, not the ones a previous recipe left there."""
    from demo.base import validation_samples

    three = validation_samples(replace(BaseRecipe(), validation_studies=3), tmp_path)
    four = validation_samples(replace(BaseRecipe(), validation_studies=4), tmp_path)
    other_seed = validation_samples(replace(BaseRecipe(), validation_studies=3, validation_seed=5), tmp_path)
    assert (len(three), len(four), len(other_seed)) == (3, 4, 3)
    assert [s.report for s in four[:3]] == [s.report for s in three]  # study i is drawn from (seed, i)
    assert [s.report for s in other_seed] != [s.report for s in three]
    again = validation_samples(replace(BaseRecipe(), validation_studies=3), tmp_path)  # reused, not redrawn
    assert [s.image_paths for s in again] == [s.image_paths for s in three]


def test_held_out_report_loss_is_the_mean_over_report_tokens_whatever_the_batching(tmp_path):
    """The figure that sets the length of stage 2: padding a short report beside a long one must not
    change it, and it weighs every token (not every report) alike."""
    from demo.base import _report_token_losses, held_out_report_loss, validation_samples
    from model.loading import load_model_and_processor

    model, processor = load_model_and_processor(BASE, device="cpu")
    samples = validation_samples(replace(BaseRecipe(), validation_studies=4), tmp_path)
    assert len({len(s.report) for s in samples}) > 1  # reports of different lengths: padding is exercised
    together = held_out_report_loss(model, processor, samples, batch_size=4)
    one_by_one = [
        _report_token_losses(model, processor, [s], [load_images(s.image_paths)])[0].detach()[0]
        for s in samples
    ]
    per_token = torch.cat(one_by_one).mean().item()
    assert together == pytest.approx(per_token, rel=1e-4)
    assert held_out_report_loss(model, processor, samples, batch_size=1) == pytest.approx(together, rel=1e-4)


def test_stated_rates_split_the_reports_by_whether_the_study_has_the_finding():
    import sys

    if str(ROOT) not in sys.path:  # bench/ is not an installed package
        sys.path.insert(0, str(ROOT))
    from bench.sample_signal import stated_rates

    present = np.array([[True, False], [True, False], [False, False], [False, False]])
    stated = np.array([[True, True], [False, False], [True, False], [False, False]])
    said_present, said_absent = stated_rates(stated, present)
    assert said_present[0] == 0.5 and said_absent[0] == 0.5  # stated as often either way: no signal
    assert np.isnan(said_present[1]) and said_absent[1] == 0.25  # no study has it


def test_finding_token_weights_weigh_the_sentences_that_state_a_finding():
    from demo.base import finding_token_weights
    from model.loading import load_model_and_processor

    _, processor = load_model_and_processor(BASE, device="cpu")
    tokenizer = processor.tokenizer
    report = "The heart is enlarged. No pneumothorax. Possible left pleural effusion."
    weights = finding_token_weights(tokenizer, report, 3.0, RuleLabeler())
    pieces = [tokenizer.decode([i]) for i in tokenizer(report, add_special_tokens=False)["input_ids"]]
    assert len(weights) == len(pieces) + 1 and weights[-1] == 1.0  # the stop token keeps weight 1
    by_sentence, sentence = [], []
    for piece, weight in zip(pieces, weights):
        sentence.append(weight)
        if piece.endswith("."):
            by_sentence.append(set(sentence))
            sentence = []
    # stated (positive), negated, hedged (uncertain counts as stated)
    assert by_sentence == [{3.0}, {1.0}, {3.0}]
    assert finding_token_weights(tokenizer, report, 1.0, RuleLabeler()) == [1.0] * len(weights)
