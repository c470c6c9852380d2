"""Run under torchrun (2 processes, gloo) by tests/test_faults.py: rank 1 sleeps past ``dist_timeout_s`` while
rank 0 waits in a collective. Rank 0 must stop with train.py's one line and exit code, not hang.

    timeout_worker.py flags STEP          the step's flag all-reduce (StopSignal.agree) at step STEP
    timeout_worker.py train key=value ... a GRPO run whose reward sleeps on rank 1 in step 2
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train  # noqa: E402
from grpo import distributed  # noqa: E402
from grpo.distributed import CollectiveTimeout  # noqa: E402
from grpo.preemption import StopSignal  # noqa: E402

TIMEOUT_S = 2.0
SLEEP_S = 8.0


def flags(step: int) -> int:
    info = distributed.setup("cpu", timeout_s=TIMEOUT_S)
    distributed.set_step(step)
    StopSignal().agree(info.device)  # both arrive: the group works
    if info.rank == 1:
        time.sleep(SLEEP_S)
    try:
        StopSignal().agree(info.device, nonfinite=False)
    except CollectiveTimeout as err:
        print(f"error: {err}", file=sys.stderr)
        distributed.teardown(together=False)
        return err.exit_code
    return 0


def sleepy_training(overrides: list[str]) -> int:
    """train.py's main() with a reward that makes rank 1 sleep past the timeout in its 2nd call."""
    import numpy as np

    from grpo import trainer as trainer_module
    from rewards.combine import RewardOutput

    calls = []

    def reward(completions, references, keys):
        calls.append(1)
        if os.environ["RANK"] == "1" and len(calls) == 2:
            time.sleep(SLEEP_S)
        r = np.array([t.count("e") / max(len(t), 1) for t in completions], dtype=np.float32)
        return RewardOutput(total=r, terms={"e_share": r})

    trainer_module.build_reward = lambda *args, **kwargs: reward
    config = Path(os.environ["EMPTY_CONFIG"])
    return train.main(["--config", str(config), f"dist_timeout_s={TIMEOUT_S}", *overrides])


if __name__ == "__main__":
    mode = sys.argv[1]
    sys.exit(flags(int(sys.argv[2])) if mode == "flags" else sleepy_training(sys.argv[2:]))
