"""Batching prompts for the processor, and keeping pixels aligned with their prompts.

Qwen2.5-VL flattens all images of a batch into one `pixel_values` tensor of patches, `(sum_i t_i*h_i*w_i,
patch_dim)`, with `image_grid_thw` giving each image's (t, h, w) patch grid in the order the images appear in
the batch's rows. In the text, image i takes `t_i*h_i*w_i / merge_size**2` consecutive `<|image_pad|>`
tokens. Nothing ties a row to its patches except that order, so repeating a prompt for its G completions
(row i*G + j, as `generate(num_return_sequences=G)` does) must repeat each prompt's own slice of patches,
whose length differs between prompts when images differ in size or number. `repeat_for_group` does that
and checks the token/patch bookkeeping on the way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from data.images import load_image
from data.prompts import PromptConfig, image_count, render_prompt

log = logging.getLogger(__name__)

# Keys that hold one entry per image (or per patch) rather than one per row.
IMAGE_KEYS = ("pixel_values", "image_grid_thw")
_first_batch_logged = False  # the visual-token count is logged once per process (the first batch)


def load_images(paths: Sequence[str | Path]) -> list[Image.Image]:
    """Decode a sample's images as 8-bit RGB (errors name the file)."""
    return [load_image(path) for path in paths]


def collate_prompts(
    processor,
    samples: Sequence,
    prompt_cfg: PromptConfig | None = None,
    images: Sequence[Sequence[Image.Image]] | None = None,
) -> dict[str, torch.Tensor]:
    """Tensors for generating from a batch of prompts: left-padded `input_ids` / `attention_mask` (so every
    row's last token is the assistant header and new tokens line up), `pixel_values`, `image_grid_thw`, and
    `mm_token_type_ids` when the processor returns it.

    samples: objects with `image_paths` (read from disk unless `images` is given) or, with `images`, ints.
    images: optional pre-loaded images, one list per sample.
    """
    if not samples:
        raise ValueError("collate_prompts needs at least one sample")
    if images is None:
        if not all(hasattr(sample, "image_paths") for sample in samples):
            raise TypeError("without `images`, every sample needs image_paths to read its images from")
        images = [load_images(sample.image_paths) for sample in samples]
    if len(images) != len(samples):
        raise ValueError(f"got {len(images)} image lists for {len(samples)} samples")
    for index, (sample, sample_images) in enumerate(zip(samples, images)):
        if image_count(sample) != len(sample_images):
            raise ValueError(
                f"sample {getattr(sample, 'id', index)!r}: {image_count(sample)} images expected, "
                f"{len(sample_images)} given"
            )

    texts = [render_prompt(processor, len(sample_images), prompt_cfg) for sample_images in images]
    flat_images = [image for sample_images in images for image in sample_images]
    encoded = processor(
        text=texts, images=flat_images, padding=True, padding_side="left", return_tensors="pt"
    )
    batch = {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}
    counts = images_per_row(batch, image_token_id=processor.image_token_id)
    if counts != [len(sample_images) for sample_images in images]:
        raise RuntimeError(
            f"processor output has images per row {counts}, expected {[len(i) for i in images]}"
        )
    global _first_batch_logged
    if not _first_batch_logged:
        _first_batch_logged = True
        log.info(
            "first batch: visual tokens per image %s (image size in pixels bounded to [%d, %d] by "
            "model.min_pixels / model.max_pixels)",
            visual_tokens_per_image(processor, batch),
            processor.image_processor.size["shortest_edge"],
            processor.image_processor.size["longest_edge"],
        )
    return batch


