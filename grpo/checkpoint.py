"""Atomic, resumable checkpoints.

A checkpoint is a folder ``<run>/checkpoints/step-000012/`` holding:

    adapter/              the trainable LoRA adapter (peft layout, safetensors)
    optimizer.pt          optimizer state (ZeRO-1 shards consolidated first)
    scheduler.pt          learning-rate scheduler state
    rng.pt                the RNG states of every rank (python, numpy, torch, cuda)
    trainer_state.json    step, data position, written last

It is written into a temporary sibling folder and renamed into place, so a crash or a kill leaves either
the complete new checkpoint or none: the last good one stays resumable. Only rank 0 writes; the other
ranks send it their RNG states. Resuming reads the folder on every rank (the run folder must be visible
to all nodes, as with any shared run directory).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from grpo import distributed

_STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def save_checkpoint(
    run_dir: Path,
    step: int,
    trainer_state: dict,
    save_adapter: Callable[[Path], None],
    optimizer_state: dict | None,
    scheduler_state: dict,
    keep_last: int,
    is_main: bool,
) -> Path | None:
    """Write ``step-<step>`` atomically (rank 0) and prune to the last ``keep_last``. Collective: every rank
    must call it (RNG states are gathered)."""
    rng_states = distributed.gather_objects(rng_state())
    if not is_main:
        return None
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_adapter(tmp / "adapter")
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler_state, tmp / "scheduler.pt")
    torch.save(rng_states, tmp / "rng.pt")
    (tmp / STATE_FILE).write_text(json.dumps({**trainer_state, "step": step}, indent=2))
    _fsync_tree(tmp)
    if final.exists():  # a re-run of the same step: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    prune(root, keep_last)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prune(root: Path, keep_last: int) -> None:
    """Remove all but the newest ``keep_last`` complete checkpoints, and stale temporary folders."""
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    found = list_checkpoints(root.parent)
    for path in found[: max(0, len(found) - keep_last)]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path: Path, rank: int) -> dict:
    """Read a checkpoint folder: trainer state, optimizer, scheduler and this rank's RNG state."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    rng_states = torch.load(path / "rng.pt", weights_only=False)
    if rank >= len(rng_states):
        raise ValueError(
            f"{path}: saved with {len(rng_states)} ranks, cannot resume rank {rank}; "
            "resume with the same number of processes"
        )
    optimizer_file = path / "optimizer.pt"
    return {
        "trainer_state": json.loads(state_file.read_text()),
        "optimizer": torch.load(optimizer_file, weights_only=False) if optimizer_file.exists() else None,
        "scheduler": torch.load(path / "scheduler.pt", weights_only=False),
        "rng": rng_states[rank],
        "adapter_dir": path / "adapter",
    }
