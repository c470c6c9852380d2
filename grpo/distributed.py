"""torchrun plumbing: process group setup and teardown, rank-0 helpers, metric all-reduce.

Works unchanged without torchrun (a single process, world size 1, no process group).

Every collective of the project runs inside :func:`collective`, which turns the backend's error for a rank
that never arrived (gloo: "Timed out waiting ...ms", then "Connection closed by peer" on the others) into
:class:`CollectiveTimeout`, naming the step (:func:`set_step`), the operation and, where the rendezvous store
can tell, the rank(s) that did not arrive. The timeout is the config's ``dist_timeout_s``, given to the
process group. NCCL's own watchdog ends a process whose collective times out before Python sees an error
(TORCH_NCCL_ASYNC_ERROR_HANDLING); the process still exits non-zero, without the line.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import logging
import os
import re
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 1800.0
# What the backends say when a peer never arrives or has gone: gloo's "Timed out waiting 2000ms for recv
# operation", "Application timeout caused pair closure", "Connection closed by peer" / "reset by peer";
# NCCL's watchdog "collective operation timeout" (with blocking wait).
_PEER_FAILURE = re.compile(
    r"timed out|timeout|connection (closed|reset|refused)|broken pipe|pair closure", re.IGNORECASE
)
_GRACE_S = 2.0  # how long a rank that timed out waits for the others to say they did too (failure path only)
_step: int | None = None  # the optimizer step the collectives belong to (set_step), for the message


class CollectiveTimeout(RuntimeError):
    """A collective did not complete within ``dist_timeout_s``: a rank hung, died or was cut off. Every live
    rank raises it; train.py prints the message as one line and exits with ``exit_code``, so torchrun
    --max-restarts restarts the group and ``--resume auto`` continues from the last good checkpoint."""

    exit_code = 4

    def __init__(self, op: str, step: int | None, missing: list[int] | None, detail: str):
        self.op, self.step, self.missing, self.detail = op, step, missing, detail
        self._args = (op, step, missing, detail)
        at = f"step {step}" if step is not None else "setup"
        if missing:
            who = f"rank {', '.join(map(str, missing))} did not arrive"
        elif missing == []:
            who = "this rank came late: every other rank had given up waiting"
        else:
            who = "the rank that did not arrive is unknown"
        super().__init__(
            f"collective timeout at {at}: {op} did not complete on rank {_rank()} ({who}; {detail}); "
            "nothing half-written; restart with --resume auto"
        )

    def __reduce__(self):
        return type(self), self._args


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def set_step(step: int | None) -> None:
    """The step the next collectives belong to (named when one times out). Costs nothing."""
    global _step
    _step = step


def is_peer_failure(err: BaseException) -> bool:
    """Whether ``err`` is the backend saying a peer never arrived or went away (not a bug of ours)."""
    if not isinstance(err, RuntimeError):  # (DistBackendError and DistNetworkError are RuntimeErrors)
        return False
    first_line = (str(err).strip().splitlines() or [""])[0]
    return bool(_PEER_FAILURE.search(first_line))


def _missing_ranks(grace_s: float = _GRACE_S) -> list[int] | None:
    """After a timeout: every live rank that also timed out leaves its mark in the rendezvous store; the
    ranks whose mark is absent after ``grace_s`` are the ones that did not arrive; [] when every other rank
    had marked already (this one came late). None when unknowable (no store, or it is gone too)."""
    if not dist.is_initialized():
        return None
    world, rank = dist.get_world_size(), dist.get_rank()
    try:
        store = dist.distributed_c10d._get_default_store()
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # the store outlives a restart
        prefix = f"faults/collective-timeout/{attempt}/{_step}/"
        store.set(f"{prefix}{rank}", "1")
        deadline = time.monotonic() + grace_s
        while True:
            missing = [r for r in range(world) if r != rank and not store.check([f"{prefix}{r}"])]
            if not missing or time.monotonic() > deadline:
                return missing  # []: every other rank timed out before this one
            time.sleep(0.1)
    except Exception:  # the store lives with the agent or rank 0, which may be the one that went away
        return [1 - rank] if world == 2 else None


@contextlib.contextmanager
def collective(op: str):
    """Run a collective (or a backward pass whose DDP all-reduce may fail): a peer that never arrives
    becomes CollectiveTimeout; every other error passes unchanged. No cost when nothing fails."""
    try:
        yield
    except RuntimeError as err:
        if not dist.is_initialized() or isinstance(err, CollectiveTimeout) or not is_peer_failure(err):
            raise
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
        detail = re.sub(r"^\[[^\]]*\]\s*", "", detail)  # gloo prefixes its source file and line
        detail = detail.split(". ")[0]  # (then adds advice and an emoji)
        raise CollectiveTimeout(op, _step, _missing_ranks(), detail) from None


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto", timeout_s: float | None = None) -> DistInfo:
    """Join the process group that torchrun describes (NCCL on CUDA, gloo on CPU) and pick the device.
    ``timeout_s``: how long a collective waits for every rank (the config's ``dist_timeout_s``); the first
    call creates the group, later calls join it as it is."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for, but torch sees no CUDA device")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        timeout = datetime.timedelta(seconds=float(timeout_s or DEFAULT_TIMEOUT_S))
        dist.init_process_group(backend=backend, device_id=dev if use_cuda else None, timeout=timeout)
        log.info(
            "process group: backend=%s rank=%d/%d device=%s timeout=%ss",
            backend,
            rank,
            world_size,
            dev,
            timeout.total_seconds(),
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def teardown(together: bool = True) -> None:
    """Leave the process group. Callers drop the DDP model and optimizer first (Trainer.close): with them
    alive, gloo sporadically hung at exit (STACK-NOTES); collecting garbage here finishes the job.
    ``together=False`` after a CollectiveTimeout: no barrier (the missing rank would not come to it)."""
    gc.collect()
    if dist.is_initialized():
        if together:
            with collective("teardown barrier"):
                dist.barrier()
        dist.destroy_process_group()


def barrier(op: str = "barrier") -> None:
    if dist.is_initialized():
        with collective(op):
            dist.barrier()


def all_reduce_sums(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum each value over ranks (one collective for the whole dict, in a fixed key order)."""
    if not dist.is_initialized():
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    with collective("all_reduce (sum of " + (", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")) + ")"):
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist()))


def all_reduce_max(value: float, device: torch.device, op: str = "all_reduce (max)") -> float:
    if not dist.is_initialized():
        return value
    return all_reduce_max_many([value], device, op)[0]


def all_reduce_max_many(
    values: list[float], device: torch.device, op: str = "all_reduce (max)"
) -> list[float]:
    """The elementwise maximum over ranks of a few numbers (flags), in one collective."""
    if not dist.is_initialized():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    with collective(op):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    with collective("all_gather_object"):
        dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    with collective("broadcast_object_list"):
        dist.broadcast_object_list(box, src=0)
    return box[0]
