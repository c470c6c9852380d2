"""Which studies each rank takes at each micro-step: deterministic, sharded, resumable; and the drawing of
those samples with their images decoded (``SampleDrawer``).

Each epoch is a permutation drawn from ``seed + epoch``. It is padded by wrapping around to a multiple of
``world_size * batch_size`` (as torch's DistributedSampler does), and rank ``r`` takes positions
``r, r + world_size, ...``. The position (epoch, batch index) is all a checkpoint needs to continue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from data.batching import load_images
from data.images import ImageLoadError
from data.r2gen import Sample

log = logging.getLogger(__name__)


@dataclass
class ShardedBatches:
    num_items: int
    batch_size: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    epoch: int = 0
    index: int = 0  # next batch within the epoch

    def __post_init__(self) -> None:
        if self.num_items < 1:
            raise ValueError("the dataset is empty: no samples to train on")

    @property
    def batches_per_epoch(self) -> int:
        per_rank = -(-self.num_items // self.world_size)
        return -(-per_rank // self.batch_size)

    def _epoch_indices(self) -> list[int]:
        if getattr(self, "_cached", (None,))[0] == self.epoch:
            return self._cached[1]
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_items, generator=generator).tolist()
        total = self.batches_per_epoch * self.batch_size * self.world_size
        order = (order * (-(-total // len(order))))[:total]
        self._cached = (self.epoch, order[self.rank :: self.world_size])
        return self._cached[1]

    def next_batch(self) -> list[int]:
        if self.index >= self.batches_per_epoch:
            self.epoch += 1
            self.index = 0
        mine = self._epoch_indices()
        batch = mine[self.index * self.batch_size : (self.index + 1) * self.batch_size]
        self.index += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


@dataclass
class SampleDrawer:
    """This rank's micro-batches of samples, in ``batches``' order, their images decoded on the way (held in
    ``images`` until the prompts are built). A sample whose image will not decode is dropped and counted in
    ``skipped`` with ``skip_bad`` (config ``data.skip_bad``); otherwise ImageLoadError."""

    samples: list[Sample]
    batches: ShardedBatches
    skip_bad: bool = False
    skipped: int = 0
    images: dict[str, list] = field(default_factory=dict)

    def next_batch(self) -> list[Sample]:
        """The next micro-batch that keeps at least one sample."""
        while True:
            kept = []
            for sample in (self.samples[i] for i in self.batches.next_batch()):
                try:
                    self.images[sample.id] = load_images(sample.image_paths)
                    kept.append(sample)
                except (ImageLoadError, FileNotFoundError) as err:
                    if not self.skip_bad:
                        raise ImageLoadError(str(err)) from None
                    self.skipped += 1
                    log.warning("data.skip_bad: skipped sample %s: %s", sample.id, err)
            if kept:
                return kept

    def pop_images(self, samples: list[Sample]) -> list | None:
        """The decoded images of ``samples`` (then forgotten); None unless all were drawn here."""
        if not all(s.id in self.images for s in samples):
            return None
        return [self.images.pop(s.id) for s in samples]

    def state_dict(self) -> dict:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Go back (or on) to a data position; decoded images not yet used are dropped."""
        self.batches.load_state_dict(state)
        self.images.clear()
