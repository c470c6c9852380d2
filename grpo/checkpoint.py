"""Atomic, verified, resumable checkpoints.

A checkpoint is a folder ``<run>/checkpoints/step-000012/`` holding:

    adapter/              the trainable LoRA adapter (peft layout, safetensors)
    optimizer.pt          optimizer state (ZeRO-1 shards consolidated first)
    scheduler.pt          learning-rate scheduler state
    rng.pt                the RNG states of every rank, as tensors and plain numbers
    trainer_state.json    step, data position
    manifest.json         name, size and sha256 of every file above, written last

It is written into a temporary sibling folder and renamed into place, so a crash or a kill leaves either
the complete new checkpoint or none. The manifest catches what the rename cannot: a file truncated or
changed later (a full disk, a bad copy between clusters). ``--resume`` takes the newest checkpoint that
verifies (:func:`find_resumable`) and says which file ruled out a newer one.

Every ``.pt`` file is read with ``torch.load(weights_only=True)``: a checkpoint copied from a shared disk
cannot run code on resume, and a file holding anything but tensors and plain containers is refused.

Only rank 0 writes; the other ranks send it their RNG states. Resuming reads the folder on every rank (the
run folder must be visible to all nodes, as with any shared run directory).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from data.files import atomic_dir
from grpo import distributed, faults
from model import lora

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
TENSOR_FILES = ("optimizer.pt", "scheduler.pt", "rng.pt")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the folder and the file."""


# ------------------------------------------------------------------------------------------------ RNG


def rng_state() -> dict:
    """This process's RNG states as tensors and plain numbers (loadable with ``weights_only=True``)."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },  # fmt: skip
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------- writing


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record name, size and sha256 of every file under ``folder`` in ``manifest.json`` (written last)."""
    files = {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE
    }
    (folder / MANIFEST_FILE).write_text(json.dumps({"files": files}, indent=1))


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
    rng: dict | None = None,
) -> Path | None:
    """Write ``step-<step>`` atomically (rank 0) and prune to the last ``keep_last``. Collective: every rank
    must call it (RNG states are gathered: this process's now, or ``rng`` taken earlier, e.g. at the start of
    a step that failed).

    A full disk (ENOSPC, EDQUOT, EIO) raises DiskFullError naming the folder, the bytes needed and free:
    before writing when the disk has less free space than the last checkpoint takes, else when a write
    fails, the temporary folder then removed. The new folder is verified against its manifest before it
    is renamed into place, and older checkpoints are pruned only after that."""
    rng_states = distributed.gather_objects(rng if rng is not None else rng_state())
    if not is_main:
        return None
    if optimizer_state is None:
        raise ValueError("rank 0 must pass the optimizer state (consolidated when sharded)")
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    last = latest_checkpoint(run_dir)
    kept = last if last is not None and last != final else None
    needed = faults.tree_size(last)  # the next checkpoint is about the size of the last one
    faults.check_free_space(final, needed, kept)
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    try:
        with atomic_dir(final, tmp=tmp) as tmp:  # a re-run of the same step replaces it
            save_adapter(tmp / "adapter")
            torch.save(optimizer_state, tmp / "optimizer.pt")
            torch.save(scheduler_state, tmp / "scheduler.pt")
            torch.save(rng_states, tmp / "rng.pt")
            (tmp / STATE_FILE).write_text(json.dumps({**trainer_state, "step": step}, indent=2))
            write_manifest(tmp)
            _fsync_tree(tmp)
            verify_checkpoint(tmp)
    except (OSError, RuntimeError) as err:
        if not _disk_failure(err, root, needed):
            raise
        written = faults.tree_size(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        cause = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        raise faults.DiskFullError(
            final, max(needed, written), faults.free_bytes(root), cause, kept
        ) from None
    prune(root, keep_last)
    return final


def _disk_failure(err: BaseException, root: Path, needed: int) -> bool:
    """A write that failed for the disk: an OSError with ENOSPC, EDQUOT or EIO, or torch.save's RuntimeError
    around one, which names no errno ("file write failed", or on a full tmpfs "unexpected pos 28800 vs
    28688"): a RuntimeError counts when it says so or when the disk is left with less than the checkpoint
    needs (at least 1 MiB)."""
    if faults.is_disk_full(err):
        return True
    if not isinstance(err, RuntimeError):
        return False
    if any(text in str(err) for text in ("file write failed", "No space left", "Disk quota exceeded")):
        return True
    free = faults.free_bytes(root)
    return free is not None and free < max(needed, 1 << 20)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders of a run (renamed into place, not yet verified), oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prune(root: Path, keep_last: int) -> None:
    """Remove all but the newest ``keep_last`` checkpoints, and stale temporary folders."""
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    found = list_checkpoints(root.parent)
    for path in found[: max(0, len(found) - keep_last)]:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------- reading


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError naming the first file that is missing or differs from the manifest."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {MANIFEST_FILE} (an unfinished or foreign checkpoint)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path / MANIFEST_FILE}: unreadable ({err})") from None
    for name in (STATE_FILE, *TENSOR_FILES, "adapter/adapter_model.safetensors"):
        if name not in files:
            raise CheckpointError(f"{path}: the manifest lists no {name}")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        size = file.stat().st_size
        if size != expected["size"]:
            raise CheckpointError(f"{file}: {size} bytes, the manifest says {expected['size']}")
        if _sha256(file) != expected["sha256"]:
            raise CheckpointError(f"{file}: checksum differs from the manifest")


