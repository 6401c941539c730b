"""Loading a data source into memory: :class:`DataConfig` -> :func:`load_data` -> :class:`DataBundle`.

Sources (``DataConfig.source``):

* ``"mini"``: the embedded mini CIFAR-10 (250 train + 50 test JPEGs per class), see
  :mod:`camssl.data.mini`;
* CIFAR-10 in the official python format (the ``cifar-10-batches-py`` folder, a folder
  containing it, or ``cifar-10-python.tar.gz``), see :mod:`camssl.data.cifar`;
* an image folder ``root/<class>/<image>`` or ``root/train/...`` + ``root/test/...``
  (or ``val/``), see :mod:`camssl.data.folder`.

Folder and CIFAR sources are decoded once and cached (:mod:`camssl.data.cache`). When the
source has no test part and no ``test_source`` is given, a stratified, seeded share
(``test_fraction``) of each class is carved out as the test set. With ``test_source``, the
test set comes from that source instead: its test part if it has one, else all its images.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import camssl.data.cifar as cifar
from camssl.data.cache import CacheSpot, cache_key, default_cache_dir
from camssl.data.folder import check_same_classes, decode_folder, scan_folder
from camssl.data.images import ImageSet, RawSource, unreadable_image_error
from camssl.data.mini import load_mini
from camssl.errors import ConfigError, DataError

MINI = "mini"
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared."""

    source: str = MINI  # "mini" | CIFAR-10 folder/archive | image-folder root
    test_source: str | None = None  # a separate test source (its test part, else all of it)
    image_size: int = 32  # images are resized to image_size×image_size when they differ
    test_fraction: float = 0.2  # share of each class carved out as test when there is no test part
    cache_dir: str | None = None  # decode cache location when the source's folder is not writable
    skip_bad: bool = False  # skip unreadable images (listed in DataBundle.skipped) instead of failing

    def validate(self) -> None:
        """Raise :class:`ConfigError` on an invalid value."""
        if not isinstance(self.source, str) or not self.source.strip():
            raise ConfigError(f"data.source must be 'mini' or a path; got {self.source!r}")
        if self.test_source is not None and (not isinstance(self.test_source, str) or not self.test_source.strip()):
            raise ConfigError(f"data.test_source must be a path or null; got {self.test_source!r}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 8:
            raise ConfigError(f"data.image_size must be an integer >= 8; got {self.image_size!r}")
        if (
            isinstance(self.test_fraction, bool)
            or not isinstance(self.test_fraction, int | float)
            or not 0 < self.test_fraction < 1
        ):
            raise ConfigError(f"data.test_fraction must be a number between 0 and 1 (exclusive); got {self.test_fraction!r}")
        if self.cache_dir is not None and (not isinstance(self.cache_dir, str) or not self.cache_dir.strip()):
            raise ConfigError(f"data.cache_dir must be a directory path or null; got {self.cache_dir!r}")
        if not isinstance(self.skip_bad, bool):
            raise ConfigError(f"data.skip_bad must be true or false; got {self.skip_bad!r}")


@dataclass
class DataBundle:
    """The loaded data: train and test sets with the same classes, plus provenance."""

    train: ImageSet
    test: ImageSet  # same classes list as train
    name: str  # "mini-cifar10", "cifar10" or the image folder's name
    test_carved: bool  # True if the test set was carved from the data
    skipped: list[str]  # files skipped as unreadable (skip_bad)
    fingerprint: str  # short hash of the train set's shape, classes and labels


def load_data(cfg: DataConfig, seed: int = 0) -> DataBundle:
    """Load ``cfg.source`` (and ``cfg.test_source``); ``seed`` only affects test-set carving."""
    cfg.validate()
    main, name = _load_source(cfg.source, cfg, for_test=False)
    skipped = list(main.skipped)
    train = main.train
    carved = False
    if cfg.test_source is not None:
        other, _ = _load_source(cfg.test_source, cfg, for_test=True)
        test = other.test if other.test is not None else other.train
        check_same_classes(train.classes, test.classes, cfg.test_source)
        skipped += other.skipped
    elif main.test is not None:
        test = main.test
    else:
        train, test = carve_test(train, cfg.test_fraction, seed)
        carved = True
    return DataBundle(train, test, name, carved, skipped, fingerprint(train))


def carve_test(data: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split ``data`` into (train, test), taking ``round(fraction × n)`` images of each class.

    Every class keeps at least one image on each side. Both parts keep the original order.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    labels = data.labels.numpy()
    test_parts = []
    for label, name in enumerate(data.classes):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            raise DataError(
                f"class '{name}' has only {len(members)} image(s), too few to carve a test set from; "
                "add images or pass a separate test set (data.test_source)"
            )
        count = min(len(members) - 1, max(1, round(fraction * len(members))))
        test_parts.append(rng.choice(members, size=count, replace=False))
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test_parts)] = True
    return _subset(data, ~is_test), _subset(data, is_test)


