"""The trainer's glue, tested as strictly as the math: the log-probs the loss sees are the model's own, at
the right positions, and the logged KL is the KL to the reference (not to the policy itself)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data.batching import append_completion, collate_prompts
from data.r2gen import Sample
from grpo.config import load_config
from grpo.trainer import Trainer
from model.loading import load_model_and_processor
from rewards.combine import RewardOutput


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from data.synthetic import generate_world

    return generate_world(tmp_path_factory.mktemp("world"), n=12, seed=2, image_size=56)


def make_trainer(tiny_model_dir, world, out, *overrides):
    cfg = load_config(None, [
        f"model.path={tiny_model_dir}", f"data.annotation={world}", f"output_dir={out}", "device=cpu",
        "model.lora.rank=8", "model.lora.alpha=16", "sampling.max_new_tokens=8", "batch.prompts_per_device=2",
        "optim.warmup_ratio=0.0", "optim.grad_clip=1.0", "optim.lr=0.02", "save_every=100", *overrides,
    ])  # fmt: skip
    return Trainer(cfg, reward_fn=letter_e_reward)


def letter_e_reward(completions, references, keys):
    r = np.array([t.count("e") / max(len(t), 1) for t in completions], dtype=np.float32)
    return RewardOutput(total=r, terms={"e_share": r})


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, prompt_len: int, temperature: float = 1.0):
    """Log-softmax of full (N, P+T, V) logits at the positions that predict each completion token."""
    predicting = logits[:, prompt_len - 1 : -1].double() / temperature
    return predicting.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)


def test_completion_logprobs_are_the_models_own_with_images_left_padding_and_groups(
    tiny_model_dir, world, tmp_path, make_image
):
    trainer = make_trainer(tiny_model_dir, world, tmp_path, "sampling.group_size=3")
    with torch.no_grad():  # move the adapter away from zero, so the policy differs from the base
        for p in trainer.params:
            p.add_(0.05 * torch.randn_like(p))
    paths = []
    for k, (h, w) in enumerate([(56, 56), (112, 84)]):  # more image tokens in the second prompt
        make_image(h, w, seed=k).save(tmp_path / f"view{k}.png")
        paths.append(tmp_path / f"view{k}.png")
    samples = [Sample(f"s{k}", f"s{k}", (p,), "no finding", None, "train") for k, p in enumerate(paths)]
    ro = trainer.sample_group(samples)
    G = 3
    assert ro.completion_ids.shape[0] == 2 * G

    # the model's own forward on every row, pixels included (no encoded-once image features)
    rows = collate_prompts(trainer.processor, [s for s in samples for _ in range(G)], trainer.cfg.data.prompt)
    assert (rows["attention_mask"][:, 0] == 0).any(), "the test needs a left-padded prompt"
    assert rows["input_ids"].shape[1] == ro.prompt_len
    full = append_completion(rows, ro.completion_ids, ro.completion_mask)
    with torch.no_grad():
        logits = trainer.model(**full).logits
        for temperature in (1.0, 0.7):
            got = trainer.completion_logprobs(
                trainer.model,
                ro.inputs,
                ro.images,
                ro.prompt_len,
                ro.completion_ids,
                ro.completion_mask,
                temperature,
            )
            expected = token_logprobs(logits, ro.completion_ids, ro.prompt_len, temperature)
            mask = ro.completion_mask
            torch.testing.assert_close(got[mask].double(), expected[mask], rtol=1e-4, atol=1e-5)
    trainer.close()


def test_prompt_once_gives_the_full_rows_log_probs_and_gradients(tiny_model_dir, world, tmp_path, make_image):
    """grpo.prompt_once (each prompt once, its G completions on a repeat of its KV cache) against every row's
    prompt + completion: same log-probs, same gradients, on left-padded prompts with different image counts
    and completions that stop at different lengths."""
    trainer = make_trainer(
        tiny_model_dir, world, tmp_path, "sampling.group_size=3", "sampling.max_new_tokens=12"
    )
    with torch.no_grad():  # move the adapter away from zero, so LoRA is on the gradient's path
        for p in trainer.params:
            p.add_(0.05 * torch.randn_like(p))
    views = [[make_image(56, 56, seed=0)], [make_image(112, 84, seed=1), make_image(56, 84, seed=2)]]
    paths = []
    for k, images in enumerate(views):
        paths.append(tuple(tmp_path / f"s{k}-view{j}.png" for j in range(len(images))))
        for image, path in zip(images, paths[-1]):
            image.save(path)
    samples = [Sample(f"s{k}", f"s{k}", p, "no finding", None, "train") for k, p in enumerate(paths)]
    ro = trainer.sample_group(samples)
    assert (ro.prompts["attention_mask"][:, 0] == 0).any(), "the test needs a left-padded prompt"
    # completions that stop at different lengths (the untrained tiny model rarely samples EOS): cut them
    lengths = torch.tensor([12, 5, 9, 3, 12, 7])
    ro.completion_mask = torch.arange(12)[None, :] < lengths[:, None]
    ro.completion_ids = ro.completion_ids.masked_fill(~ro.completion_mask, trainer.tokenizer.pad_token_id)
    mask = ro.completion_mask

    def logprobs_and_grads(prompt_once: bool):
        trainer.prompt_once = prompt_once
        for p in trainer.params:
            p.grad = None
        logp = trainer._rollout_logprobs(trainer.model, ro)
        weights = torch.linspace(-1, 1, logp.numel()).view_as(logp)  # a loss that weighs every token
        (logp * weights)[mask].sum().backward()
        return logp.detach(), torch.cat([p.grad.flatten() for p in trainer.params])

    full_logp, full_grad = logprobs_and_grads(False)
    once_logp, once_grad = logprobs_and_grads(True)
    torch.testing.assert_close(once_logp[mask], full_logp[mask], rtol=1e-4, atol=1e-5)
    assert full_grad.norm() > 0
    # float32 in a different summation order: elementwise within 1e-4 of the largest gradient (seen: 3e-6 of it)
    torch.testing.assert_close(once_grad, full_grad, rtol=1e-3, atol=1e-4 * full_grad.abs().max().item())
    assert (once_grad - full_grad).norm() < 1e-4 * full_grad.norm()
    trainer.close()


def test_logged_kl_is_positive_and_equals_k3_to_the_reference_computed_independently(
    tiny_model_dir, world, tmp_path
):
    """The reference of a run from a fresh adapter is the base model: load it separately and compute k3
    from full logits of both models, for the rollouts of every step, before the update."""
    trainer = make_trainer(tiny_model_dir, world, tmp_path, "max_steps=4", "grpo.beta=0.04")
    base, _ = load_model_and_processor(tiny_model_dir, device="cpu")
    expected = []
    update = trainer.grpo_update

    def update_and_check(rollouts):
        per_batch = []
        with torch.no_grad():
            for ro in rollouts:
                images = ro.images.model_kwargs()
                policy = token_logprobs(
                    trainer.model(**ro.inputs, **images).logits, ro.completion_ids, ro.prompt_len
                )
                ref = token_logprobs(
                    base(**ro.inputs, **ro.images.model_kwargs()).logits, ro.completion_ids, ro.prompt_len
                )
                k3 = torch.exp(ref - policy) - (ref - policy) - 1
                per_batch.append(k3[ro.loss_mask].mean().item())
        expected.append(float(np.mean(per_batch)))
        return update(rollouts)

    trainer.grpo_update = update_and_check
    trainer.train()
    trainer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [row["loss/kl"] for row in rows]
    assert logged[0] == 0.0 and expected[0] == pytest.approx(0.0, abs=1e-9)  # fresh adapter: policy = base
    assert logged[-1] > 1e-5, logged
    assert logged == pytest.approx(expected, rel=1e-3, abs=1e-8)