def visual_tokens_per_image(processor, batch: dict[str, torch.Tensor]) -> list[int]:
    """Language-model tokens each image of the batch takes: its patch grid t*h*w over merge_size**2."""
    merge_area = processor.image_processor.merge_size**2
    return [int(t * h * w) // merge_area for t, h, w in batch["image_grid_thw"].tolist()]


def images_per_row(batch: dict[str, torch.Tensor], image_token_id: int | None = None) -> list[int]:
    """How many images each row holds, from its runs of image tokens, checked against `image_grid_thw`
    (each run must have grid_t*grid_h*grid_w / merge_size**2 tokens, images taken in order).

    Image positions come from `mm_token_type_ids == 1` when present, else `input_ids == image_token_id`.
    """
    image_positions = _image_token_positions(batch, image_token_id)
    grids = batch.get("image_grid_thw")
    run_lengths = [_run_lengths(row) for row in image_positions]
    n_runs = sum(len(runs) for runs in run_lengths)
    n_grids = 0 if grids is None else len(grids)
    if n_runs != n_grids:
        raise ValueError(f"the text holds {n_runs} images but image_grid_thw lists {n_grids}")
    if n_runs == 0:
        return [0] * len(run_lengths)

    patches_per_image = grids.prod(dim=-1).tolist()
    total_tokens = sum(sum(runs) for runs in run_lengths)
    merge_area, remainder = divmod(sum(patches_per_image), total_tokens)
    if remainder:
        raise ValueError(
            f"{sum(patches_per_image)} patches do not divide evenly into {total_tokens} image tokens"
        )
    image_index = 0
    for row, runs in enumerate(run_lengths):
        for tokens in runs:
            if tokens * merge_area != patches_per_image[image_index]:
                raise ValueError(
                    f"row {row}: image {image_index} has {tokens} tokens but its grid "
                    f"{grids[image_index].tolist()} needs {patches_per_image[image_index] // merge_area}"
                )
            image_index += 1
    if "pixel_values" in batch and batch["pixel_values"].shape[0] != sum(patches_per_image):
        raise ValueError(
            f"pixel_values has {batch['pixel_values'].shape[0]} patches, image_grid_thw sums to "
            f"{sum(patches_per_image)}"
        )
    return [len(runs) for runs in run_lengths]


def _image_token_positions(batch: dict[str, torch.Tensor], image_token_id: int | None) -> torch.Tensor:
    if "mm_token_type_ids" in batch:
        return batch["mm_token_type_ids"] == 1
    if image_token_id is None:
        raise ValueError("batch has no mm_token_type_ids: pass image_token_id to find the image tokens")
    return batch["input_ids"] == image_token_id


def _run_lengths(mask_row: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D boolean tensor."""
    flags = mask_row.to(torch.int8)
    edges = torch.diff(torch.cat([flags.new_zeros(1), flags, flags.new_zeros(1)]))
    starts = torch.nonzero(edges == 1).flatten()
    ends = torch.nonzero(edges == -1).flatten()
    return (ends - starts).tolist()


def repeat_for_group(
    batch: dict[str, torch.Tensor], group_size: int, image_token_id: int | None = None
) -> dict[str, torch.Tensor]:
    """Repeat each prompt `group_size` times contiguously (row i*G + j is prompt i), repeating each prompt's
    own images: its slice of `pixel_values` (split by `image_grid_thw` patch counts) and its grid rows."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    counts = images_per_row(batch, image_token_id=image_token_id)
    repeated = {
        key: value.repeat_interleave(group_size, dim=0)
        for key, value in batch.items()
        if key not in IMAGE_KEYS
    }
    if "image_grid_thw" not in batch:
        return repeated

    grids = batch["image_grid_thw"]
    grid_chunks = torch.split(grids, counts)
    repeated["image_grid_thw"] = torch.cat([chunk.repeat(group_size, 1) for chunk in grid_chunks])
    if "pixel_values" in batch:
        patches_per_row = [int(chunk.prod(dim=-1).sum()) for chunk in grid_chunks]
        pixel_chunks = torch.split(batch["pixel_values"], patches_per_row)
        repeated["pixel_values"] = torch.cat([chunk.repeat(group_size, 1) for chunk in pixel_chunks])
    return repeated


def append_completion(
    batch: dict[str, torch.Tensor], completion_ids: torch.Tensor, completion_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Forward inputs for prompt + completion: the completion (right-padded, `completion_mask` 1 on real
    tokens) is appended to each (left-padded) prompt row; `mm_token_type_ids` is extended with zeros (text)
    so the 3-D positions stay right. Image keys are kept as they are."""
    if (
        completion_ids.shape != completion_mask.shape
        or completion_ids.shape[0] != batch["input_ids"].shape[0]
    ):
        raise ValueError(
            f"completion_ids {tuple(completion_ids.shape)} and completion_mask {tuple(completion_mask.shape)} "
            f"must both be (rows={batch['input_ids'].shape[0]}, T)"
        )
    out = dict(batch)
    out["input_ids"] = torch.cat([batch["input_ids"], completion_ids], dim=1)
    out["attention_mask"] = torch.cat(
        [batch["attention_mask"], completion_mask.to(batch["attention_mask"].dtype)], 1
    )
    if "mm_token_type_ids" in batch:
        text_types = torch.zeros_like(completion_ids, dtype=batch["mm_token_type_ids"].dtype)
        out["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], text_types], dim=1)
    return out


def tokenize_targets(tokenizer, texts: Sequence[str], stop_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded target ids for teacher forcing, each closed by ``stop_id`` (the end-of-turn token the
    model must learn to stop on), and their mask."""
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [stop_id] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return ids, mask
