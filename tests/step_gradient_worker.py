"""Run by tests/test_distributed.py under torchrun (2 ranks, rank r holds study r) or alone (one process
holding both studies): the gradient of one GRPO step on fixed completions of unequal lengths, for each
aggregation. Usage: step_gradient_worker.py OUT.pt key=value ..."""

import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grpo import distributed  # noqa: E402
from grpo.config import load_config  # noqa: E402
from grpo.trainer import Trainer  # noqa: E402
from model.generation import Completions  # noqa: E402
from rewards.combine import RewardOutput  # noqa: E402


def length_reward(completions, references, keys):
    r = np.array([len(t) / 40 for t in completions], dtype=np.float32)
    return RewardOutput(total=r, terms={"length": r})


def fixed_generate(trainer, studies):
    """Replaces the sampling step: study k's completion j has 2 + 5k + j tokens (so rank 1's are longer)."""
    text = "the heart is normal in size and the lungs are clear " * 4
    words = trainer.tokenizer(text, add_special_tokens=False)["input_ids"]
    G = trainer.cfg.sampling.group_size

    order = itertools.cycle(studies)  # the studies of the micro-batches, in the order they are sampled

    def generate(prompts, images):
        batch = [next(order) for _ in range(prompts["input_ids"].shape[0])]
        lengths = [2 + 5 * k + j for k in batch for j in range(G)]
        ids = torch.full((len(lengths), max(lengths)), trainer.tokenizer.pad_token_id)
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        for row, length in enumerate(lengths):
            ids[row, :length] = torch.tensor(words[:length])
            mask[row, :length] = True
        return Completions(ids, mask, torch.zeros(len(lengths), dtype=torch.bool))

    return generate


def step_gradient(trainer, micro_batches):
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.grpo_update(trainer.rollout(micro_batches))
    return torch.cat([p.grad.detach().flatten().double() for p in trainer.params])


def main():
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    trainer = Trainer(load_config(None, overrides), reward_fn=length_reward)
    world, rank = trainer.dist.world_size, trainer.dist.rank
    studies = [rank] if world > 1 else [0, 1]
    trainer.generate = fixed_generate(trainer, studies)
    samples = [trainer.samples[k] for k in studies]
    grads = {}
    for aggregation in ("sequence", "token", "dr_grpo"):
        trainer.cfg.grpo.aggregation = aggregation
        grads[aggregation] = step_gradient(trainer, [samples])
        if world == 1:  # the same batch as two micro-batches of gradient accumulation
            grads[f"{aggregation}/accumulated"] = step_gradient(trainer, [[s] for s in samples])
    if trainer.dist.is_main:
        torch.save(grads, out)
    trainer.close()
    distributed.teardown()


if __name__ == "__main__":
    main()
