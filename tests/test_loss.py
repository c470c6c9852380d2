"""Eq. (1): the k3 KL estimator, the clipped surrogate and the aggregated GRPO loss."""

import math

import pytest
import torch

from grpo.advantages import group_advantages
from grpo.config import GRPOConfig
from grpo.loss import LossInputs, clipped_surrogate, grpo_loss, kl_k3, tis_weights

AGGREGATIONS = ("sequence", "token", "dr_grpo")


def one_batch_loss(logp, old_logp, ref_logp, advantages, mask, max_length=None, **options):
    """grpo_loss of one batch that is the whole step, with these grpo config options."""
    batch = LossInputs(logp, old_logp, ref_logp, advantages, mask, max_length=max_length)
    return grpo_loss(batch, GRPOConfig(**options))


# ----------------------------------------------------------------------------------------------- k3


def test_k3_is_exactly_zero_where_policy_and_reference_agree():
    logp = torch.tensor([-0.1, -2.3, -7.0, -1e-9, -30.0])
    assert torch.equal(kl_k3(logp, logp.clone()), torch.zeros(5))


def test_k3_is_non_negative_everywhere():
    grid = torch.linspace(-20.0, 0.0, 201)
    logp, ref = torch.meshgrid(grid, grid, indexing="ij")
    values = kl_k3(logp, ref)
    assert values.min() >= 0.0
    tiny = torch.tensor([-1.0 + 1e-7, -1.0 - 1e-7, -1.0 + 3e-8])  # rounding regime
    assert kl_k3(tiny, torch.full((3,), -1.0)).min() >= 0.0


def test_k3_matches_its_formula():
    logp = torch.tensor([-1.0, -0.5, -3.0], dtype=torch.float64)
    ref = torch.tensor([-2.0, -0.1, -3.5], dtype=torch.float64)
    d = ref - logp
    torch.testing.assert_close(kl_k3(logp, ref), torch.exp(d) - d - 1)


def test_k3_mean_over_policy_samples_approaches_the_exact_kl_to_the_reference():
    """Unbiasedness: E_{x~pi}[k3] = KL(pi || ref). 200k samples; tolerance 4 standard errors."""
    generator = torch.Generator().manual_seed(0)
    pi = torch.tensor([0.50, 0.20, 0.15, 0.10, 0.04, 0.01], dtype=torch.float64)
    ref = torch.tensor([0.25, 0.25, 0.20, 0.10, 0.10, 0.10], dtype=torch.float64)
    exact = (pi * (pi.log() - ref.log())).sum().item()
    reverse = (ref * (ref.log() - pi.log())).sum().item()

    samples = torch.multinomial(pi, 200_000, replacement=True, generator=generator)
    k3 = kl_k3(pi.log()[samples], ref.log()[samples])
    standard_error = k3.std().item() / math.sqrt(samples.numel())
    assert abs(k3.mean().item() - exact) < 4 * standard_error
    assert 4 * standard_error < 0.01 < abs(exact - reverse)  # the test can tell the two KL directions apart


def test_k3_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes must match"):
        kl_k3(torch.zeros(2, 3), torch.zeros(2, 4))


# ----------------------------------------------------------------------------------------- clipping


def _surrogate_grad(ratios, advantage, eps_low=0.2, eps_high=None):
    """Gradient of the per-token surrogate w.r.t. logp, one token per ratio, old_logp = 0."""
    logp = torch.tensor(ratios, dtype=torch.float64).log().requires_grad_()
    adv = torch.full((len(ratios),), advantage, dtype=torch.float64)
    clipped_surrogate(logp, torch.zeros_like(logp), adv, eps_low, eps_high).sum().backward()
    return logp.grad


def test_positive_advantage_gradient_is_A_times_r_inside_and_zero_above_one_plus_eps_high():
    ratios = [0.5, 0.79, 1.0, 1.19, 1.21, 1.5, 3.0]
    grad = _surrogate_grad(ratios, advantage=2.0)
    expected = [2.0 * r for r in ratios[:4]] + [0.0, 0.0, 0.0]
    # below 1 - eps the min keeps the (smaller) unclipped term: no clipping for A > 0 there
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64))


def test_negative_advantage_gradient_is_zero_below_one_minus_eps_low_and_A_times_r_elsewhere():
    ratios = [0.3, 0.79, 0.81, 1.0, 1.21, 2.0]
    grad = _surrogate_grad(ratios, advantage=-1.5)
    expected = [0.0, 0.0] + [-1.5 * r for r in ratios[2:]]
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64))


