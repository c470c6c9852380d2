"""Image loading for report generation: every image reaches the processor as an 8-bit RGB PIL image.

Chest X-ray files come as 8-bit grayscale PNG/JPEG (IU X-Ray, MIMIC-CXR-JPG) or, in some exports, 16-bit
PNG. Errors name the file, so a bad image fails at load time with its path, not deep inside a batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# PIL modes holding more than 8 bits per pixel; a plain convert("RGB") would clip them.
_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class ImageLoadError(OSError):
    """An image file exists but cannot be decoded."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB. High-bit-depth grayscale is min-max stretched to 0..255."""
    if image.mode in _HIGH_BIT_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
        image = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def check_image_header(path: str | Path) -> None:
    """Cheap check that ``path`` exists and PIL recognises its header (pixels are not decoded).

    Raises FileNotFoundError or ImageLoadError naming the file. A file truncated after a valid header
    passes here and fails in :func:`load_image`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 -- the header is parsed on open; touching size makes the intent clear
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"cannot read image {path}: {error}") from error


def load_image(path: str | Path) -> Image.Image:
    """Decode the image at ``path`` fully and return it as 8-bit RGB.

    Raises FileNotFoundError when the file is absent and ImageLoadError when it cannot be decoded
    (not an image, truncated, unsupported format); both messages name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"cannot read image {path}: {error}") from error
