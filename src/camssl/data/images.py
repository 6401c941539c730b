"""Turning image files into fixed-size RGB ``uint8`` arrays, and the containers that hold them.

Every image, whatever its mode, becomes 3-channel RGB:

* grayscale (``L``, ``1``), CMYK, YCbCr: converted with PIL;
* with alpha (``RGBA``, ``LA``, palette with transparency): the alpha channel is dropped
  (the colour values under it are kept, as ``torchvision``'s ``ImageFolder`` does);
* 16/32-bit integer grayscale (``I;16``, ``I``): scaled from the 16-bit range to 8 bits.

EXIF orientation is applied. An image whose size differs from ``size``×``size`` is resized
to exactly that square with PIL's bilinear filter (which antialiases when shrinking); the
aspect ratio is not kept (no cropping or padding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from camssl.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

# What PIL raises on unreadable, truncated or hostile files.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    Image.DecompressionBombError,
)

_WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def to_rgb_array(img: Image.Image, size: int) -> np.ndarray:
    """Return ``img`` as a ``size``×``size``×3 ``uint8`` array (see the module doc for the rules)."""
    img.draft(None, (size, size))  # JPEG only: let the decoder shrink big photos by 2^k cheaply
    ImageOps.exif_transpose(img, in_place=True)
    if img.mode in _WIDE_GRAY_MODES:
        wide = np.asarray(img, dtype=np.float32) / 257.0
        img = Image.fromarray(np.clip(np.rint(wide), 0, 255).astype(np.uint8))
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def resize_array(hwc: np.ndarray, size: int) -> np.ndarray:
    """Resize one H×W×3 ``uint8`` array to ``size``×``size`` with the same filter as files."""
    return to_rgb_array(Image.fromarray(hwc), size)


def unreadable_image_error(path: str, reason: str) -> DataError:
    """The one-line error for an image that cannot be decoded."""
    reason = " ".join(reason.split()) or "unknown error"
    return DataError(
        f"cannot read image '{path}' ({reason}); fix or delete the file, or pass --skip-bad "
        "(data.skip_bad=true) to skip unreadable images"
    )


@dataclass
class ImageSet:
    """Decoded images with their labels."""

    images: torch.Tensor  # uint8, N×3×S×S, contiguous
    labels: torch.Tensor  # int64, N
    classes: list[str]  # label id -> class name

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class RawSource:
    """What one source yields before test carving: its train part and, if it has one, its test part.

    ``skipped`` lists the files left out under ``skip_bad``; ``skip_reasons`` says why (same order).
    """

    train: ImageSet
    test: ImageSet | None
    skipped: list[str] = field(default_factory=list)
    skip_reasons: list[str] = field(default_factory=list)


def stack_hwc(arrays: np.ndarray) -> torch.Tensor:
    """N×S×S×3 ``uint8`` array -> contiguous N×3×S×S ``uint8`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(arrays.transpose(0, 3, 1, 2)))


def decode_image(source: str | Path | BinaryIO, size: int) -> np.ndarray:
    """Open ``source`` (a path or a binary file object) with PIL and return its RGB array.

    Raises one of :data:`DECODE_ERRORS` when the data is not a readable image.
    """
    with Image.open(source) as img:
        return to_rgb_array(img, size)
