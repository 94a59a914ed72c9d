"""Decode one image file of any size and colour mode to a uint8 array.

Training, evaluation and prediction all go through `decode_image`, so a registered
model sees exactly the preprocessing it was trained with.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps


class UnreadableImageError(Exception):
    """The file is not an image PIL can decode (not an image, corrupt, truncated, empty)."""


def decode_image(path: str | Path | BinaryIO, image_size: int, channels: int) -> np.ndarray:
    """Return an (image_size, image_size, channels) uint8 array; the aspect ratio is not kept."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                # JPEG only: let libjpeg decode at a reduced scale, still >= the target size.
                im.draft("L" if channels == 1 else "RGB", (image_size, image_size))
                im.load()
                im = ImageOps.exif_transpose(im)
                im = _to_8bit(im, channels)
                im = im.resize((image_size, image_size), Image.Resampling.BILINEAR,
                               reducing_gap=3.0)
                arr = np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImageError(_reason(e)) from e
    return arr.reshape(image_size, image_size, channels)


def _to_8bit(im: Image.Image, channels: int) -> Image.Image:
    """Grayscale 'L' or 'RGB'. 16-bit and float images are scaled, alpha is dropped."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if im.mode == "F":
            top = max(float(arr.max(initial=0)), 1.0)
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "P":
        im = im.convert("RGBA")
    target = "L" if channels == 1 else "RGB"
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") and target == "L":
        im = im.convert("RGB")  # drop alpha first, so it does not darken the gray values
    return im if im.mode == target else im.convert(target)


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if "cannot identify image file" in text:
        return "not an image file"
    return text.splitlines()[0][:200]
