"""Stopping cleanly when the cluster asks: SIGTERM (SLURM, Kubernetes, spot instances) or SIGINT (Ctrl-C).

The handler only records the signal: a handler runs between two Python bytecodes of the main thread, in the
middle of whatever collective the rank was in, so it must not touch the process group. The loop asks
:meth:`StopSignal.agree` once per step, between the gradients and the optimizer step; one tiny all-reduce
tells every rank whether any rank was signalled, so all of them finish the same step (or, with
grpo.num_iterations > 1, the batch of rollouts), write one checkpoint together and leave with
:class:`Preempted`. The same all-reduce carries the step's other flags: a loss or gradient that is not
finite on some rank (no rank applies the step), a fault rank 0 must share (grpo/faults.py), so the ranks
agree on them at no extra collective.
A second signal of the same kind acts as if no handler were installed (a second Ctrl-C
interrupts at once).
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import torch

from grpo import distributed

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Training stopped on a signal after writing a checkpoint; ``exit_code`` is the shell's 128 + signum."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {checkpoint} written; "
            "continue with --resume (or --resume auto)"
        )


@dataclass(frozen=True)
class Agreement:
    """What every rank learnt from the step's one all-reduce."""

    signum: int = 0  # the signal some rank received (0: none)
    nonfinite: bool = False  # some rank's loss or gradient norm was not finite: no rank applies the step
    fault: bool = False  # rank 0 could not write a metrics row (a full disk): every rank stops


class StopSignal:
    """While installed, SIGTERM and SIGINT set ``received`` instead of ending the process."""

    def __init__(self) -> None:
        self.received: int = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        self.received = self.received or signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # the next one is not caught
        log.warning(
            "%s received: finishing the current step, then writing a checkpoint", signal.Signals(signum).name
        )

    def install(self) -> StopSignal:
        import threading

        if not self._previous and threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:  # (signals reach the main thread only)
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def agreed(self, device: torch.device) -> int:
        """The signal any rank received (0: none). Collective: every rank calls it at the same step."""
        return self.agree(device).signum

    def agree(self, device: torch.device, nonfinite: bool = False, fault: bool = False) -> Agreement:
        """This rank's signal and flags, combined over ranks in one all-reduce (max) of a few numbers.
        Collective: every rank calls it once per step, at the same point."""
        signum, bad, failed = distributed.all_reduce_max_many(
            [float(self.received), float(bool(nonfinite)), float(bool(fault))], device,
            op="all_reduce (step flags)",
        )  # fmt: skip
        return Agreement(signum=int(signum), nonfinite=bool(bad), fault=bool(failed))
