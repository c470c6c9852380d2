"""Run under torchrun by tests/test_distributed.py: a few GRPO steps, then compare trainable parameters across
ranks. Usage: ddp_worker.py OUT.json key=value ..."""

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grpo import distributed  # noqa: E402
from grpo.config import load_config  # noqa: E402
from grpo.trainer import Trainer  # noqa: E402


def letter_e_reward(completions, references, keys):
    """A reward a random policy can move (each rank's completions differ, so do its gradients)."""
    from rewards.combine import RewardOutput

    r = np.array([t.count("e") / max(len(t), 1) for t in completions], dtype=np.float32)
    return RewardOutput(total=r, terms={"e_share": r})


def flat(params):
    return torch.cat([p.detach().flatten().double() for p in params])


def last_logged(run_dir):
    return json.loads((Path(run_dir) / "metrics.jsonl").read_text().splitlines()[-1])


def main():
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    trainer = Trainer(load_config(None, overrides), reward_fn=letter_e_reward)
    before = flat(trainer.params)
    trainer.train()
    after = flat(trainer.params)
    everyone = distributed.gather_objects(after)
    seen = distributed.gather_objects(sorted(trainer.samples[i].id for i in range(len(trainer.samples))))
    if trainer.dist.is_main:
        out.write_text(json.dumps({
            "world_size": trainer.dist.world_size,
            "max_abs_diff_between_ranks": max(float((t - everyone[0]).abs().max()) for t in everyone),
            "moved": float((after - before).norm()),
            "grad_signal": last_logged(trainer.run_dir)["grad_norm"],
            "same_dataset": all(s == seen[0] for s in seen),
        }))  # fmt: skip
    trainer.close()
    distributed.teardown()


if __name__ == "__main__":
    main()
