"""Optimizer and learning-rate schedule (MRG-R1, Sec. IV-A: 8-bit AdamW, lr 5e-6, betas (0.9, 0.99), weight
decay 0.1, cosine decay with 10% linear warm-up).

8-bit AdamW (bitsandbytes) is used only where it is meant to run, CUDA; elsewhere torch's AdamW, fused when
every parameter is a floating-point CUDA tensor. The choice is logged.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

logger = logging.getLogger(__name__)


def bitsandbytes_usable() -> bool:
    """True when CUDA is present and bitsandbytes imports (it imports on CPU too, but is meant for CUDA)."""
    if not torch.cuda.is_available():
        return False
    try:
        importlib.import_module("bitsandbytes")
    except Exception:  # broken builds raise more than ImportError
        return False
    return True


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.99),
    weight_decay: float = 0.1,
    eight_bit: bool | str = "auto",
    zero1: bool = False,
) -> torch.optim.Optimizer:
    """AdamW over `params`. eight_bit: "auto" (bitsandbytes AdamW8bit when usable), True (required: error if
    not usable) or False (torch AdamW). zero1: shard the optimizer state across the ranks of the process
    group (torch's ZeroRedundancyOptimizer, the plain-PyTorch ZeRO-1); needs an initialized group."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("build_optimizer got no trainable parameters (none has requires_grad=True)")
    if eight_bit not in ("auto", True, False):
        raise ValueError(f"eight_bit must be 'auto', True or False, got {eight_bit!r}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    use_8bit = bitsandbytes_usable() if eight_bit == "auto" else eight_bit
    if use_8bit and not bitsandbytes_usable():
        raise RuntimeError("eight_bit=True needs CUDA and an importable bitsandbytes")
    if zero1:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        if use_8bit:
            import bitsandbytes as bnb

            optimizer_class = bnb.optim.AdamW8bit
        else:
            optimizer_class = torch.optim.AdamW
        logger.info("optimizer: ZeRO-1 (ZeroRedundancyOptimizer) sharding %s state", optimizer_class.__name__)
        return ZeroRedundancyOptimizer(
            params, optimizer_class=optimizer_class, lr=lr, betas=betas, weight_decay=weight_decay
        )
    if use_8bit:
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, lr=lr, betas=betas, weight_decay=weight_decay)
        logger.info(
            "optimizer: bitsandbytes AdamW8bit, lr %g, betas %s, weight decay %g", lr, betas, weight_decay
        )
        return optimizer
    fused = all(p.is_cuda and p.is_floating_point() for p in params)
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)
    logger.info(
        "optimizer: torch AdamW (%s), lr %g, betas %s, weight decay %g",
        "fused" if fused else "not fused",
        lr,
        betas,
        weight_decay,
    )
    return optimizer


def cosine_lr_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr for the optimizer step with index `step` (0-based).

    Warm-up: (step + 1) / warmup_steps, so the first step already moves and the last warm-up step is at the
    peak. Then cosine from 1 at `warmup_steps` down to `min_lr_ratio` at `total_steps` (held there after).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule_with_warmup(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.1, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """LambdaLR with linear warm-up over round(warmup_ratio * total_steps) steps, then cosine decay to
    `min_lr_ratio` x peak at `total_steps`. Call `scheduler.step()` once after each optimizer step."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    warmup_steps = round(warmup_ratio * total_steps)
    logger.info(
        "lr schedule: %d warm-up steps, cosine to %g x peak at step %d",
        warmup_steps,
        min_lr_ratio,
        total_steps,
    )
    return LambdaLR(optimizer, lambda step: cosine_lr_factor(step, total_steps, warmup_steps, min_lr_ratio))