def fingerprint(train: ImageSet) -> str:
    """A short hash identifying the training data (shape, class names and labels)."""
    digest = hashlib.sha256(f"{tuple(train.images.shape)}|{'|'.join(train.classes)}|".encode())
    digest.update(train.labels.numpy().astype("<i8").tobytes())
    return digest.hexdigest()[:16]


def _subset(data: ImageSet, mask: np.ndarray) -> ImageSet:
    index = torch.from_numpy(np.flatnonzero(mask))
    return ImageSet(data.images[index].contiguous(), data.labels[index], list(data.classes))


def _load_source(spec: str, cfg: DataConfig, for_test: bool) -> tuple[RawSource, str]:
    """Load one source (the main or the test one); returns it with its display name."""
    if spec == MINI:
        return load_mini(cfg.image_size, cfg.cache_dir), "mini-cifar10"
    path = Path(os.path.expanduser(spec))
    if not path.exists():
        what, fix = ("test data path", "set data.test_source to") if for_test else ("data path", "pass --data with")
        raise DataError(
            f"{what} '{spec}' does not exist; {fix} a CIFAR-10 folder/archive or an image folder root/<class>/<image>"
        )
    path = path.resolve()
    if path.is_file():
        if not path.name.endswith(_ARCHIVE_SUFFIXES):
            raise DataError(
                f"data path '{path}' is a file but not a .tar.gz archive; pass cifar-10-python.tar.gz, "
                "a CIFAR-10 folder or an image folder root/<class>/<image>"
            )
        return _load_cifar(path, cfg), "cifar10"
    cifar_source = cifar.find_cifar(path)
    if cifar_source is not None:
        return _load_cifar(cifar_source, cfg), "cifar10"
    return _load_folder(path, cfg), path.name


def _load_cifar(source: Path, cfg: DataConfig) -> RawSource:
    """A CIFAR batch folder or archive, through the cache (an archive's cache goes beside it)."""
    near_dir, tag = (source.parent, source.name) if source.is_file() else (source, "camssl")
    spot = CacheSpot(source, near_dir, tag, cfg.image_size, default_cache_dir(cfg.cache_dir))
    return spot.load_or_build(
        cache_key(cifar.key_parts(source, cfg.image_size)),
        lambda: cifar.read_cifar(source, cfg.image_size),
    )


def _load_folder(root: Path, cfg: DataConfig) -> RawSource:
    """An image folder, through the cache (kept in the folder itself)."""
    scan = scan_folder(root)
    spot = CacheSpot(root, root, "camssl", cfg.image_size, default_cache_dir(cfg.cache_dir))
    raw = spot.load_or_build(
        cache_key(scan.key_parts(cfg.image_size)),
        lambda: decode_folder(scan, cfg.image_size, cfg.skip_bad),
    )
    if raw.skipped and not cfg.skip_bad:  # a cache written with skip_bad=true
        raise unreadable_image_error(raw.skipped[0], raw.skip_reasons[0])
    return raw
