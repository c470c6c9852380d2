"""Chunked per-token log-probs equal the naive full-logits computation, in values and gradients."""

import math

import pytest
import torch

from grpo.logprobs import selective_log_softmax, token_logprobs_from_hidden

QWEN_VOCAB = 151_936


def _naive_from_hidden(hidden, weight, targets, temperature=1.0, bias=None):
    logits = torch.nn.functional.linear(hidden, weight, bias).float() / temperature
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _inputs(n=3, t=7, width=16, vocab=50, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, t, width, generator=generator, dtype=dtype)
    weight = torch.randn(vocab, width, generator=generator, dtype=dtype) / width**0.5
    bias = 0.1 * torch.randn(vocab, generator=generator, dtype=dtype)
    targets = torch.randint(vocab, (n, t), generator=generator)
    upstream = torch.randn(n, t, generator=generator, dtype=torch.float32)  # a generic d loss / d logp
    return hidden, weight, bias, targets, upstream


def _values_and_grads(function, tensors, upstream):
    leaves = [tensor.detach().clone().requires_grad_() for tensor in tensors]
    values = function(*leaves)
    (values * upstream).sum().backward()
    return values.detach(), [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 20, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_hidden_chunked_equals_naive_in_values_and_gradients(chunk_size, temperature):
    hidden, weight, bias, targets, upstream = _inputs()
    naive = _values_and_grads(
        lambda h, w, b: _naive_from_hidden(h, w, targets, temperature, b), [hidden, weight, bias], upstream
    )
    chunked = _values_and_grads(
        lambda h, w, b: token_logprobs_from_hidden(h, w, targets, temperature, chunk_size, bias=b),
        [hidden, weight, bias],
        upstream,
    )
    torch.testing.assert_close(chunked[0], naive[0], rtol=1e-6, atol=1e-6)
    for got, expected in zip(chunked[1], naive[1]):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_temperature_divides_the_logits():
    hidden, weight, _, targets, _ = _inputs()
    cold = token_logprobs_from_hidden(hidden, weight, targets, temperature=0.5)
    doubled = token_logprobs_from_hidden(hidden, 2 * weight, targets, temperature=1.0)
    torch.testing.assert_close(cold, doubled)
    assert (cold - token_logprobs_from_hidden(hidden, weight, targets)).abs().max() > 0.1


def test_mask_computes_only_real_tokens_returns_zero_elsewhere_with_no_gradient():
    hidden, weight, _, targets, upstream = _inputs()
    mask = torch.arange(7)[None, :] < torch.tensor([7, 3, 0])[:, None]
    padded_targets = torch.where(mask, targets, -100)  # ignore-index style padding is never looked up
    naive_values, (naive_grad_h, naive_grad_w) = _values_and_grads(
        lambda h, w: _naive_from_hidden(h, w, targets) * mask, [hidden, weight], upstream
    )
    for chunk_size in (2, 1024):
        values, (grad_h, grad_w) = _values_and_grads(
            lambda h, w, c=chunk_size: token_logprobs_from_hidden(
                h, w, padded_targets, chunk_size=c, mask=mask
            ),
            [hidden, weight],
            upstream,
        )
        assert torch.equal(values[~mask], torch.zeros(int((~mask).sum()), dtype=values.dtype))
        torch.testing.assert_close(values, naive_values)
        assert torch.equal(grad_h[~mask], torch.zeros_like(grad_h[~mask]))
        torch.testing.assert_close(grad_h, naive_grad_h)
        torch.testing.assert_close(grad_w, naive_grad_w)


def test_all_false_mask_gives_zeros():
    hidden, weight, _, targets, _ = _inputs()
    values = token_logprobs_from_hidden(hidden, weight, targets, mask=torch.zeros(3, 7, dtype=torch.bool))
    assert torch.equal(values, torch.zeros(3, 7))


def test_qwen_vocabulary_with_small_hidden_matches_naive_in_values_and_gradients():
    """Both float32 paths, chunked and naive, against a float64 reference. At 151,936 logits the order in
    which a CPU adds them up moves float32 results by a few eps * sqrt(V) of the largest entry (rounding
    errors of V terms add up like a random walk), so that, not a fixed 1e-5, is the tolerance: it passes
    on any summation order and still fails any real error, which is of the order of the values."""
    hidden, weight, bias, targets, upstream = _inputs(
        n=2, t=5, width=8, vocab=QWEN_VOCAB, dtype=torch.float32
    )
    exact = _values_and_grads(
        lambda h, w: _naive_from_hidden(h, w, targets, 0.9),
        [hidden.double(), weight.double()],
        upstream.double(),
    )
    naive = _values_and_grads(lambda h, w: _naive_from_hidden(h, w, targets, 0.9), [hidden, weight], upstream)
    chunked = _values_and_grads(
        lambda h, w: token_logprobs_from_hidden(h, w, targets, 0.9, chunk_size=3), [hidden, weight], upstream
    )
    tolerance = 8 * torch.finfo(torch.float32).eps * math.sqrt(QWEN_VOCAB)  # ~3.7e-4 of the largest entry

    def assert_near(got, expected):
        scale = expected.abs().max().item()
        assert (got.double() - expected).abs().max().item() <= tolerance * scale

    for path in (chunked, naive):
        assert_near(path[0], exact[0])
        for got, expected in zip(path[1], exact[1]):
            assert_near(got, expected)
    assert chunked[0].max() < 0 and chunked[0].min() > -20  # sane log-probs over 151,936 tokens


def test_bf16_inputs_match_the_fp32_computation_within_bf16_rounding():
    """bf16 keeps 8 significant bits: logits of size ~3 round by up to ~0.008, and log-probs inherit about
    twice that (the target logit plus the log-sum-exp). Tolerance 0.03 absolute on values and 2% of the
    largest gradient entry on gradients."""
    hidden, weight, _, targets, upstream = _inputs(n=2, t=9, width=32, vocab=300, dtype=torch.float32)
    reference = _values_and_grads(lambda h, w: _naive_from_hidden(h, w, targets), [hidden, weight], upstream)
    bf16 = _values_and_grads(
        lambda h, w: token_logprobs_from_hidden(h, w, targets, chunk_size=5),
        [hidden.bfloat16(), weight.bfloat16()],
        upstream,
    )
    assert bf16[0].dtype == torch.float32
    torch.testing.assert_close(bf16[0], reference[0], rtol=0, atol=0.03)
    for got, expected in zip(bf16[1], reference[1]):
        assert got.dtype == torch.bfloat16
        assert (got.float() - expected).abs().max() < 0.02 * expected.abs().max()


def test_backward_keeps_no_chunk_logits_alive():
    """What autograd stores for the backward pass, beyond the inputs themselves, is far smaller than one
    chunk's logits; the naive route stores the full (N*T, V) logits."""
    hidden, weight, _, targets, _ = _inputs(n=4, t=32, width=8, vocab=4096, dtype=torch.float32)
    chunk_size = 16
    one_chunk_logits_bytes = chunk_size * 4096 * 4

    def saved_bytes(function):
        leaves = [hidden.clone().requires_grad_(), weight.clone().requires_grad_()]
        inputs = {leaf.untyped_storage().data_ptr() for leaf in [*leaves, targets]}
        storages = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in inputs:  # views of the inputs cost nothing extra
                storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            values = function(*leaves)
        values.sum().backward()
        return sum(storages.values())

    naive = saved_bytes(lambda h, w: _naive_from_hidden(h, w, targets))
    chunked = saved_bytes(lambda h, w: token_logprobs_from_hidden(h, w, targets, chunk_size=chunk_size))
    assert naive >= 4 * 32 * 4096 * 4
    assert chunked < one_chunk_logits_bytes / 4


def test_no_grad_path_gives_the_same_values_as_the_grad_path():
    hidden, weight, _, targets, _ = _inputs()
    with torch.no_grad():
        frozen = token_logprobs_from_hidden(hidden, weight, targets, chunk_size=4)
    live = token_logprobs_from_hidden(hidden.requires_grad_(), weight, targets, chunk_size=4)
    assert live.requires_grad and not frozen.requires_grad
    torch.testing.assert_close(frozen, live.detach(), rtol=0, atol=0)


def test_int32_targets_work_like_int64():
    hidden, weight, _, targets, _ = _inputs()
    torch.testing.assert_close(
        token_logprobs_from_hidden(hidden, weight, targets.int()),
        token_logprobs_from_hidden(hidden, weight, targets),
    )


@pytest.mark.parametrize("chunk_size", [1, 5, 1024])
@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_selective_log_softmax_equals_naive_in_values_and_gradients(chunk_size, temperature):
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 6, 40, generator=generator, dtype=torch.float64)
    targets = torch.randint(40, (3, 6), generator=generator)
    upstream = torch.randn(3, 6, generator=generator)
    naive = _values_and_grads(
        lambda z: (z.float() / temperature).log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1),
        [logits],
        upstream,
    )
    chunked = _values_and_grads(
        lambda z: selective_log_softmax(z, targets, temperature, chunk_size), [logits], upstream
    )
    torch.testing.assert_close(chunked[0], naive[0])
    torch.testing.assert_close(chunked[1][0], naive[1][0])