def test_asymmetric_eps_high_moves_only_the_upper_clip_bound():
    ratios = [0.75, 1.25, 1.3]
    symmetric_pos = _surrogate_grad(ratios, 1.0, eps_low=0.2)
    clip_higher_pos = _surrogate_grad(ratios, 1.0, eps_low=0.2, eps_high=0.28)
    assert symmetric_pos[1] == 0.0  # 1.25 > 1.2: clipped
    assert clip_higher_pos[1].item() == pytest.approx(1.25)  # 1.25 < 1.28: still learning
    assert clip_higher_pos[2] == 0.0  # 1.3 > 1.28: clipped
    # the lower bound is still 1 - eps_low for negative advantages
    assert _surrogate_grad(ratios, -1.0, eps_low=0.2, eps_high=0.28)[0] == 0.0


def test_surrogate_values_are_the_pessimistic_min_of_clipped_and_unclipped():
    ratio = torch.tensor([[0.5, 1.1, 1.5], [0.5, 1.1, 1.5]], dtype=torch.float64)
    adv = torch.tensor([2.0, -2.0], dtype=torch.float64)
    got = clipped_surrogate(ratio.log(), torch.zeros_like(ratio), adv)
    expected = torch.tensor([[1.0, 2.2, 2.4], [-1.6, -2.2, -3.0]], dtype=torch.float64)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"old_logp": torch.zeros(2, 4)}, "shapes must match"),
        ({"advantages": torch.zeros(3)}, "advantages must have shape"),
        ({"eps_low": 1.0}, "eps_low"),
        ({"eps_low": -0.1}, "eps_low"),
        ({"eps_high": -0.1}, "eps_high"),
    ],
)
def test_clipped_surrogate_bad_input_raises_a_clear_value_error(kwargs, message):
    args = {"logp": torch.zeros(2, 3), "old_logp": torch.zeros(2, 3), "advantages": torch.zeros(2)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        clipped_surrogate(**args)


# --------------------------------------------------------------------------------------------- loss


def _batch(seed=0, n=4, t=6):
    """Random log-probs with a ragged mask (lengths 6, 2, 4, 1) and group advantages."""
    generator = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, t, generator=generator, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(n, t, generator=generator, dtype=torch.float64)
    ref = logp + 0.5 * torch.randn(n, t, generator=generator, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4, 1])
    mask = torch.arange(t)[None, :] < lengths[:, None]
    adv = group_advantages(torch.tensor([1.0, 0.2, 0.7, 0.0], dtype=torch.float64), n)
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_padding_tokens_change_nothing_in_loss_gradient_or_stats(aggregation):
    logp, old, ref, adv, mask = _batch()
    results = []
    for garbage in (0.0, 5.0, float("nan")):
        leaf = torch.where(mask, logp, garbage).requires_grad_()
        loss, stats = one_batch_loss(
            leaf,
            torch.where(mask, old, -garbage),
            torch.where(mask, ref, garbage),
            adv,
            mask,
            beta=0.1,
            aggregation=aggregation,
            max_length=8,
        )
        loss.backward()
        results.append((loss.detach(), leaf.grad, stats))
    for loss, grad, stats in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=0, atol=0)
        torch.testing.assert_close(grad, results[0][1], rtol=0, atol=0)
        for key in ("kl", "clip_frac", "ratio_mean", "adv_mean"):
            torch.testing.assert_close(stats[key], results[0][2][key], rtol=0, atol=0)
        assert torch.equal(grad[~mask], torch.zeros(int((~mask).sum()), dtype=grad.dtype))
    # and a longer pad (more padding columns) changes nothing either, except dr_grpo's default length
    wide = torch.nn.functional.pad(logp, (0, 3), value=-1.0)
    wide_mask = torch.nn.functional.pad(mask, (0, 3), value=False)
    wide_old = torch.nn.functional.pad(old, (0, 3), value=7.0)
    wide_loss, _ = one_batch_loss(wide, wide_old, None, adv, wide_mask, beta=0.0, aggregation=aggregation)
    narrow_loss, _ = one_batch_loss(logp, old, None, adv, mask, beta=0.0, aggregation=aggregation)
    if aggregation == "dr_grpo":
        torch.testing.assert_close(wide_loss * 9, narrow_loss * 6)  # normalizer N*9 vs N*6
    else:
        torch.testing.assert_close(wide_loss, narrow_loss)


