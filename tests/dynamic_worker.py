"""Run under torchrun by tests/test_distributed.py: GRPO steps with dynamic sampling where rank 0's studies
mostly carry no signal and rank 1's all do, so rank 0 needs more rounds than rank 1. Records, per rank and
step, the draws and the batch that reached the loss, then the trainable parameters. Usage:
dynamic_worker.py OUT.json key=value ..."""

import json
import os
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grpo import distributed  # noqa: E402
from grpo.config import load_config  # noqa: E402
from grpo.trainer import Trainer  # noqa: E402
from rewards.combine import RewardOutput  # noqa: E402


def lopsided_reward(completions, references, keys):
    """The letter-e share; on rank 0 three studies in four get the same 0.5 for all their completions."""
    r = np.array([t.count("e") / max(len(t), 1) for t in completions], dtype=np.float32)
    if os.environ.get("RANK", "0") == "0":
        flat = [zlib.crc32(str(k).encode()) % 4 != 0 for k in keys]
        r = np.where(flat, np.float32(0.5), r).astype(np.float32)
    return RewardOutput(total=r, terms={"e_share": r})


def main():
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    trainer = Trainer(load_config(None, overrides), reward_fn=lopsided_reward)
    draws, batches = [], []
    draw, update = trainer._draw_step, trainer.grpo_update

    def counted_draw():
        draws[-1] += 1
        return draw()

    def recorded_update(rollouts):
        batches.append([ro.advantages.shape[0] // ro.group_size for ro in rollouts])
        return update(rollouts)

    def step():
        draws.append(0)
        return train_step()

    train_step = trainer.train_step
    trainer._draw_step, trainer.grpo_update, trainer.train_step = counted_draw, recorded_update, step
    trainer.train()
    params = torch.cat([p.detach().flatten().double() for p in trainer.params])
    everyone = distributed.gather_objects({"draws": draws, "batches": batches, "params": params})
    if trainer.dist.is_main:
        rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
        out.write_text(json.dumps({
            "world_size": trainer.dist.world_size,
            "draws": [e["draws"] for e in everyone],
            "batches": [e["batches"] for e in everyone],
            "max_abs_diff_between_ranks": max(float((e["params"] - params).abs().max()) for e in everyone),
            "rounds": [row["dynamic/resample_rounds"] for row in rows],
            "filtered": [row["dynamic/filtered_groups"] for row in rows],
        }))  # fmt: skip
    trainer.close()
    distributed.teardown()


if __name__ == "__main__":
    main()