def test_selective_log_softmax_upcasts_bf16_logits_per_chunk():
    generator = torch.Generator().manual_seed(3)
    logits = (4 * torch.randn(2, 5, 64, generator=generator)).bfloat16()
    targets = torch.randint(64, (2, 5), generator=generator)
    expected = logits.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
    got = selective_log_softmax(logits, targets, chunk_size=3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)  # exact up to fp32 summation order


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden": torch.zeros(3, 7)}, "hidden must be"),
        ({"weight": torch.zeros(50, 14)}, "weight must be"),
        ({"weight": torch.zeros(50, 15, dtype=torch.float32)}, "same dtype"),
        ({"targets": torch.zeros(3, 6, dtype=torch.long)}, "targets must have shape"),
        ({"targets": torch.zeros(3, 7)}, "integer token ids"),
        ({"targets": torch.full((3, 7), 50)}, r"\[0, 50\)"),
        ({"targets": torch.full((3, 7), -1)}, r"\[0, 50\)"),
        ({"temperature": 0.0}, "temperature"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"bias": torch.zeros(49)}, "bias"),
        ({"mask": torch.ones(3, 6, dtype=torch.bool)}, "mask must have shape"),
    ],
)
def test_bad_input_raises_a_clear_value_error(kwargs, message):
    hidden, weight, _, targets, _ = _inputs(width=15)
    args = {"hidden": hidden, "weight": weight, "targets": targets}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        token_logprobs_from_hidden(**args)