def test_sequence_token_and_dr_grpo_aggregations_on_ragged_lengths_hand_computed():
    # Two sequences of 1 and 3 real tokens, ratio 1, beta 0: every token's objective is its advantage.
    logp = torch.full((2, 4), -1.0)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    adv = torch.tensor([2.0, 1.0])
    expected = {
        "sequence": -(2.0 / 1 + 3 * 1.0 / 3) / 2,  # mean of sequence means: -1.5
        "token": -(2.0 + 3 * 1.0) / 4,  # all 4 tokens equal weight: -1.25
        "dr_grpo": -(2.0 + 3 * 1.0) / (2 * 5),  # N * max_length = 2 * 5: -0.5
    }
    for aggregation, value in expected.items():
        loss, _ = one_batch_loss(logp, logp, None, adv, mask, beta=0.0, aggregation=aggregation, max_length=5)
        assert loss.item() == pytest.approx(value), aggregation


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_at_ratio_one_and_beta_zero_the_gradient_is_the_weighted_policy_gradient(aggregation):
    """grad = -sum_i sum_t w_it A_i grad log pi(o_it), checked against the closed form for logits."""
    generator = torch.Generator().manual_seed(1)
    n, t, vocab, max_length = 4, 5, 7, 6
    logits = torch.randn(n, t, vocab, generator=generator, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(vocab, (n, t), generator=generator)
    mask = torch.arange(t)[None, :] < torch.tensor([5, 3, 1, 4])[:, None]
    adv = group_advantages(torch.tensor([0.9, 0.1, 0.5, 0.3], dtype=torch.float64), 2)

    logp = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
    loss, stats = one_batch_loss(
        logp, None, None, adv, mask, beta=0.0, aggregation=aggregation, max_length=max_length
    )
    loss.backward()

    lengths = mask.sum(1, keepdim=True).double()
    weights = {
        "sequence": 1.0 / (n * lengths.expand(n, t)),
        "token": torch.full((n, t), 1.0 / mask.sum().item(), dtype=torch.float64),
        "dr_grpo": torch.full((n, t), 1.0 / (n * max_length), dtype=torch.float64),
    }[aggregation] * mask
    # d log softmax(z)[k] / dz = onehot(k) - softmax(z)
    grad_logp = torch.nn.functional.one_hot(tokens, vocab) - logits.detach().softmax(-1)
    expected = -(weights * adv[:, None])[..., None] * grad_logp
    torch.testing.assert_close(logits.grad, expected)
    assert stats["ratio_mean"].item() == pytest.approx(1.0) and stats["clip_frac"].item() == 0.0


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_kl_term_pulls_logp_towards_the_reference(aggregation):
    logp = torch.tensor([[-0.5, -2.0, -1.0], [-3.0, -0.2, -1.5]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-2.0, -0.9, -1.4]], dtype=torch.float64)
    mask = torch.ones(2, 3, dtype=torch.bool)
    loss, stats = one_batch_loss(logp, None, ref, torch.zeros(2), mask, beta=0.5, aggregation=aggregation)
    loss.backward()
    # zero advantage: the loss is beta * mean k3, and its gradient beta * w * (1 - exp(ref - logp))
    k3 = kl_k3(logp.detach(), ref)
    assert loss.item() == pytest.approx(0.5 * k3.mean().item())
    torch.testing.assert_close(logp.grad, 0.5 / 6 * (1 - torch.exp(ref - logp.detach())))
    stepped = logp.detach() - 0.5 * logp.grad
    moved = (stepped - ref).abs() < (logp.detach() - ref).abs()
    assert moved[(logp.detach() - ref) != 0].all()
    assert logp.grad[0, 2] == 0.0  # already equal: no pull
    assert stats["kl"].item() == pytest.approx(k3.mean().item())


