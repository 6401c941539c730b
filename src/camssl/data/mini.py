"""The embedded mini CIFAR-10 set (``source="mini"``), shipped as ``camssl/assets/mini_cifar10.npz``.

The file (built by ``scripts/make_mini.py``) holds the original JPEG bytes of 250 training
and 50 test images per class from the CIFAR-10 JPEG set, in a compressed ``.npz``:

* ``jpeg``: all JPEG files concatenated (``uint8``);
* ``offsets``: ``int64``, N+1 entries; image ``i`` is ``jpeg[offsets[i]:offsets[i+1]]``;
* ``labels``: ``int64`` class ids; ``is_test``: ``bool``, True for test images;
* ``classes``: the class names (a unicode array, so no pickle is needed to read it).

It is decoded with PIL on every load (about a second), so it has no cache.
"""

from __future__ import annotations

import io
from importlib import resources

import numpy as np
import torch

import camssl.data.images as images
from camssl.data.images import ImageSet, RawSource
from camssl.errors import DataError

ASSET_NAME = "mini_cifar10.npz"


def load_mini(image_size: int) -> RawSource:
    """Decode the embedded set at ``image_size``; its own test part comes along."""
    asset = resources.files("camssl") / "assets" / ASSET_NAME
    try:
        with resources.as_file(asset) as path, np.load(path, allow_pickle=False) as npz:
            jpeg, offsets = npz["jpeg"], npz["offsets"]
            labels, is_test, classes = npz["labels"], npz["is_test"], [str(c) for c in npz["classes"]]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(
            f"the embedded mini CIFAR-10 set is missing or unreadable ({exc}); reinstall camssl "
            "or rebuild it with scripts/make_mini.py"
        ) from exc
    decoded = np.stack(
        [images.decode_image(io.BytesIO(jpeg[a:b].tobytes()), image_size) for a, b in zip(offsets[:-1], offsets[1:])]
    )
    tensors = images.stack_hwc(decoded)
    labels_t = torch.from_numpy(labels.astype(np.int64))

    def part(mask: np.ndarray) -> ImageSet:
        index = torch.from_numpy(np.flatnonzero(mask))
        return ImageSet(tensors[index].contiguous(), labels_t[index], list(classes))

    return RawSource(train=part(~is_test), test=part(is_test))
