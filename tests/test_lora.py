"""LoRA policy / reference behaviour: targets, gradients, reference invariance in both reference modes, the
peft requires_grad trap, save/load round trip and merge export."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from data.batching import append_completion, collate_prompts
from model.loading import language_hidden_states, lm_head_weight, load_model_and_processor
from model.lora import (
    POLICY,
    REFERENCE,
    add_policy_adapter,
    load_adapter,
    merge_and_save,
    reference_policy,
    save_adapter,
    trainable_parameters,
)
from model.optim import build_optimizer

LORA = dict(rank=4, alpha=8, dropout=0.0)


@pytest.fixture
def inputs(tiny_processor, make_image):
    """Two prompts (one and two images) with a 5-token completion each: forward inputs and the targets."""
    batch = collate_prompts(
        tiny_processor,
        [1, 2],
        images=[[make_image(112, 112, 0)], [make_image(84, 112, 1), make_image(56, 56, 2)]],
    )
    completion = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(0))
    return append_completion(batch, completion, torch.ones_like(completion)), completion


def logprobs(model, inputs_and_targets) -> torch.Tensor:
    inputs, targets = inputs_and_targets
    hidden = language_hidden_states(model, **inputs)[:, -targets.shape[1] - 1 : -1]
    logp = torch.log_softmax(hidden @ lm_head_weight(model).T, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def randomize_policy(model, std: float = 0.3, seed: int = 0) -> None:
    """Set the policy's LoRA A and B matrices from a seeded generator (B starts at zero in peft, so the
    adapter then changes the outputs, identically for every model given the same seed)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if f".{POLICY}." in name and "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def policy_step(model, inputs_and_targets, lr: float = 0.5) -> None:
    optimizer = build_optimizer(trainable_parameters(model), lr=lr, weight_decay=0.0)
    loss = -logprobs(model, inputs_and_targets).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_lora_wraps_only_language_model_projections_and_freezes_the_rest(tiny_model):
    model = add_policy_adapter(tiny_model, **LORA)
    wrapped = {name for name, module in model.named_modules() if hasattr(module, "lora_A")}
    kinds = {name.rsplit(".", 1)[-1] for name in wrapped}
    assert kinds == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(wrapped) == 7 * tiny_model.config.text_config.num_hidden_layers
    assert all(".language_model.layers." in name for name in wrapped)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(f".{POLICY}." in name and "lora_" in name for name in trainable)
    assert not any(p.requires_grad for p in model.get_base_model().model.visual.parameters())
    assert len(trainable_parameters(model)) == len(trainable)
    with pytest.raises(ValueError, match="nope"):
        add_policy_adapter(
            load_model_and_processor(model.get_base_model().name_or_path)[0], target_regex="nope"
        )


def test_gradients_reach_only_the_trainable_policy_adapter(tiny_model, inputs):
    model = add_policy_adapter(tiny_model, **LORA)
    randomize_policy(model)
    with reference_policy(model) as reference:
        logprobs(reference, inputs)
    (-logprobs(model, inputs).mean()).backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


@pytest.mark.parametrize("mode", ["adapter disabled", "reference adapter"])
def test_reference_logprobs_are_unchanged_by_policy_updates(tiny_model, inputs, tmp_path, mode):
    if mode == "adapter disabled":
        model = add_policy_adapter(tiny_model, **LORA)
        randomize_policy(model)
    else:
        start = add_policy_adapter(tiny_model, **LORA)
        randomize_policy(start)
        save_adapter(start, tmp_path / "sft")
        base, _ = load_model_and_processor(start.get_base_model().name_or_path)
        model = add_policy_adapter(base, init_from=tmp_path / "sft")
        assert REFERENCE in model.peft_config
    with reference_policy(model) as reference:
        reference_before = logprobs(reference, inputs)
    policy_before = logprobs(model, inputs).detach()
    if mode == "reference adapter":  # both start as the same adapter
        torch.testing.assert_close(policy_before, reference_before)
    policy_step(model, inputs)
    with reference_policy(model) as reference:
        reference_after = logprobs(reference, inputs)
    assert torch.equal(reference_after, reference_before)
    assert not torch.allclose(logprobs(model, inputs), policy_before)


def test_reference_adapter_mode_is_the_sft_adapter_not_the_base(tiny_model, inputs, tmp_path):
    start = add_policy_adapter(tiny_model, **LORA)
    randomize_policy(start)
    with torch.no_grad():
        sft_logprobs = logprobs(start, inputs)
        with start.disable_adapter():
            base_logprobs = logprobs(start, inputs)
    save_adapter(start, tmp_path / "sft")
    base, _ = load_model_and_processor(start.get_base_model().name_or_path)
    model = add_policy_adapter(base, init_from=tmp_path / "sft")
    with reference_policy(model) as reference:
        reference_logprobs = logprobs(reference, inputs)
    torch.testing.assert_close(reference_logprobs, sft_logprobs)
    assert not torch.allclose(reference_logprobs, base_logprobs)


