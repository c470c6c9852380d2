"""What a run does when training itself goes wrong: a full disk, a step that is not finite, a reward that
raises. Each is a one-line exception with an ``exit_code`` that train.py returns (the collective timeout is
grpo/distributed.py's :class:`~grpo.distributed.CollectiveTimeout`):

    2   what the user gave is wrong (train.py's USER_ERRORS)
    3   the run stopped on a fault of its own (below); --resume continues once the cause is fixed
    4   a collective timed out (a rank hung or died); torchrun --max-restarts with --resume auto continues
    128 + signal number: preempted (grpo/preemption.py)

Full disk: every write of a checkpoint or of a metrics row is all or nothing. A checkpoint is checked
against the free space before it is written (the last checkpoint's size is what the next needs), written to
a temporary folder that is removed when a write fails (ENOSPC, EDQUOT, EIO), and older checkpoints are only
rotated out after the new one verifies. A metrics row is one ``write`` of a whole line; a short write is
cut back off.

Non-finite steps: a step whose loss (or one of the loss's terms) or gradient norm is not finite on any rank
is not applied: its gradients are dropped and neither the optimizer nor the lr schedule steps (the step
number advances: its batch was used, its metrics row is logged with ``nonfinite_steps``). The ranks agree
through the step's one all-reduce of flags (grpo/preemption.py). After ``optim.max_nonfinite_steps`` such
steps in a row the run writes a checkpoint (its weights and optimizer are those of the last applied step)
and stops naming the first bad step of the streak and what was not finite.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

FAULT_EXIT = 3
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})


# ------------------------------------------------------------------------------------------ full disk


class DiskFullError(RuntimeError):
    """A checkpoint or a metrics row could not be written for lack of space (or a failing disk)."""

    exit_code = FAULT_EXIT

    def __init__(
        self, path: Path, needed: int | None, free: int | None, cause: str = "", kept: Path | None = None
    ):
        self.path, self.needed, self.free, self.kept = Path(path), needed, free, kept
        self._args = (path, needed, free, cause, kept)
        needs = f"needs about {_size(needed)}" if needed else "needs more space"
        free_s = f"{_size(free)} free" if free is not None else "free space unknown"
        because = f" ({cause})" if cause else ""
        kept_s = f"; {kept.name} kept" if kept is not None else ""
        super().__init__(
            f"disk full: {path} not written{because}: {needs}, {free_s}; nothing half-written{kept_s}; "
            "free space, then continue with --resume"
        )

    def __reduce__(self):  # rank 0's error travels to the other ranks (broadcast_object)
        return type(self), self._args


def _size(n: int | None) -> str:
    return f"{n} bytes" if n is not None else "?"


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_ERRNOS


def free_bytes(folder: Path) -> int | None:
    """Free bytes on the disk holding ``folder`` (its nearest existing parent); None when unknowable."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def tree_size(folder: Path | None) -> int:
    """Bytes in the files under ``folder`` (0 for None or a missing folder)."""
    if folder is None or not Path(folder).is_dir():
        return 0
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def check_free_space(target: Path, needed: int, kept: Path | None = None) -> None:
    """DiskFullError before writing ``target`` when the disk has less than ``needed`` bytes free."""
    free = free_bytes(Path(target).parent)
    if needed and free is not None and free < needed:
        raise DiskFullError(target, needed, free, "checked before writing", kept)


def append_line(path: Path, line: str) -> None:
    """Append ``line`` (a newline is added) to ``path`` whole or not at all: one ``write`` on an O_APPEND
    descriptor; a short or failed write is cut back to the file's previous length. A full disk raises
    DiskFullError, any other OSError passes."""
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            if is_disk_full(err):
                raise DiskFullError(
                    path, len(data), free_bytes(Path(path).parent), err.strerror or str(err)
                ) from None
            raise
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------- non-finite steps


def nonfinite_terms(values: Mapping[str, object]) -> list[str]:
    """The names of the numbers in ``values`` that are NaN or infinite, in the mapping's order."""
    return [k for k, v in values.items() if isinstance(v, (int, float)) and not math.isfinite(v)]


@dataclass
class NonFiniteSteps:
    """The count of steps not applied, and the current streak of them. Pure bookkeeping: ``record`` says
    whether the run must stop; the state goes into every checkpoint, so a resumed run counts as an
    uninterrupted one would."""

    limit: int
    total: int = 0
    streak: int = 0
    first_bad: int | None = None  # the first step of the current streak
    first_terms: tuple[str, ...] = ()  # what was not finite in it (as far as this rank knows)

    def record(self, step: int, bad: bool, terms: tuple[str, ...] | list[str] = ()) -> bool:
        """Note step ``step`` (agreed over ranks: ``bad`` is the same everywhere). True: stop the run."""
        if not bad:
            self.streak, self.first_bad, self.first_terms = 0, None, ()
            return False
        self.total += 1
        if self.streak == 0:
            self.first_bad, self.first_terms = step, tuple(terms)
        self.streak += 1
        return self.streak >= self.limit

    def state_dict(self) -> dict:
        return {
            "total": self.total,
            "streak": self.streak,
            "first_bad": self.first_bad,
            "first_terms": list(self.first_terms),
        }

    def load_state_dict(self, state: dict | None) -> None:
        state = state or {}
        self.total = int(state.get("total", 0))
        self.streak = int(state.get("streak", 0))
        self.first_bad = state.get("first_bad")
        self.first_terms = tuple(state.get("first_terms", ()))


class NonFiniteStop(RuntimeError):
    """``optim.max_nonfinite_steps`` steps in a row were not finite; a checkpoint was written."""

    exit_code = FAULT_EXIT

    def __init__(
        self, step: int, streak: int, first_bad: int, terms: tuple[str, ...], checkpoint: Path | None
    ):
        self.step, self.streak, self.first_bad = step, streak, first_bad
        self.terms, self.checkpoint = terms, checkpoint
        self._args = (step, streak, first_bad, terms, checkpoint)
        what = ", ".join(terms) if terms else "a value on another rank (see its log)"
        super().__init__(
            f"stopped after step {step}: {streak} steps in a row were not finite and not applied (first: step "
            f"{first_bad}, not finite: {what}); the weights are those of step {first_bad - 1}; checkpoint "
            f"{checkpoint} written; continue with --resume (e.g. a lower optim.lr with --allow-config-change "
            "optim.lr)"
        )

    def __reduce__(self):
        return type(self), self._args


# --------------------------------------------------------------------------------- a reward that raises


class RewardFailed(RuntimeError):
    """A reward term raised during step ``step``; the step's start was checkpointed and --resume repeats it."""

    exit_code = FAULT_EXIT

    def __init__(self, step: int, term: str, error: str, checkpoint: Path | None):
        self.step, self.term, self.error, self.checkpoint = step, term, error, checkpoint
        self._args = (step, term, error, checkpoint)
        super().__init__(
            f"stopped in step {step}: reward term {term!r} raised {error}; checkpoint {checkpoint} (the step's "
            "start) written; fix the reward, then --resume repeats the step"
        )

    def __reduce__(self):
        return type(self), self._args


class StepFailed(Exception):
    """Internal: the step cannot go on (a reward raised on some rank); the run saves the step's start and
    raises RewardFailed. ``term`` and ``error`` are None on the ranks where nothing failed."""

    def __init__(self, term: str | None, error: str | None):
        self.term, self.error = term, error
        super().__init__(
            f"reward term {term!r} raised {error}" if term else "a reward raised on another rank"
        )


def describe_exception(err: BaseException) -> str:
    """``Type: first line of the message`` (one line)."""
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
