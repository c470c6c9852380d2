"""Starting a 2-process gloo run under torchrun, shared by the distributed and fault tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def torchrun(*args, timeout: int = 300, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=2 ARGS`` from the repository root, one
    thread per process; returns the finished process (its output captured), whatever its exit code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *map(str, args),
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def ddp_overrides(tiny_model_dir, world, out) -> list[str]:
    """The small 2-rank run of these tests: 1 study per rank per micro-step, 2 micro-steps per step."""
    return [
        f"model.path={tiny_model_dir}",
        f"data.annotation={world}",
        f"output_dir={out}",
        "device=cpu",
        "model.lora.rank=4",
        "model.lora.alpha=8",
        "sampling.max_new_tokens=6",
        "batch.prompts_per_device=1",
        "batch.grad_accum=2",
        "optim.lr=0.01",
        "optim.grad_clip=1.0",
        "save_every=100",
    ]
