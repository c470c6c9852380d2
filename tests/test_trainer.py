"""The GRPO loop end to end on the tiny model: learning on a planted task, resume equality, SFT, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grpo.config import load_config
from grpo.sft import SFTTrainer
from grpo.trainer import Trainer
from rewards.combine import RewardOutput


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from data.synthetic import generate_world

    return generate_world(tmp_path_factory.mktemp("world"), n=24, seed=0, image_size=56)


def make_cfg(tiny_model_dir, world, out, *overrides):
    return load_config(None, [
        f"model.path={tiny_model_dir}", f"data.annotation={world}", f"output_dir={out}", "device=cpu",
        "model.lora.rank=8", "model.lora.alpha=16", "model.lora.dropout=0.0",
        "sampling.max_new_tokens=8", "batch.prompts_per_device=2", "optim.warmup_ratio=0.0",
        "optim.grad_clip=1.0", "optim.lr=0.02", "save_every=100", *overrides,
    ])  # fmt: skip


def letter_e_reward(completions, references, keys):
    """A planted task a policy can learn from scratch: the share of the letter e in what it writes."""
    r = np.array([t.count("e") / max(len(t), 1) for t in completions], dtype=np.float32)
    return RewardOutput(total=r, terms={"e_share": r})


WALL_CLOCK_KEYS = ("step_time_s", "tokens_per_s")  # differ between identical runs, as time/<phase>


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_grpo_raises_the_reward_of_a_planted_task(tiny_model_dir, world, tmp_path):
    cfg = make_cfg(
        tiny_model_dir, world, tmp_path, "max_steps=24", "grpo.beta=0.0", "batch.prompts_per_device=4"
    )
    trainer = Trainer(cfg, reward_fn=letter_e_reward)
    trainer.train()
    trainer.close()
    rewards = [row["reward"] for row in read_metrics(tmp_path)]
    first, last = np.mean(rewards[:4]), np.mean(rewards[-4:])
    assert last > first + 0.05, f"reward did not rise: first steps {rewards[:4]}, last steps {rewards[-4:]}"


@pytest.mark.slow
def test_resumed_run_logs_the_same_metrics_as_an_uninterrupted_one(tiny_model_dir, world, tmp_path):
    """A run stopped after its step-2 checkpoint and resumed must reproduce the uninterrupted run: same
    data order, same samples (RNG restored), same optimizer and scheduler state."""
    overrides = ("max_steps=4", "save_every=2", "grpo.beta=0.04", "model.lora.dropout=0.1")
    straight = Trainer(make_cfg(tiny_model_dir, world, tmp_path / "straight", *overrides))
    straight.train()
    straight.close()

    interrupted = Trainer(make_cfg(tiny_model_dir, world, tmp_path / "resumed", *overrides))
    interrupted.train(stop_after=3)  # "killed" during step 4's run-up: the last checkpoint is step 2
    interrupted.close()
    resumed = Trainer(make_cfg(tiny_model_dir, world, tmp_path / "resumed", *overrides), resume=True)
    assert resumed.step == 2
    resumed.train()
    resumed.close()

    def strip(rows):
        return [
            {k: v for k, v in r.items() if k not in WALL_CLOCK_KEYS and not k.startswith("time/")}
            for r in rows
        ]

    a, b = strip(read_metrics(tmp_path / "straight")), strip(read_metrics(tmp_path / "resumed"))
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for row_a, row_b in zip(a, b):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            assert row_a[key] == pytest.approx(row_b[key], rel=1e-5, abs=1e-7), (row_a["step"], key)


def test_a_run_folder_holds_config_metrics_samples_checkpoints_and_final_adapter(
    tiny_model_dir, world, tmp_path
):
    cfg = make_cfg(
        tiny_model_dir, world, tmp_path, "max_steps=2", "save_every=1", "keep_last=1", "sample_every=1"
    )
    trainer = Trainer(cfg)
    final = trainer.train()
    trainer.close()
    assert (tmp_path / "config.yaml").is_file()
    rows = read_metrics(tmp_path)
    required = {
        "step",
        "reward",
        "reward/mccs",
        "reward/format",
        "loss/kl",
        "loss/clip_frac",
        "loss",
        "adv_std",
        "frac_zero_std_groups",
        "completion_len",
        "format_ok",
        "lr",
        "step_time_s",
        "tokens_per_s",
    }
    assert required <= rows[-1].keys()
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) > 0
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["step-000002"]  # keep_last=1 pruned step 1; no temporary folder left
    assert (final / "adapter_model.safetensors").is_file()


def test_ascii_only_keeps_every_sampled_completion_ascii(tiny_model_dir, world, tmp_path):
    """sampling.ascii_only: the untrained tiny model samples non-ASCII byte tokens freely (so the check can
    fail: the run without the option must show one), the run with it never does."""

    def sampled_texts(out, *overrides):
        trainer = Trainer(
            make_cfg(
                tiny_model_dir,
                world,
                out,
                "max_steps=2",
                "sample_every=1",
                "sampling.max_new_tokens=16",
                *overrides,
            ),
            reward_fn=letter_e_reward,
        )
        trainer.train()
        trainer.close()
        return [json.loads(line)["completion"] for line in (out / "samples.jsonl").read_text().splitlines()]

    assert not all(text.isascii() for text in sampled_texts(tmp_path / "plain"))
    assert all(text.isascii() for text in sampled_texts(tmp_path / "ascii", "sampling.ascii_only=true"))


def test_sft_lowers_the_cross_entropy_of_the_reference_reports(tiny_model_dir, world, tmp_path):
    cfg = make_cfg(tiny_model_dir, world, tmp_path, "mode=sft", "max_steps=12", "optim.lr=0.01")
    trainer = SFTTrainer(cfg)
    trainer.train()
    trainer.close()
    losses = [row["loss"] for row in read_metrics(tmp_path)]
    assert losses[-1] < losses[0] - 0.3, losses


def test_num_iterations_reuses_rollouts_and_moves_the_ratio_off_one(tiny_model_dir, world, tmp_path):
    """With mu = 2 the second optimizer step reuses the first step's completions (same rewards logged) under
    the updated policy, so the importance ratio of eq. (1) is no longer exactly 1."""
    cfg = make_cfg(tiny_model_dir, world, tmp_path, "max_steps=2", "save_every=2", "grpo.num_iterations=2")
    trainer = Trainer(cfg, reward_fn=letter_e_reward)
    trainer.train()
    trainer.close()
    first, second = read_metrics(tmp_path)
    assert first["reward"] == second["reward"] and "time/generate" not in second
    assert first["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert second["loss/ratio_mean"] != pytest.approx(1.0, abs=1e-6)


def test_mask_truncated_drops_completions_cut_by_max_new_tokens_from_the_loss(
    tiny_model_dir, world, tmp_path
):
    """Two new tokens and EOS suppressed until then: every completion is truncated, so with
    sampling.mask_truncated the loss has no token left and the policy gets no gradient."""
    cfg = make_cfg(
        tiny_model_dir,
        world,
        tmp_path,
        "max_steps=1",
        "sampling.max_new_tokens=2",
        "sampling.min_new_tokens=2",
        "sampling.mask_truncated=true",
    )
    trainer = Trainer(cfg, reward_fn=letter_e_reward)
    trainer.train()
    trainer.close()
    (row,) = read_metrics(tmp_path)
    assert row["truncated_frac"] == 1.0
    assert row["loss"] == 0.0 and row["grad_norm"] == 0.0


@pytest.mark.parametrize("mu", [1, 2])
def test_static_engine_log_probs_match_the_loss_and_the_gap_is_logged(tiny_model_dir, world, tmp_path, mu):
    """rollout/logprob_gap: mean |engine log-prob - the loss's recomputed log-prob| per completion token,
    from the update pass (mu = 1) or the old-policy pass (mu > 1); fp32, tolerance 5e-4."""
    cfg = make_cfg(
        tiny_model_dir,
        world,
        tmp_path,
        "max_steps=2",
        "save_every=2",
        f"grpo.num_iterations={mu}",
        "sampling.engine=static",
    )
    trainer = Trainer(cfg, reward_fn=letter_e_reward)
    trainer.train()
    trainer.close()
    for row in read_metrics(tmp_path):
        assert 0.0 <= row["rollout/logprob_gap"] < 5e-4


def test_hf_engine_trains_and_reports_no_gap(tiny_model_dir, world, tmp_path):
    cfg = make_cfg(tiny_model_dir, world, tmp_path, "max_steps=1", "sampling.engine=hf")
    trainer = Trainer(cfg, reward_fn=letter_e_reward)
    trainer.train()
    trainer.close()
    (row,) = read_metrics(tmp_path)
    assert "rollout/logprob_gap" not in row and row["completion_len"] > 0


def test_grpo_passes_run_without_lora_dropout_and_with_gradient_checkpointing(
    tiny_model_dir, world, tmp_path
):
    """The paper's LoRA dropout 0.05, mu = 2 and gradient checkpointing: the update's log-probs come from the
    same function that sampled, so the first pass over each batch of rollouts has a ratio of exactly 1 and,
    from a fresh adapter (policy = reference), a KL of exactly 0; the update pass still recomputes its
    activations in the backward pass (checkpointing runs only in training mode)."""
    from model.loading import unwrap_model

    cfg = make_cfg(
        tiny_model_dir,
        world,
        tmp_path,
        "max_steps=4",
        "save_every=2",
        "grpo.num_iterations=2",
        "model.lora.dropout=0.05",
        "model.gradient_checkpointing=true",
        "grpo.beta=0.04",
    )
    trainer = Trainer(cfg, reward_fn=letter_e_reward)
    assert not trainer.prompt_once  # checkpointing turns the KV cache off: the passes run full rows
    # a pre-hook inside the checkpointed forward: the recomputation may stop early, after the last saved tensor
    attention = unwrap_model(trainer.model).model.language_model.layers[0].self_attn
    layer_calls = []
    attention.register_forward_pre_hook(lambda *_: layer_calls.append(1))
    update_calls = []
    update = trainer.grpo_update

    def counted_update(rollouts):
        before = len(layer_calls)
        sums = update(rollouts)
        update_calls.append(len(layer_calls) - before)
        return sums

    trainer.grpo_update = counted_update
    trainer.train()
    trainer.close()
    rows = read_metrics(tmp_path)
    assert update_calls == [2, 2, 2, 2]  # forward, then its recomputation during backward
    assert rows[0]["loss/kl"] == 0.0
    assert rows[0]["loss/ratio_mean"] == 1.0 and rows[2]["loss/ratio_mean"] == 1.0  # fresh rollouts
    assert rows[1]["loss/ratio_mean"] != 1.0 and rows[3]["loss/ratio_mean"] != 1.0  # reused ones


def test_sft_keeps_the_configured_lora_dropout_and_grpo_turns_it_off(tiny_model_dir, world, tmp_path):
    def lora_dropout_ps(trainer):
        return sorted(
            {
                d.p
                for m in trainer.model.modules()
                if hasattr(m, "lora_dropout")
                for d in m.lora_dropout.values()
                if isinstance(d, torch.nn.Dropout)
            }
        )

    sft = SFTTrainer(make_cfg(tiny_model_dir, world, tmp_path / "sft", "mode=sft", "model.lora.dropout=0.05"))
    grpo = Trainer(make_cfg(tiny_model_dir, world, tmp_path / "grpo", "model.lora.dropout=0.05"))
    assert lora_dropout_ps(sft) == [0.05] and lora_dropout_ps(grpo) == [0.0]
    sft.close()
    grpo.close()
