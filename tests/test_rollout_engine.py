"""The rollout engines sample the same distribution (model/engine): greedy tokens, per-step sampling
probabilities, stop handling, truncation flags, vision-token suppression, log-prob agreement with the loss's
recomputation, LoRA weights untouched, and no leak of a checkpoint's generation_config.

Tolerances (fp32 on CPU, tiny model with logits up to ~12): decode logits within 1e-3 of a full forward
(observed ~1e-4 to 3e-4: incremental vs full-sequence summation order), sampling probabilities within 1e-4,
engine log-probs within 5e-4 of the trainer's recomputation."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

import model.engine.static as static_module
from data.batching import append_completion, collate_prompts, images_per_row, repeat_for_group
from grpo.logprobs import token_logprobs_from_hidden
from model.engine import SamplingParams, make_engine
from model.engine.next_token import choose_tokens, inverse_cdf_sample, process_logits
from model.generation import split_completions, stop_token_ids
from model.loading import (
    encode_images,
    language_hidden_states,
    lm_head_weight,
    load_model_and_processor,
    vision_token_ids,
)
from model.lora import POLICY, add_policy_adapter

LOGIT_TOL, PROB_TOL, LOGP_TOL = 1e-3, 1e-4, 5e-4


@pytest.fixture
def policy(tiny_model):
    """The tiny model with a LoRA policy adapter whose A and B are random (so LoRA changes the outputs)."""
    model = add_policy_adapter(tiny_model, rank=4, alpha=8, dropout=0.0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if f".{POLICY}." in name and "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.eval()


@pytest.fixture
def prompts(tiny_processor, make_image):
    """Two left-padded prompts with one and two images (different RoPE offsets per row)."""
    images = [[make_image(112, 112, 0)], [make_image(84, 112, 1), make_image(56, 56, 2)]]
    return collate_prompts(tiny_processor, [1, 2], images=images)


def params_for(processor, model, **overrides) -> SamplingParams:
    fields = dict(
        max_new_tokens=10, stop_ids=tuple(stop_token_ids(model, processor.tokenizer)),
        pad_id=processor.tokenizer.pad_token_id, suppress_ids=tuple(vision_token_ids(processor)),
    )  # fmt: skip
    fields.update(overrides)
    return SamplingParams(**fields)


def run(engine: str, model, prompts, params, seed: int = 0):
    torch.manual_seed(seed)
    return make_engine(engine).generate(model, dict(prompts), params)


def teacher_forced_logits(model, prompts, tokens, group_size: int) -> torch.Tensor:
    """(N, T, V) logits of a full forward over prompt + completion at the positions predicting each token."""
    inputs = append_completion(repeat_for_group(dict(prompts), group_size), tokens, torch.ones_like(tokens))
    hidden = language_hidden_states(model, **inputs)
    prompt_len = prompts["input_ids"].shape[1]
    return hidden[:, prompt_len - 1 : -1] @ lm_head_weight(model).T


def test_greedy_tokens_stops_and_truncation_flags_are_identical(policy, prompts, tiny_processor):
    params = params_for(tiny_processor, policy, do_sample=False)
    reference = run("hf", policy, prompts, params).tokens
    # make a token the greedy path emits in row 0 only a stop token: row 0 stops early, row 1 is truncated
    extra_stop = int(reference[0, 3])
    assert extra_stop not in reference[1].tolist()
    params = params_for(tiny_processor, policy, do_sample=False, stop_ids=(*params.stop_ids, extra_stop))
    hf, static = run("hf", policy, prompts, params), run("static", policy, prompts, params)
    assert torch.equal(hf.tokens, static.tokens)
    hf_split = split_completions(hf.tokens, list(params.stop_ids), params.pad_id)
    static_split = split_completions(static.tokens, list(params.stop_ids), params.pad_id)
    for a, b in zip(hf_split, static_split):
        assert torch.equal(a, b)
    assert static_split[2].tolist() == [False, True]  # truncated flags
    assert static_split[1][0].sum() == 4  # row 0 stops at its 4th token (stop included)


def test_sampling_probabilities_match_hf_step_by_step(policy, prompts, tiny_processor, monkeypatch):
    """The static engine's per-step distribution (suppression, min_new_tokens, temperature, top-p) equals HF's
    logits processors applied to a full forward over the same tokens."""
    G = 3
    params = params_for(tiny_processor, policy, num_samples=G, temperature=0.7, top_p=0.9, min_new_tokens=3)
    recorded = []

    def recording(logits, **kwargs):
        recorded.append(logits.clone())
        return choose_tokens(logits, **kwargs)

    monkeypatch.setattr(static_module, "choose_tokens", recording)
    out = run("static", policy, prompts, params)
    engine_logits = torch.stack(recorded, dim=1)  # (N, T, V)
    full = teacher_forced_logits(policy, prompts, out.tokens, G)
    assert (engine_logits - full).abs().max() < LOGIT_TOL

    processors = LogitsProcessorList([
        SuppressTokensLogitsProcessor(list(params.suppress_ids)),
        MinNewTokensLengthLogitsProcessor(prompts["input_ids"].shape[1], params.min_new_tokens,
                                          list(params.stop_ids)),
        TemperatureLogitsWarper(params.temperature),
        TopPLogitsWarper(params.top_p),
    ])  # fmt: skip
    prompt_ids = prompts["input_ids"].repeat_interleave(G, dim=0)
    for t in range(out.tokens.shape[1]):
        ids = torch.cat([prompt_ids, out.tokens[:, :t]], dim=1)
        hf_probs = processors(ids, full[:, t].clone()).softmax(-1)
        ours = process_logits(
            engine_logits[:, t],
            temperature=params.temperature,
            top_p=params.top_p,
            suppress_ids=torch.tensor(params.suppress_ids),
            stop_ids=torch.tensor(params.stop_ids),
            block_stop=t < params.min_new_tokens,
        ).softmax(-1)
        assert (hf_probs - ours).abs().max() < PROB_TOL
        assert torch.equal(hf_probs > 0, ours > 0)  # the same support: same top-p cut, same suppressed ids


def test_engine_logprobs_agree_with_the_loss_recomputation(policy, prompts, tiny_processor):
    """What `rollout/logprob_gap` measures: the engine's log-probs vs the trainer's chunked log-prob pass
    (encoded image features, mm_token_type_ids, temperature) over the sampled completions."""
    G, temperature = 2, 0.8
    params = params_for(tiny_processor, policy, num_samples=G, temperature=temperature, max_new_tokens=8)
    pixels = prompts["pixel_values"]
    text_prompts = {k: v for k, v in prompts.items() if k != "pixel_values"}
    images = encode_images(policy, pixels, prompts["image_grid_thw"])
    torch.manual_seed(0)
    out = make_engine("static").generate(policy, text_prompts, params, images=images)
    ids, mask, _ = split_completions(out.tokens, list(params.stop_ids), params.pad_id)
    inputs = append_completion(repeat_for_group(text_prompts, G), ids, mask)
    counts = images_per_row(prompts, image_token_id=tiny_processor.image_token_id)
    extra = images.repeat_per_prompt(counts, G).model_kwargs()
    hidden = language_hidden_states(policy, **inputs, **extra)[:, prompts["input_ids"].shape[1] - 1 : -1]
    recomputed = token_logprobs_from_hidden(
        hidden, lm_head_weight(policy), ids, temperature=temperature, mask=mask
    )
    gap = ((recomputed - out.logprobs).abs() * mask).max()
    assert gap < LOGP_TOL


def test_static_engine_leaves_the_trainer_weights_untouched(policy, prompts, tiny_processor):
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    run("static", policy, prompts, params_for(tiny_processor, policy, num_samples=2))
    after = policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_merged_and_unmerged_lora_decode_the_same_logits(policy, prompts, tiny_processor, monkeypatch):
    recorded = {True: [], False: []}
    params = params_for(tiny_processor, policy, do_sample=False)
    for merge in (True, False):

        def recording(logits, _merge=merge, **kwargs):
            recorded[_merge].append(logits.clone())
            return choose_tokens(logits, **kwargs)

        monkeypatch.setattr(static_module, "choose_tokens", recording)
        static_module.StaticEngine(merge_lora=merge).generate(policy, dict(prompts), params)
    assert (torch.stack(recorded[True]) - torch.stack(recorded[False])).abs().max() < LOGIT_TOL


def test_compiled_decode_falls_back_to_eager_off_cuda():
    engine = make_engine("static", compile_decode=True)
    assert engine._step_function(torch.device("cpu")) is static_module.decode_step


def test_inverse_cdf_sampler_draws_the_softmax_probabilities():
    probs = torch.tensor([0.5, 0.0, 0.2, 0.25, 0.0, 0.05])
    scores = probs.log().expand(200_000, -1).contiguous()
    draws = inverse_cdf_sample(scores, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws, minlength=6).float() / draws.numel()
    assert frequencies[1] == 0 and frequencies[4] == 0  # zero probability: never drawn
    assert (frequencies - probs).abs().max() < 0.005  # ~4 standard errors at this many draws


def test_suppressed_and_blocked_tokens_are_never_chosen():
    logits = torch.zeros(4, 10)
    logits[:, 7] = 50.0  # a vision token the policy strongly prefers
    logits[:, 2] = 40.0  # a stop token, blocked before min_new_tokens
    for do_sample in (True, False):
        tokens, _ = choose_tokens(
            logits, do_sample=do_sample, temperature=1.0, top_p=1.0, suppress_ids=torch.tensor([7]),
            stop_ids=torch.tensor([2]), block_stop=True,
        )  # fmt: skip
        assert not torch.isin(tokens, torch.tensor([2, 7])).any()


def test_top_p_filter_keeps_the_same_tokens_as_hf():
    logits = torch.randn(32, 500, generator=torch.Generator().manual_seed(0)) * 3
    for top_p in (0.1, 0.5, 0.9, 0.999):
        ours = process_logits(logits, temperature=1.0, top_p=top_p)
        hf = TopPLogitsWarper(top_p)(None, logits.clone())
        assert torch.equal(torch.isinf(ours), torch.isinf(hf))


@pytest.fixture
def leaky_checkpoint(tiny_model_dir, tmp_path):
    """A copy of the tiny checkpoint whose generation_config would change sampling if it leaked."""
    folder = tmp_path / "leaky-checkpoint"
    shutil.copytree(tiny_model_dir, folder)
    config_file = folder / "generation_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config.update(repetition_penalty=2.0, top_k=1, temperature=0.1, no_repeat_ngram_size=2, do_sample=True)
    config_file.write_text(json.dumps(config))
    return folder


def test_a_checkpoint_generation_config_does_not_change_what_is_sampled(
    tiny_model_dir, leaky_checkpoint, prompts, tiny_processor
):
    clean, _ = load_model_and_processor(tiny_model_dir, device="cpu")
    leaky, _ = load_model_and_processor(leaky_checkpoint, device="cpu")
    assert leaky.generation_config.repetition_penalty == 2.0 and leaky.generation_config.top_k == 1
    params = params_for(tiny_processor, clean, num_samples=3, max_new_tokens=12)
    for engine in ("hf", "static"):
        assert torch.equal(
            run(engine, clean, prompts, params).tokens, run(engine, leaky, prompts, params).tokens
        )
    # the check can fail: a plain generate() call does pick the leaked settings up
    sampling = dict(
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=12,
        num_return_sequences=3,
        eos_token_id=list(params.stop_ids),
        pad_token_id=params.pad_id,
    )
    outputs = []
    for model in (clean, leaky):
        torch.manual_seed(0)
        outputs.append(model.generate(**prompts, **sampling))
    assert not torch.equal(*outputs)
    assert leaky.generation_config.repetition_penalty == 2.0  # the engine restored the model's own config
    assert isinstance(leaky.generation_config, GenerationConfig)


@pytest.mark.parametrize("engine", ["hf", "static"])
def test_evaluation_generation_ignores_the_checkpoint_generation_config(
    tiny_model_dir, leaky_checkpoint, tmp_path, engine
):
    import yaml

    from data.synthetic import generate_world
    from evaluation.generate import Decoding, generate_split
    from grpo.config import load_config, to_dict

    annotation = generate_world(tmp_path / "world", n=6, seed=0, image_size=56)
    texts = []
    for name, checkpoint in (("clean", tiny_model_dir), ("leaky", leaky_checkpoint)):
        run_dir = tmp_path / name
        run_dir.mkdir()
        cfg = load_config(
            None,
            [
                f"model.path={checkpoint}",
                f"data.annotation={annotation}",
                f"output_dir={run_dir}",
                "device=cpu",
                "sampling.max_new_tokens=8",
            ],
        )
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
        torch.manual_seed(0)
        decoding = Decoding(do_sample=True, engine=engine, batch_size=4)
        rows = generate_split(
            run_dir, "test", run_dir / "eval", no_adapter=True, decoding=decoding, device="cpu"
        )
        texts.append([row["generated"] for row in rows])
    assert texts[0] == texts[1] and any(texts[0])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_the_fast_sampling_path_draws_what_the_exact_path_draws(temperature):
    """top_p = 1 takes a shortcut (shared exponentials, excluded tokens zeroed); with the same random
    numbers it must pick the same tokens and log-probs as processing the logits then drawing."""
    logits = torch.randn(64, 3000, generator=torch.Generator().manual_seed(1)) * 4
    suppress, stops = torch.tensor([5, 17, 2999]), torch.tensor([0, 1])
    options = dict(
        do_sample=True, temperature=temperature, suppress_ids=suppress, stop_ids=stops, block_stop=True
    )
    fast = choose_tokens(logits, top_p=1.0, generator=torch.Generator().manual_seed(7), **options)
    exact_scores = process_logits(
        logits, temperature=temperature, top_p=1.0, suppress_ids=suppress, stop_ids=stops, block_stop=True
    )
    exact = inverse_cdf_sample(exact_scores, torch.Generator().manual_seed(7))
    assert torch.equal(fast[0], exact)
    reference_logp = torch.log_softmax(logits / temperature, dim=-1).gather(1, exact[:, None]).squeeze(1)
    assert torch.allclose(fast[1], reference_logp, atol=1e-5)
    # a dominating excluded token leaves no float32 mass elsewhere: the exact path takes over
    logits[:, 5] = 500.0
    tokens, logp = choose_tokens(logits, top_p=1.0, **options)
    assert not torch.isin(tokens, torch.cat([suppress, stops])).any() and torch.isfinite(logp).all()
