"""Run under torchrun --max-restarts=1 by tests/test_faults.py: a GRPO run where rank 1 receives SIGTERM in the
middle of a step, once (a marker file remembers it). The ranks agree to stop after that step, write a
checkpoint together and exit with 143; torchrun restarts them, and ``resume="auto"`` continues the run.
Usage: preempt_worker.py MARKER key=value ..."""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddp_worker import letter_e_reward  # noqa: E402  (the same reward as the uninterrupted ddp_worker run)

from grpo import distributed  # noqa: E402
from grpo.config import load_config  # noqa: E402
from grpo.preemption import Preempted  # noqa: E402
from grpo.trainer import Trainer  # noqa: E402

SIGNAL_AT_CALL = 3  # grad_accum=2: the first micro-batch of step 2


def main():
    marker, overrides = Path(sys.argv[1]), sys.argv[2:]
    calls = []

    def reward(completions, references, keys):
        calls.append(1)
        if os.environ["RANK"] == "1" and len(calls) == SIGNAL_AT_CALL and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGTERM)
        return letter_e_reward(completions, references, keys)

    trainer = Trainer(load_config(None, overrides), resume="auto", reward_fn=reward)
    try:
        trainer.train()
    except Preempted as stop:
        print(f"rank {os.environ['RANK']}: {stop}", file=sys.stderr)
        trainer.close()
        distributed.teardown()  # every rank stopped at the same step: leave the group together
        sys.exit(stop.exit_code)
    trainer.close()
    distributed.teardown()


if __name__ == "__main__":
    main()