def _load_tensors(file: Path) -> object:
    try:
        return torch.load(file, weights_only=True, map_location="cpu")
    except Exception as err:  # UnpicklingError for a refused type, RuntimeError for a broken zip, ...
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{file}: refused or unreadable ({first_line})") from None


def load_checkpoint(path: Path, rank: int) -> dict:
    """Verify and read a checkpoint folder: trainer state, optimizer, scheduler and this rank's RNG state.
    Raises CheckpointError naming the file when anything is missing, changed, or not plain tensor data."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        trainer_state = json.loads((path / STATE_FILE).read_text())
        step = int(trainer_state["step"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path / STATE_FILE}: unreadable ({err})") from None
    rng_states = _load_tensors(path / "rng.pt")
    if not isinstance(rng_states, list) or rank >= len(rng_states):
        saved = len(rng_states) if isinstance(rng_states, list) else "an unknown number of"
        raise CheckpointError(
            f"{path}: saved with {saved} ranks, cannot resume rank {rank}; "
            "resume with the same number of processes"
        )
    return {
        "trainer_state": {**trainer_state, "step": step},
        "optimizer": _load_tensors(path / "optimizer.pt"),
        "scheduler": _load_tensors(path / "scheduler.pt"),
        "rng": rng_states[rank],
        "adapter_dir": path / "adapter",
        "path": path,
    }


def find_resumable(run_dir: Path, rank: int) -> dict | None:
    """The newest checkpoint of ``run_dir`` that verifies and loads, read (see :func:`load_checkpoint`).

    Returns None when the run has no checkpoint at all. Logs one line when newer ones were passed over,
    naming each one's bad file, and raises CheckpointError when none of them can be used."""
    candidates = list_checkpoints(run_dir)
    problems = []
    for path in reversed(candidates):
        try:
            state = load_checkpoint(path, rank)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if problems and rank == 0:
            log.warning(
                "skipped %d newer checkpoint(s) (%s); resuming from %s",
                len(problems),
                "; ".join(problems),
                path,
            )
        return state
    if problems:
        raise CheckpointError(
            f"no usable checkpoint under {Path(run_dir) / 'checkpoints'}: " + "; ".join(problems)
        )
    return None


# ------------------------------------------------------------------------------------- the training state


def save_training(
    run_dir: Path,
    step: int,
    trainer_state: dict,
    model,
    optimizer,
    scheduler,
    keep_last: int,
    is_main: bool,
    rng: dict | None = None,
    pending: Exception | None = None,
) -> Path:
    """Write the checkpoint of ``step`` from a live run: the policy adapter, the optimizer (ZeRO-1 shards
    gathered on rank 0 first), the scheduler and every rank's RNG state (``rng``: see save_checkpoint).
    Collective; returns its folder. Rank 0's outcome is shared (in place of a barrier): a full disk, or
    ``pending`` (a fault rank 0 met since the last collective, e.g. a metrics row it could not write), is
    raised on every rank."""
    if hasattr(optimizer, "consolidate_state_dict"):
        optimizer.consolidate_state_dict(to=0)
    error = pending if is_main else None
    if error is None:
        try:
            save_checkpoint(
                run_dir,
                step,
                trainer_state,
                lambda folder: lora.save_adapter(model, folder, lora.POLICY),
                optimizer.state_dict() if is_main else None,
                scheduler.state_dict(),
                keep_last,
                is_main,
                rng,
            )
        except faults.DiskFullError as err:
            error = err
    else:
        distributed.gather_objects(None)  # meet the other ranks' gathering of RNG states
    error = distributed.broadcast_object(error)
    if error is not None:
        raise error
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def restore_training(state: dict, model, optimizer, scheduler) -> None:
    """Load a checkpoint read by ``load_checkpoint`` into a live run: adapter weights, optimizer and scheduler
    state, this rank's RNG. The optimizer's hyperparameters and the lr schedule come from the current config
    (the saved one, unless --allow-config-change accepted a change)."""
    load_policy_weights(model, state["adapter_dir"])
    configured = [
        {k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
        for g in optimizer.param_groups
    ]
    base_lrs = list(scheduler.base_lrs)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scheduler.base_lrs = base_lrs
    for group, hyper, base_lr, factor in zip(
        optimizer.param_groups, configured, base_lrs, scheduler.lr_lambdas
    ):
        group.update(hyper, initial_lr=base_lr, lr=base_lr * factor(scheduler.last_epoch))
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    set_rng_state(state["rng"])


def load_policy_weights(model, adapter_dir: Path) -> None:
    """Load saved LoRA weights into the existing trainable "policy" adapter (resume)."""
    weights = load_file(
        str(Path(adapter_dir) / "adapter_model.safetensors"), device=str(next(model.parameters()).device)
    )
    result = set_peft_model_state_dict(model, weights, adapter_name=lora.POLICY)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise RuntimeError(f"{adapter_dir}: adapter weights did not match the model: {missing[:3]}")