def test_stats_are_detached_scalars_on_real_tokens_only_hand_computed():
    # ratios 1.5 (A>0: high clip), 0.5 (A<0: low clip), 1.0, and a padded token with an extreme ratio
    logp = torch.log(torch.tensor([[1.5, 1.0], [0.5, 9.0]])).requires_grad_()
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([1.0, -2.0])
    ref = logp.detach().clone()
    loss, stats = one_batch_loss(logp, torch.zeros(2, 2), ref, adv, mask, beta=0.04)
    assert set(stats) >= {"kl", "clip_frac_low", "clip_frac_high", "clip_frac", "ratio_mean", "adv_mean"}
    for value in stats.values():
        assert value.dim() == 0 and not value.requires_grad and value.dtype == torch.float32
    assert stats["clip_frac_high"].item() == pytest.approx(1 / 3)
    assert stats["clip_frac_low"].item() == pytest.approx(1 / 3)
    assert stats["clip_frac"].item() == pytest.approx(2 / 3)
    assert stats["ratio_mean"].item() == pytest.approx((1.5 + 1.0 + 0.5) / 3)
    assert stats["adv_mean"].item() == pytest.approx((1.0 + 1.0 - 2.0) / 3)
    assert stats["kl"].item() == 0.0 and stats["tokens"].item() == 3.0
    # sequence aggregation by hand: seq 0 mean(min(1.5, 1.2), 1.0) = 1.1; seq 1: min(-1.0, -1.6) = -1.6
    assert loss.item() == pytest.approx(-(1.1 + -1.6) / 2)


def test_without_reference_there_is_no_kl_stat_and_old_logp_none_means_detached_logp():
    logp, _, _, adv, mask = _batch()
    loss_none, stats = one_batch_loss(logp.clone().requires_grad_(), None, None, adv, mask, beta=0.0)
    loss_detached, _ = one_batch_loss(logp, logp.detach(), None, adv, mask, beta=0.0)
    torch.testing.assert_close(loss_none, loss_detached)
    assert "kl" not in stats  # no reference, no KL to report


def test_numeric_zero_one_mask_equals_bool_mask():
    logp, old, ref, adv, mask = _batch()
    as_bool, _ = one_batch_loss(logp, old, ref, adv, mask)
    as_float, _ = one_batch_loss(logp, old, ref, adv, mask.double())
    as_long, _ = one_batch_loss(logp, old, ref, adv, mask.long())
    torch.testing.assert_close(as_float, as_bool, rtol=0, atol=0)
    torch.testing.assert_close(as_long, as_bool, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ref_logp": None}, "ref_logp is None"),
        ({"aggregation": "mean"}, "aggregation"),
        ({"beta": -0.1}, "beta"),
        ({"mask": torch.ones(4, 5, dtype=torch.bool)}, "shapes must match"),
        ({"mask": torch.full((4, 6), 0.5)}, "mask must be bool"),
        ({"advantages": torch.zeros(4, 2)}, "advantages must have shape"),
        ({"max_length": 5}, "max_length"),
        ({"logp": torch.zeros(4, 6, 1)}, "2-D"),
        ({"eps_low": 1.5}, "eps_low"),
    ],
)
def test_grpo_loss_bad_input_raises_a_clear_value_error(kwargs, message):
    logp, old, ref, adv, mask = _batch()
    args = {"logp": logp, "old_logp": old, "ref_logp": ref, "advantages": adv, "mask": mask}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        one_batch_loss(**args)


