"""The Qwen2.5-VL processor for still images only.

Why a subclass: transformers' `Qwen2_5_VLProcessor` expects a video processor, and the only video processor
for this family needs torchvision. On machines where torchvision is missing (or is a CUDA build that fails to
import on a CPU box) constructing the stock processor fails, and `AutoProcessor.from_pretrained` on a folder
saved without a video processor quietly returns the bare tokenizer. Chest X-ray reports never use video, so
`ImageOnlyQwen2_5_VLProcessor` drops that sub-processor: it is built from the tokenizer and the image
processor alone and behaves like the stock processor for text + images (same placeholder expansion, same
`mm_token_type_ids`).

The image processor defaults to the PIL backend (`Qwen2VLImageProcessorPil`), which needs no torchvision and
gives the same pixel values on every machine; `image_backend="torchvision"` selects the tensor backend where
it works.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import AutoImageProcessor, AutoTokenizer
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

logger = logging.getLogger(__name__)

IMAGE_BACKENDS = ("pil", "torchvision")
STOCK_PROCESSOR_CLASS = "Qwen2_5_VLProcessor"
STOCK_VIDEO_PROCESSOR_CLASS = "Qwen2VLVideoProcessor"


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without the video sub-processor (images and text only)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # The signature (no `video_processor`) is what transformers reads to decide which
        # sub-processors to save and load, so it must stay without one.
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save like the stock processor, naming `Qwen2_5_VLProcessor` as the processor class, so a folder
        written here (the tiny model, a merged export) opens with stock tools where torchvision exists."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
            config_file = Path(save_directory) / name
            if not config_file.is_file():
                continue
            config = json.loads(config_file.read_text(encoding="utf-8"))
            if config.get("processor_class") == type(self).__name__:
                config["processor_class"] = STOCK_PROCESSOR_CLASS
            if "image_processor" in config and "video_processor" not in config:
                config["video_processor"] = _video_processor_config(config["image_processor"])
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return result


def _video_processor_config(image_processor_config: dict) -> dict:
    """The stock processor also loads a video processor (with torchvision) and finds none in a folder saved
    without one; released checkpoints get it from their image settings, and so does this entry."""
    config = {k: v for k, v in image_processor_config.items() if k != "image_processor_type"}
    return {**config, "video_processor_type": STOCK_VIDEO_PROCESSOR_CLASS}


def load_processor(
    path: str | Path,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    image_backend: str = "pil",
) -> ImageOnlyQwen2_5_VLProcessor:
    """Load the tokenizer, image processor and chat template of a Qwen2.5-VL folder as one processor.

    Works on the tiny offline model's folder and on a real checkpoint (e.g. HuatuoGPT-Vision-7B-Qwen2.5VL).
    `min_pixels` / `max_pixels` bound the resized image area (each 28 x 28 pixel block is one vision token
    after the 2 x 2 merge); `None` keeps the folder's own bounds.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"processor folder {path} does not exist")
    if image_backend not in IMAGE_BACKENDS:
        raise ValueError(f"image_backend must be one of {IMAGE_BACKENDS}, got {image_backend!r}")
    if not (path / "preprocessor_config.json").is_file() and not (path / "processor_config.json").is_file():
        raise FileNotFoundError(
            f"{path} has no preprocessor_config.json / processor_config.json: not a Qwen2.5-VL processor folder"
        )

    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path, backend=image_backend)
    set_pixel_bounds(image_processor, min_pixels=min_pixels, max_pixels=max_pixels)
    chat_template = _read_chat_template(path, tokenizer)
    processor = ImageOnlyQwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template
    )
    logger.info(
        "processor from %s: %s image processor (%s), pixels in [%d, %d], vocab %d",
        path,
        image_backend,
        type(image_processor).__name__,
        image_processor.size["shortest_edge"],
        image_processor.size["longest_edge"],
        len(tokenizer),
    )
    return processor


def set_pixel_bounds(image_processor, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Set the resize bounds (in pixels of area) on a Qwen2-VL image processor, keeping unset ones."""
    size = dict(image_processor.size)
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    if size["shortest_edge"] <= 0 or size["longest_edge"] < size["shortest_edge"]:
        raise ValueError(
            f"need 0 < min_pixels <= max_pixels, got min_pixels={size['shortest_edge']} "
            f"max_pixels={size['longest_edge']}"
        )
    image_processor.size = size


def _read_chat_template(path: Path, tokenizer) -> str:
    """The chat template: `chat_template.jinja`, the legacy `chat_template.json`, or the tokenizer's."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    legacy = path / "chat_template.json"
    if legacy.is_file():
        return json.loads(legacy.read_text(encoding="utf-8"))["chat_template"]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    raise FileNotFoundError(
        f"{path} has no chat template (chat_template.jinja, chat_template.json or tokenizer)"
    )
