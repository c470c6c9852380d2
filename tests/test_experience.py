"""The toolkit's plug-ins inside the trainer (grpo/experience.py) on the tiny model: the configured estimator
and per-term normalisation reach the advantages, and each option logs its statistics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from grpo.advantages import ESTIMATORS, per_term_rewards
from grpo.config import load_config
from grpo.trainer import Trainer
from rewards.combine import RewardOutput
from rewards.overlong import overlong_penalty


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from data.synthetic import generate_world

    return generate_world(tmp_path_factory.mktemp("world"), n=24, seed=3, image_size=56)


def make_trainer(tiny_model_dir, world, out, *overrides, reward_fn=None):
    cfg = load_config(None, [
        f"model.path={tiny_model_dir}", f"data.annotation={world}", f"output_dir={out}", "device=cpu",
        "model.lora.rank=8", "model.lora.alpha=16", "sampling.max_new_tokens=8", "batch.prompts_per_device=2",
        "optim.warmup_ratio=0.0", "optim.grad_clip=1.0", "optim.lr=0.02", "save_every=100", *overrides,
    ])  # fmt: skip
    return Trainer(cfg, reward_fn=reward_fn or letter_e_reward)


def letter_e_reward(completions, references, keys):
    r = np.array([t.count("e") / max(len(t), 1) for t in completions], dtype=np.float32)
    return RewardOutput(total=r, terms={"e_share": r})


def two_term_reward(completions, references, keys):
    """The paper's two term names, so that per-term normalisation finds its weights."""
    e = letter_e_reward(completions, references, keys).total
    short = np.array([1.0 if len(t) < 20 else 0.0 for t in completions], dtype=np.float32)
    return RewardOutput(total=0.75 * e + 0.25 * short, terms={"mccs": e, "format": short})


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_configured_estimator_and_per_term_normalisation_give_the_advantages(
    tiny_model_dir, world, tmp_path
):
    """rloo on the per-term normalised rewards; the overlong penalty joins the total and, with weight 1, the
    per-term sum."""
    trainer = make_trainer(
        tiny_model_dir, world, tmp_path, "grpo.advantage=rloo", "reward.normalize=per_term",
        "reward.overlong_penalty=4", reward_fn=two_term_reward,
    )  # fmt: skip
    (ro,) = trainer.rollout(trainer._draw_step())
    lengths = ro.completion_mask.sum(dim=1).numpy()
    penalty = overlong_penalty(lengths, 8, 4)
    np.testing.assert_array_equal(ro.scored.terms["overlong"], penalty)
    raw = two_term_reward(ro.texts, None, [None] * len(ro.texts)).total
    torch.testing.assert_close(ro.rewards, torch.as_tensor(raw + penalty))
    terms = {k: torch.as_tensor(v) for k, v in ro.scored.terms.items()}
    shaped = per_term_rewards(terms, {"mccs": 0.75, "format": 0.25, "overlong": 1.0}, 4)
    torch.testing.assert_close(ro.advantages, ESTIMATORS["rloo"](shaped, 4, None))
    trainer.close()


def test_per_term_with_a_reward_whose_terms_the_weights_do_not_name_fails_naming_the_key(
    tiny_model_dir, world, tmp_path
):
    trainer = make_trainer(tiny_model_dir, world, tmp_path, "reward.normalize=per_term")
    with pytest.raises(ValueError, match=r"reward.normalize=per_term: .* terms \['e_share'\]"):
        trainer.rollout(trainer._draw_step())
    trainer.close()


def test_entropy_tis_and_overlong_log_their_statistics(tiny_model_dir, world, tmp_path):
    trainer = make_trainer(
        tiny_model_dir, world, tmp_path, "max_steps=1", "grpo.tis_cap=2", "grpo.entropy_coef=0.01",
        "reward.overlong_penalty=8",
    )  # fmt: skip
    vocab = trainer.model.get_output_embeddings().weight.shape[0]
    trainer.train()
    trainer.close()
    (row,) = read_metrics(tmp_path)
    assert 0 < row["entropy"] <= math.log(vocab)
    # fp32 on CPU: the engine and the training pass agree to ~1e-4 per token, so the weights are ~1
    assert row["loss/tis_weight_mean"] == pytest.approx(1.0, abs=1e-3) and "rollout/logprob_gap" in row
    assert -1.0 <= row["reward/overlong"] <= 0.0


def test_grpo_mask_truncated_drops_cut_completions_from_the_loss(tiny_model_dir, world, tmp_path):
    """The same as sampling.mask_truncated (its older name): every completion cut, no token left to learn."""
    trainer = make_trainer(
        tiny_model_dir, world, tmp_path, "max_steps=1", "sampling.max_new_tokens=2",
        "sampling.min_new_tokens=2", "grpo.mask_truncated=true",
    )  # fmt: skip
    trainer.train()
    trainer.close()
    (row,) = read_metrics(tmp_path)
    assert row["truncated_frac"] == 1.0 and row["loss"] == 0.0 and row["grad_norm"] == 0.0
