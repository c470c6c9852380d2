"""Run under torchrun (2 processes, gloo) by tests/test_faults.py: a fault on one rank only, which both ranks
must handle together (no hang, one line each, the same exit code).

    fault_worker.py nan STEP key=value ...     rank 1's loss is NaN in step STEP: both ranks skip the step
    fault_worker.py reward STEP key=value ...  rank 1's reward raises in step STEP: both stop after saving
    fault_worker.py disk STEP key=value ...    rank 0's checkpoint write of step STEP hits ENOSPC
    fault_worker.py metrics STEP key=value ... rank 0's metrics row of step STEP hits ENOSPC
    fault_worker.py none 0 key=value ...       no fault (the uninterrupted run, or a resume: resume="auto")

Prints ``rank R: error: <line>`` and exits with the error's exit code, or writes ``params-rank<R>.pt`` (the
trainable parameters) in the run folder and exits 0.
"""

import errno
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddp_worker import letter_e_reward  # noqa: E402

from grpo import checkpoint, distributed, faults  # noqa: E402
from grpo.config import load_config  # noqa: E402
from grpo.faults import DiskFullError, NonFiniteStop, RewardFailed  # noqa: E402
from grpo.loss import load_loss  # noqa: E402
from grpo.trainer import Trainer  # noqa: E402


def main():
    mode, step, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    rank = int(os.environ["RANK"])
    grpo_loss = load_loss("grpo")

    def loss(batch, cfg):
        value, stats = grpo_loss(batch, cfg)
        if mode == "nan" and rank == 1 and distributed._step == step:
            value = value * float("nan")
        return value, stats

    def reward(completions, references, keys):
        if mode == "reward" and rank == 1 and distributed._step == step:
            raise KeyError("study missing from the label cache")
        return letter_e_reward(completions, references, keys)

    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        if mode == "disk" and f".tmp-step-{step:06d}" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    checkpoint.torch.save = save
    real_write = os.write

    def write(fd, data):
        if mode == "metrics" and data.startswith(f'{{"step": {step},'.encode()):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    faults.os.write = write
    cfg = load_config(None, overrides)
    trainer = Trainer(cfg, resume="auto", reward_fn=reward, loss_fn=loss)
    try:
        trainer.train()
    except (DiskFullError, NonFiniteStop, RewardFailed) as err:
        print(f"rank {rank}: error: {err}", file=sys.stderr)
        trainer.close()
        distributed.teardown()
        sys.exit(err.exit_code)
    real_save([p.detach().clone() for p in trainer.params], Path(cfg.output_dir) / f"params-rank{rank}.pt")
    trainer.close()
    distributed.teardown()


if __name__ == "__main__":
    main()