def test_selective_log_softmax_bad_input_raises_a_clear_value_error():
    with pytest.raises(ValueError, match="logits must be"):
        selective_log_softmax(torch.zeros(4, 10), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        selective_log_softmax(torch.zeros(1, 2, 10), torch.tensor([[3, 10]]))


# ------------------------------------------------------------------------------- entropy from the chunks


@pytest.mark.parametrize("chunk_size", [1, 5, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_entropy_from_the_chunks_equals_the_full_softmax_entropy_in_values_and_gradients(
    chunk_size, temperature
):
    """Both outputs at once: a loss that weighs log-probs and entropies gets the naive gradient (masked)."""
    hidden, weight, bias, targets, upstream = _inputs()
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, :] = False

    def naive(h, w, b):
        log_p = (torch.nn.functional.linear(h, w, b).float() / temperature).log_softmax(-1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        picked = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return torch.where(mask, picked, 0.0), torch.where(mask, entropy, 0.0)

    def chunked(h, w, b):
        return token_logprobs_from_hidden(
            h, w, targets, temperature, chunk_size, bias=b, mask=mask, entropy=True
        )

    results = []
    for function in (naive, chunked):
        leaves = [x.detach().clone().requires_grad_() for x in (hidden, weight, bias)]
        logp, entropy = function(*leaves)
        (logp * upstream + 0.3 * entropy * upstream.flip(0)).sum().backward()
        results.append((logp.detach(), entropy.detach(), [leaf.grad for leaf in leaves]))
    (logp, entropy, grads), (logp_n, entropy_n, grads_n) = results[1], results[0]
    torch.testing.assert_close(logp, logp_n, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(entropy, entropy_n, rtol=1e-6, atol=1e-6)
    assert entropy[mask].min() > 0 and entropy[~mask].eq(0).all()
    for got, expected in zip(grads, grads_n):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_entropy_of_a_uniform_distribution_is_log_vocab_and_an_empty_mask_gives_zeros():
    hidden = torch.zeros(1, 2, 4)
    weight = torch.randn(10, 4)
    logp, entropy = token_logprobs_from_hidden(
        hidden, weight, torch.zeros(1, 2, dtype=torch.long), entropy=True
    )
    torch.testing.assert_close(entropy, torch.full((1, 2), math.log(10)))
    torch.testing.assert_close(logp, torch.full((1, 2), -math.log(10)))
    empty = torch.zeros(1, 2, dtype=torch.bool)
    logp, entropy = token_logprobs_from_hidden(
        hidden, weight, torch.zeros(1, 2, dtype=torch.long), mask=empty, entropy=True
    )
    assert logp.shape == entropy.shape == (1, 2) and not entropy.any()