def test_walkthrough_numbers_in_docs_grpo_md():
    """The toy step of docs/grpo.md: G = 4 completions of one study, up to 3 tokens each."""
    rewards = torch.tensor([1.0, 0.75, 0.25, 0.0], dtype=torch.float64)
    adv = group_advantages(rewards, 4)
    torch.testing.assert_close(
        adv, torch.tensor([1.26491, 0.63245, -0.63245, -1.26491]).double(), atol=1e-5, rtol=0
    )

    old = torch.tensor([[-1.0, -0.5, -2.0], [-0.8, -1.2, 0.0], [-1.5, -0.3, -0.9], [-2.0, 0.0, 0.0]]).double()
    logp = (
        old + torch.tensor([[0.3, -0.1, 0.0], [0.05, 0.0, 0.0], [-0.1, 0.2, 0.0], [-0.4, 0.0, 0.0]]).double()
    )
    ref = old + torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).double()
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)

    ratio = torch.exp(logp - old)
    torch.testing.assert_close(ratio[0], torch.tensor([1.34986, 0.90484, 1.0]).double(), atol=1e-5, rtol=0)
    surrogate = clipped_surrogate(logp, old, adv)
    expected_surrogate = [
        [1.51789, 1.14454, 1.26491],
        [0.66488, 0.63245],
        [-0.57227, -0.77248, -0.63245],
        [-1.01193],
    ]
    for row, values in enumerate(expected_surrogate):
        torch.testing.assert_close(
            surrogate[row, : len(values)], torch.tensor(values).double(), atol=1e-5, rtol=0
        )
    kl = kl_k3(logp, ref)
    torch.testing.assert_close(kl[0], torch.tensor([0.04082, 0.00517, 0.0]).double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(kl[3, 0], torch.tensor(0.09182).double(), atol=1e-5, rtol=0)

    expected_loss = {"sequence": -0.07051, "token": -0.24765, "dr_grpo": -0.18573}
    for aggregation, value in expected_loss.items():
        leaf = logp.clone().requires_grad_()
        loss, stats = one_batch_loss(leaf, old, ref, adv, mask, beta=0.04, aggregation=aggregation)
        assert loss.item() == pytest.approx(value, abs=1e-5), aggregation
        loss.backward()
        if aggregation == "sequence":
            # the clipped tokens keep only the KL pull: beta / (G * 3) * (1 - exp(ref - logp))
            assert leaf.grad[0, 0].item() == pytest.approx(0.00086, abs=1e-5)
            assert leaf.grad[3, 0].item() == pytest.approx(-0.00492, abs=1e-5)
            assert leaf.grad[0, 1].item() == pytest.approx(-0.09573, abs=1e-5)
    assert stats["clip_frac_high"].item() == pytest.approx(1 / 9)
    assert stats["clip_frac_low"].item() == pytest.approx(1 / 9)
    assert stats["kl"].item() == pytest.approx(0.01868, abs=1e-5)
    assert stats["ratio_mean"].item() == pytest.approx(1.01139, abs=1e-5)
    assert stats["adv_mean"].item() == pytest.approx(0.21082, abs=1e-5)


# ------------------------------------------------------------------------------------ the step's shares


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_micro_batch_shares_with_the_step_counts_add_up_to_the_whole_batch_loss_and_gradient(aggregation):
    """Split a ragged batch into micro-batches of unequal token counts: with step_tokens / step_sequences
    the shares sum to the loss (and gradient) of the batch seen at once, for every aggregation."""
    logp, old, ref, adv, mask = _batch()
    cfg = GRPOConfig(beta=0.1, aggregation=aggregation)
    whole_leaf = logp.clone().requires_grad_()
    whole, _ = grpo_loss(LossInputs(whole_leaf, old, ref, adv, mask, max_length=8), cfg)
    whole.backward()

    parts_leaf = logp.clone().requires_grad_()
    step = {"step_tokens": float(mask.sum()), "step_sequences": float(mask.shape[0]), "max_length": 8}
    total = 0.0
    for rows in ([0], [1, 2, 3]):  # 6 tokens, then 2 + 4 + 1
        part = LossInputs(parts_leaf[rows], old[rows], ref[rows], adv[rows], mask[rows], **step)
        share, _ = grpo_loss(part, cfg)
        share.backward()
        total = total + share.detach()
    torch.testing.assert_close(total, whole.detach())
    torch.testing.assert_close(parts_leaf.grad, whole_leaf.grad)
    if aggregation == "token":  # and the old per-micro-batch token mean would not have
        per_batch = [
            one_batch_loss(logp[r], old[r], ref[r], adv[r], mask[r], beta=0.1, aggregation="token")[0]
            for r in ([0], [1, 2, 3])
        ]
        assert not torch.allclose(sum(per_batch) / 2, whole.detach())


# ----------------------------------------------------------------------------------------- kl_clamp


def test_kl_clamp_bounds_the_log_ratio_and_stops_the_pull_beyond_it():
    logp = torch.tensor([-12.0, -1.0, -0.5], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.0, -1.3, -0.5], dtype=torch.float64)  # log-ratios 11, -0.3, 0
    free = kl_k3(logp, ref)
    clamped = kl_k3(logp, ref, clamp=2.0)
    assert free[0].item() == pytest.approx(math.exp(11) - 12)  # one token worth ~6e4
    assert clamped[0].item() == pytest.approx(math.exp(2) - 3)  # bounded at the clamp
    torch.testing.assert_close(clamped[1:], free[1:])  # inside the bound: unchanged
    clamped.sum().backward()
    # d k3 / d logp = 1 - exp(ref - logp) inside the bound (raises a too-unlikely token), 0 beyond it
    expected = torch.tensor([0.0, 1 - math.exp(-0.3), 0.0], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected)
    with pytest.raises(ValueError, match="clamp"):
        kl_k3(logp, ref, clamp=0.0)


def test_grpo_loss_applies_kl_clamp_from_its_config():
    logp, old, ref, adv, mask = _batch()
    ref = ref.clone()
    ref[0, 0] = logp[0, 0] + 9.0  # one token the policy now finds far less likely than the reference
    free, free_stats = one_batch_loss(logp, old, ref, adv, mask, beta=0.1)
    bounded, stats = one_batch_loss(logp, old, ref, adv, mask, beta=0.1, kl_clamp=1.0)
    assert stats["kl"] < free_stats["kl"] / 100 and bounded < free