def test_peft_trap_set_adapter_freezes_the_policy_and_reference_policy_restores_it(
    tiny_model, inputs, tmp_path
):
    start = add_policy_adapter(tiny_model, **LORA)
    save_adapter(start, tmp_path / "sft")
    base, _ = load_model_and_processor(start.get_base_model().name_or_path)
    model = add_policy_adapter(base, init_from=tmp_path / "sft")
    policy_names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert policy_names and all(f".{POLICY}." in name for name in policy_names)

    # The trap, as peft behaves: activating the reference adapter silently freezes the policy.
    model.set_adapter(REFERENCE)
    assert not any(p.requires_grad for name, p in model.named_parameters() if name in policy_names)
    model.set_adapter(POLICY)

    model.train()
    with reference_policy(model) as reference:
        assert not reference.training
        assert reference.active_adapter == REFERENCE
        logprobs(reference, inputs)
    assert model.training and model.active_adapter == POLICY
    assert {name for name, p in model.named_parameters() if p.requires_grad} == policy_names
    (-logprobs(model, inputs).mean()).backward()
    assert all(p.grad is not None for name, p in model.named_parameters() if name in policy_names)


def test_reference_is_deterministic_even_with_lora_dropout_in_train_mode(tiny_model, inputs, tmp_path):
    start = add_policy_adapter(tiny_model, rank=4, alpha=8, dropout=0.5)
    randomize_policy(start)
    save_adapter(start, tmp_path / "sft")
    base, _ = load_model_and_processor(start.get_base_model().name_or_path)
    model = add_policy_adapter(base, init_from=tmp_path / "sft")
    model.train()
    with reference_policy(model) as reference:
        first, second = logprobs(reference, inputs), logprobs(reference, inputs)
    assert torch.equal(first, second)
    assert not torch.equal(logprobs(model, inputs), logprobs(model, inputs))  # the policy does use dropout


def test_save_load_round_trip_gives_identical_outputs(tiny_model, inputs, tmp_path):
    model = add_policy_adapter(tiny_model, **LORA)
    randomize_policy(model)
    with torch.no_grad():
        expected = logprobs(model, inputs)
    out = save_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert all("lora_" in key for key in load_file(out / "adapter_model.safetensors"))
    base_path = model.get_base_model().name_or_path

    stock = PeftModel.from_pretrained(load_model_and_processor(base_path)[0], out)  # peft's own loader
    ours = load_adapter(load_model_and_processor(base_path)[0], out)
    with torch.no_grad():
        assert torch.equal(logprobs(stock, inputs), expected)
        assert torch.equal(logprobs(ours, inputs), expected)
    assert trainable_parameters(ours)
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        load_adapter(load_model_and_processor(base_path)[0], tmp_path)


def test_merge_and_save_exports_a_plain_checkpoint_with_the_same_outputs(
    tiny_model, tiny_processor, inputs, tmp_path
):
    model = add_policy_adapter(tiny_model, **LORA)
    randomize_policy(model)
    with torch.no_grad():
        expected = logprobs(model, inputs)
    merge_and_save(model, tmp_path / "merged", processor=tiny_processor)
    merged, processor = load_model_and_processor(tmp_path / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(logprobs(merged, inputs), expected, rtol=1e-5, atol=1e-5)
    assert processor.tokenizer.get_vocab() == tiny_processor.tokenizer.get_vocab()


def test_gradient_checkpointing_gives_the_same_policy_gradients(tiny_model_dir, inputs):
    def policy_grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        base, _ = load_model_and_processor(tiny_model_dir, gradient_checkpointing=checkpointing)
        model = add_policy_adapter(base, **LORA)
        randomize_policy(model)
        model.train()
        (-logprobs(model, inputs).mean()).backward()
        return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = policy_grads(False), policy_grads(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6)


def test_hidden_states_through_a_ddp_wrapper_match_and_reach_the_policy(tiny_model, inputs, tmp_path):
    """language_hidden_states runs the wrapper's own forward, so DDP's gradient hooks apply."""
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = add_policy_adapter(tiny_model, **LORA)
        randomize_policy(model)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        with torch.no_grad():
            expected = logprobs(model, inputs)
        through_ddp = logprobs(ddp, inputs)
        torch.testing.assert_close(through_ddp, expected)
        (-through_ddp.mean()).backward()
        assert all(p.grad is not None for p in trainable_parameters(model))
    finally:
        dist.destroy_process_group()
