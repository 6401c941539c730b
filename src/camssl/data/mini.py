"""The embedded mini CIFAR-10 set (``source="mini"``), shipped as ``camssl/assets/mini_cifar10.npz``.

The file (built by ``scripts/make_mini.py``) holds the original JPEG bytes of 250 training
and 50 test images per class from the CIFAR-10 JPEG set, in a compressed ``.npz``:

* ``jpeg``: all JPEG files concatenated (``uint8``);
* ``offsets``: ``int64``, N+1 entries; image ``i`` is ``jpeg[offsets[i]:offsets[i+1]]``;
* ``labels``: ``int64`` class ids; ``is_test``: ``bool``, True for test images;
* ``classes``: the class names (a unicode array, so no pickle is needed to read it).

Decoding it with PIL takes about a second, so the decoded tensors are kept through the
decode-once cache (:mod:`camssl.data.cache`) in the cache directory (``data.cache_dir``, else
``$CAMSSL_CACHE``, else ``~/.cache/camssl``; never inside the installed package), keyed by the
asset file's path, size and modification time and the image size.
"""

from __future__ import annotations

import io
from importlib import resources
from pathlib import Path

import numpy as np
import torch

import camssl.data.images as images
from camssl.data.cache import CacheSpot, cache_key, default_cache_dir
from camssl.data.images import ImageSet, RawSource
from camssl.errors import DataError

ASSET_NAME = "mini_cifar10.npz"


def load_mini(image_size: int, cache_dir: str | None = None) -> RawSource:
    """The embedded set at ``image_size`` (its own test part comes along), decoded once and then cached."""
    asset = resources.files("camssl") / "assets" / ASSET_NAME
    with resources.as_file(asset) as path:
        try:
            stat = path.stat()
        except OSError:
            return _decode(path, image_size)  # the error names the problem
        source, folder = path.resolve(), default_cache_dir(cache_dir)
        spot = CacheSpot(source, folder, "mini-cifar10", image_size, folder)
        key = cache_key([str(source), str(stat.st_size), str(stat.st_mtime_ns), f"size={image_size}"])
        return spot.load_or_build(key, lambda: _decode(path, image_size))


def _decode(path: Path, image_size: int) -> RawSource:
    """Decode every image of the asset at ``path`` with PIL."""
    try:
        with np.load(path, allow_pickle=False) as npz:
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
