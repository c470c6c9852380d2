"""Optimizer choice and the cosine-with-warm-up learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from model.optim import build_optimizer, cosine_lr_factor, cosine_schedule_with_warmup


def lr_trace(
    total_steps: int, warmup_ratio: float, min_lr_ratio: float = 0.0, peak: float = 2.0
) -> list[float]:
    """The lr used by each of `total_steps` optimizer steps (read before each scheduler.step())."""
    parameter = torch.nn.Parameter(torch.zeros(3))
    optimizer = build_optimizer([parameter], lr=peak, weight_decay=0.0)
    scheduler = cosine_schedule_with_warmup(optimizer, total_steps, warmup_ratio, min_lr_ratio)
    trace = []
    for _ in range(total_steps):
        trace.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    trace.append(optimizer.param_groups[0]["lr"])  # after the last step
    return trace


def test_cpu_gets_plain_torch_adamw_with_the_given_hyperparameters():
    parameters = [
        torch.nn.Parameter(torch.zeros(2, 2)),
        torch.nn.Parameter(torch.zeros(2), requires_grad=False),
    ]
    optimizer = build_optimizer(parameters, lr=5e-6, betas=(0.9, 0.99), weight_decay=0.1)
    assert type(optimizer) is torch.optim.AdamW
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (5e-6, (0.9, 0.99), 0.1)
    assert not group["fused"]
    assert len(group["params"]) == 1  # frozen parameters are left out


def test_optimizer_rejects_impossible_requests():
    parameter = torch.nn.Parameter(torch.zeros(2))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            build_optimizer([parameter], lr=1e-3, eight_bit=True)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([torch.nn.Parameter(torch.zeros(2), requires_grad=False)], lr=1e-3)
    with pytest.raises(ValueError, match="eight_bit"):
        build_optimizer([parameter], lr=1e-3, eight_bit="yes")


def test_warmup_is_linear_and_reaches_the_peak_at_its_last_step():
    trace = lr_trace(total_steps=100, warmup_ratio=0.1, peak=2.0)
    assert trace[:10] == pytest.approx([2.0 * (s + 1) / 10 for s in range(10)])
    assert max(trace) == pytest.approx(2.0)


def test_cosine_decays_monotonically_to_the_floor_at_the_last_step():
    trace = lr_trace(total_steps=100, warmup_ratio=0.1, min_lr_ratio=0.1, peak=2.0)
    decay = trace[9:]
    assert all(later <= earlier for earlier, later in zip(decay, decay[1:]))
    assert trace[10] == pytest.approx(2.0)  # first decay step still at the peak
    # Halfway through the decay the cosine is at the mean of peak and floor.
    assert trace[55] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))
    assert trace[100] == pytest.approx(0.2)
    assert cosine_lr_factor(500, 100, 10, 0.1) == pytest.approx(0.1)  # held at the floor afterwards


def test_no_warmup_starts_at_the_peak_and_follows_the_cosine():
    factors = [cosine_lr_factor(step, 8, 0) for step in range(9)]
    assert factors == pytest.approx([0.5 * (1 + math.cos(math.pi * step / 8)) for step in range(9)])


def test_schedule_rejects_bad_arguments():
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_schedule_with_warmup(optimizer, 0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        cosine_schedule_with_warmup(optimizer, 10, warmup_ratio=1.0)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        cosine_schedule_with_warmup(optimizer, 10, min_lr_ratio=-0.1)
