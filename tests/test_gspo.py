"""GSPO as a plug-in loss (grpo/gspo.py): a hand computation, and a run through the trainer's config."""

import math

import pytest
import torch

from grpo.config import GRPOConfig
from grpo.gspo import gspo_loss
from grpo.loss import LossInputs


def test_sequence_ratio_and_clip_per_completion_hand_computed():
    # completion 0: token log-ratios 0.1, 0.3 -> s = e^0.2 = 1.2214 > 1.2 with A = +1: clipped to 1.2
    # completion 1: log-ratios -0.1, 0.0, 0.1 -> s = e^0 = 1 with A = -1: objective -1
    # completion 2: no real token (e.g. masked as truncated): adds nothing, its A = 5 notwithstanding
    old = torch.zeros(3, 3, dtype=torch.float64)
    logp = torch.tensor([[0.1, 0.3, 9.0], [-0.1, 0.0, 0.1], [0.4, 0.4, 0.4]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0, 5.0], dtype=torch.float64)
    leaf = logp.clone().requires_grad_()
    loss, stats = gspo_loss(LossInputs(leaf, old, None, adv, mask), GRPOConfig(beta=0.0, eps_low=0.2))
    assert loss.item() == pytest.approx(-(1.2 - 1.0) / 3)
    loss.backward()
    # completion 0 is clipped: no gradient; completion 1: d(-s*A/3)/d logp_t = -A * s * (1/3) / 3 = 1/9
    expected = torch.tensor([[0.0, 0.0, 0.0], [1 / 9, 1 / 9, 1 / 9], [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(leaf.grad, expected)
    assert stats["ratio_mean"].item() == pytest.approx((math.exp(0.2) + 1.0) / 2)
    assert stats["clip_frac_high"].item() == 0.5 and stats["clip_frac_low"].item() == 0.0


def test_kl_term_is_each_completions_mean_k3_and_the_share_uses_the_step_count():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -2.0], [-0.5, -0.2]], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    k3 = lambda d: math.exp(d) - d - 1  # noqa: E731
    batch = LossInputs(logp, None, ref, torch.zeros(2, dtype=torch.float64), mask, step_sequences=4)
    loss, stats = gspo_loss(batch, GRPOConfig(beta=0.5))
    # A = 0: only the KL is left: beta * (mean k3 of completion 0 + k3 of completion 1) / 4 completions
    assert loss.item() == pytest.approx(0.5 * ((k3(-0.5) + 0.0) / 2 + 0.0) / 4)
    assert stats["kl"].item() == pytest.approx(k3(-0.5) / 3)


def test_the_gspo_config_selects_the_plug_in_and_trains_in_the_demo_world(tiny_model_dir, tmp_path):
    from data.synthetic import generate_world
    from grpo.config import load_config
    from grpo.trainer import Trainer

    world = generate_world(tmp_path / "world", n=8, seed=3, image_size=56)
    cfg = load_config("configs/variant_gspo.yaml", [
        f"model.path={tiny_model_dir}", f"data.annotation={world}", f"output_dir={tmp_path / 'run'}",
        "device=cpu", "max_steps=2", "sampling.max_new_tokens=8", "batch.prompts_per_device=2",
        "model.lora.rank=4", "model.lora.alpha=8",
    ])  # fmt: skip
    trainer = Trainer(cfg)
    assert trainer.loss_fn is gspo_loss
    trainer.train()
    trainer.close()
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and '"loss/ratio_mean": 1.0' in rows[0]
