"""The toolkit's plug-ins inside the trainer (grpo/experience.py, grpo/rollout.py) on the tiny model:
regrouped micro-batches keep their log-probs, dynamic sampling fills the batch with groups that carry a signal, the
configured estimator and per-term normalisation reach the advantages, and each option logs its statistics.
(Two ranks under dynamic sampling: tests/test_distributed.py.)"""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest
import torch

from data.r2gen import Sample
from grpo.advantages import ESTIMATORS, per_term_rewards
from grpo.config import load_config
from grpo.rollout import regroup
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


def dead(study_id: str) -> bool:
    """About half of the studies, the same in every process (str hash is salted per process; crc32 is not)."""
    return zlib.crc32(study_id.encode()) % 2 == 0


def half_dead_reward(completions, references, keys):
    """The letter-e share, but the same 0.5 for every completion of a dead study: its group has no spread."""
    r = letter_e_reward(completions, references, keys).total
    r = np.where([dead(k) for k in keys], np.float32(0.5), r).astype(np.float32)
    return RewardOutput(total=r, terms={"e_share": r})


def two_term_reward(completions, references, keys):
    """The paper's two term names, so that per-term normalisation finds its weights."""
    e = letter_e_reward(completions, references, keys).total
    short = np.array([1.0 if len(t) < 20 else 0.0 for t in completions], dtype=np.float32)
    return RewardOutput(total=0.75 * e + 0.25 * short, terms={"mccs": e, "format": short})


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_regroup_keeps_every_groups_log_probs_texts_and_rewards(tiny_model_dir, world, tmp_path, make_image):
    """Groups of two rollouts (prompts of different lengths, completions of different widths) regrouped into
    one micro-batch: each row's log-probs are those it had in its own rollout, in both log-prob passes."""
    trainer = make_trainer(tiny_model_dir, world, tmp_path, "sampling.group_size=3")
    with torch.no_grad():  # move the adapter away from zero, so the policy differs from the base
        for p in trainer.params:
            p.add_(0.05 * torch.randn_like(p))
    sizes = [(56, 56), (112, 84), (84, 56)]
    samples = []
    for k, (h, w) in enumerate(sizes):
        make_image(h, w, seed=k).save(tmp_path / f"s{k}.png")
        samples.append(Sample(f"s{k}", f"s{k}", (tmp_path / f"s{k}.png",), "no finding", None, "train"))
    first, second = trainer.sample_group(samples[:2]), trainer.sample_group(samples[2:])
    for name in ("completion_ids", "completion_mask", "sample_logp", "loss_mask"):  # a narrower rollout
        setattr(second, name, getattr(second, name)[:, :5])
    for ro in (first, second):
        trainer.score(ro)
    assert first.prompt_len != second.prompt_len

    mixed = regroup([(second, 0), (first, 1)], trainer.tokenizer.pad_token_id)
    assert [s.study_id for s in mixed.samples] == ["s2", "s1"] and mixed.images_per_prompt == [1, 1]
    assert mixed.texts == second.texts + first.texts[3:]
    torch.testing.assert_close(mixed.rewards, torch.cat([second.rewards, first.rewards[3:]]))
    np.testing.assert_array_equal(mixed.scored.terms["e_share"], mixed.scored.total)
    assert mixed.completion_ids.shape == (6, 8) and not mixed.completion_mask[:3, 5:].any()
    for prompt_once in (True, False):
        trainer.prompt_once = prompt_once
        with torch.no_grad():
            got = trainer._rollout_logprobs(trainer.model, mixed)
            own = [trainer._rollout_logprobs(trainer.model, ro) for ro in (second, first)]
        torch.testing.assert_close(got[:3, :5], own[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got[3:], own[1][3:], rtol=1e-4, atol=1e-5)
    trainer.close()


def test_dynamic_sampling_trains_on_full_batches_of_groups_with_spread(tiny_model_dir, world, tmp_path):
    trainer = make_trainer(
        tiny_model_dir, world, tmp_path, "max_steps=2", "batch.grad_accum=2", "grpo.dynamic_sampling=true",
        "grpo.max_resample_rounds=4", reward_fn=half_dead_reward,
    )  # fmt: skip
    trained = []
    update = trainer.grpo_update

    def recording_update(rollouts):
        trained.append([([s.study_id for s in ro.samples], ro.advantages.shape[0]) for ro in rollouts])
        return update(rollouts)

    trainer.grpo_update = recording_update
    trainer.train()
    trainer.close()
    rows = read_metrics(tmp_path)
    for step, row in zip(trained, rows):
        assert [rows_ for _, rows_ in step] == [8, 8]  # 2 micro-batches of 2 studies x G = 4, every step
        assert row["dynamic/refilled_groups"] == 0 and not any(dead(s) for ids, _ in step for s in ids)
        assert row["dynamic/sampled_groups"] == 4 * (1 + row["dynamic/resample_rounds"])
        assert row["dynamic/filtered_groups"] >= 1 and row["frac_zero_std_groups"] == 0.0
    assert sum(row["dynamic/resample_rounds"] for row in rows) >= 1


def test_dynamic_sampling_refills_with_dropped_groups_when_the_rounds_run_out(
    tiny_model_dir, world, tmp_path
):
    def constant(completions, references, keys):
        return RewardOutput(total=np.full(len(completions), 0.3, dtype=np.float32))

    trainer = make_trainer(
        tiny_model_dir, world, tmp_path, "max_steps=1", "grpo.dynamic_sampling=true",
        "grpo.max_resample_rounds=1", reward_fn=constant,
    )  # fmt: skip
    trainer.train()
    trainer.close()
    (row,) = read_metrics(tmp_path)
    assert row["dynamic/resample_rounds"] == 1 and row["dynamic/sampled_groups"] == 4
    assert row["dynamic/refilled_groups"] == 2 and row["dynamic/filtered_groups"] == 2
    assert row["frac_zero_std_groups"] == 1.0 and row["loss/adv_mean"] == 0.0


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