# ---------------------------------------------------------------- truncated importance sampling (tis_cap)


def test_tis_weights_are_the_capped_train_over_engine_ratio_and_carry_no_gradient():
    old = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    engine = torch.tensor([[-1.1, -1.8, -1.5]])
    # exp(0.1) = 1.10517, exp(-0.2) = 0.81873, exp(1.0) = 2.71828 capped at 2
    got = tis_weights(old, engine, cap=2.0)
    torch.testing.assert_close(got, torch.tensor([[math.exp(0.1), math.exp(-0.2), 2.0]]))
    assert not got.requires_grad
    assert tis_weights(torch.tensor([100.0]), torch.tensor([-100.0]), 3.0).item() == pytest.approx(3.0)


def test_tis_cap_reweights_each_tokens_surrogate_and_its_gradient_hand_computed():
    # fresh rollouts (ratio 1), beta 0, token aggregation over 3 real tokens:
    # loss = -sum_t w_t * A_i / 3 and d loss / d logp_t = -w_t * A_i / 3
    logp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    engine = torch.tensor([[-1.1, -1.8], [-1.5, 7.0]])  # row 2's second token is padding: never read
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([1.0, -2.0])
    batch = LossInputs(logp, None, None, adv, mask, sample_logp=engine)
    loss, stats = grpo_loss(batch, GRPOConfig(beta=0.0, aggregation="token", tis_cap=2.0))
    w = [math.exp(0.1), math.exp(-0.2), 2.0]
    assert loss.item() == pytest.approx(-(w[0] + w[1] - 2.0 * w[2]) / 3)
    loss.backward()
    expected = torch.tensor([[-w[0] / 3, -w[1] / 3], [2.0 * w[2] / 3, 0.0]])
    torch.testing.assert_close(logp.grad, expected)
    assert stats["tis_weight_mean"].item() == pytest.approx(sum(w) / 3)
    assert stats["ratio_mean"].item() == 1.0  # the clip's ratio is untouched


def test_tis_cap_off_gives_the_plain_loss_and_on_needs_the_engine_log_probs():
    logp, old, ref, adv, mask = _batch()
    plain, stats = one_batch_loss(logp, old, ref, adv, mask)
    same = grpo_loss(LossInputs(logp, old, ref, adv, mask, sample_logp=old + 5.0), GRPOConfig())[0]
    assert same.item() == plain.item() and "tis_weight_mean" not in stats
    with pytest.raises(ValueError, match="tis_cap needs the engine's log-probs"):
        one_batch_loss(logp, old, ref, adv, mask, tis_cap=2.0)


# ---------------------------------------------------------------------------------- entropy bonus


def test_entropy_bonus_adds_coef_times_entropy_to_each_tokens_objective_hand_computed():
    logp = torch.zeros(2, 2)
    entropy = torch.tensor([[1.0, 2.0], [3.0, float("nan")]], requires_grad=True)  # NaN on padding: unread
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.zeros(2)
    batch = LossInputs(logp, None, None, adv, mask, entropy=entropy)
    loss, _ = grpo_loss(batch, GRPOConfig(beta=0.0, aggregation="sequence", entropy_coef=0.1))
    # sequence mean: row 1 (1 + 2) / 2 = 1.5, row 2: 3; mean over the 2 rows 2.25; loss = -0.1 * 2.25
    assert loss.item() == pytest.approx(-0.225)
    loss.backward()
    torch.testing.assert_close(entropy.grad, torch.tensor([[-0.025, -0.025], [-0.05, 0.0]]))
    no_bonus, _ = grpo_loss(batch, GRPOConfig(beta=0.0))
    assert no_bonus.item() == 0.0
    with pytest.raises(ValueError, match="entropy_coef=0.1 but batch.entropy is None"):
        one_batch_loss(logp, None, None, adv, mask, beta=0.0, entropy_coef=0.1)


def test_gspo_refuses_the_token_level_options_instead_of_dropping_them():
    from grpo.gspo import gspo_loss

    logp, old, ref, adv, mask = _batch()
    for option in ({"tis_cap": 2.0}, {"entropy_coef": 0.01}):
        with pytest.raises(ValueError, match="apply to grpo_loss only"):
            gspo_loss(LossInputs(logp, old, ref, adv, mask), GRPOConfig(**option))
