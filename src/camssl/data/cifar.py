"""CIFAR-10 in its official python format.

Accepted: the ``cifar-10-batches-py`` folder, a folder containing it (or containing
``cifar-10-python.tar.gz``), or the ``cifar-10-python.tar.gz`` archive itself, which is
read with :mod:`tarfile` without unpacking. The folder holds ``data_batch_1`` ..
``data_batch_5``, ``test_batch`` (pickled dicts: ``b"data"`` N×3072 ``uint8`` in
channel-major order, ``b"labels"``) and ``batches.meta`` (``b"label_names"``).
"""

from __future__ import annotations

import pickle
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
import torch

from camssl.data.images import ImageSet, RawSource, resize_array, stack_hwc
from camssl.errors import DataError

BATCH_DIR = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
REQUIRED_FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)

# The pickles are the official CIFAR-10 files (trusted data, read as the dataset's authors
# document: pickle.load(f, encoding="bytes")). As a guard against a foreign file passed by
# mistake, only the globals those files need (numpy array reconstruction) may be loaded.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def find_cifar(folder: Path) -> Path | None:
    """The CIFAR batch folder or archive that ``folder`` stands for, or None if it is not CIFAR."""
    if any((folder / name).exists() for name in REQUIRED_FILES):
        return folder
    if (folder / BATCH_DIR).is_dir():
        return folder / BATCH_DIR
    if (folder / ARCHIVE_NAME).is_file():
        return folder / ARCHIVE_NAME
    return None


def key_parts(source: Path, image_size: int) -> list[str]:
    """What a decoded CIFAR source depends on: path, size and its files' sizes and mtimes."""
    files = [source] if source.is_file() else [source / name for name in REQUIRED_FILES if (source / name).is_file()]
    parts = [f"cifar:{source}", f"size:{image_size}"]
    for path in files:
        stat = path.stat()
        parts.append(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}")
    return parts


def read_cifar(source: Path, image_size: int) -> RawSource:
    """Read a batch folder or a ``.tar.gz`` archive (as returned by :func:`find_cifar`)."""
    batches = _read_archive(source) if source.is_file() else _read_folder(source)
    meta = batches[META_FILE]
    try:
        classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"'{source}': {META_FILE} has no label_names; it is not a CIFAR-10 batches.meta") from exc
    train_x, train_y = zip(*(_batch_arrays(batches[name], name, source, len(classes)) for name in TRAIN_FILES), strict=True)
    test_x, test_y = _batch_arrays(batches[TEST_FILE], TEST_FILE, source, len(classes))
    return RawSource(
        train=_image_set(np.concatenate(train_x), np.concatenate(train_y), classes, image_size),
        test=_image_set(test_x, test_y, classes, image_size),
    )


def _unpickle(stream: IO[bytes], name: str, source: Path) -> Any:
    try:
        return _CifarUnpickler(stream, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, zlib.error, OSError) as exc:
        raise DataError(
            f"'{source}': {name} is not a readable CIFAR-10 python batch ({exc}); "
            "re-download cifar-10-python.tar.gz"
        ) from exc


def _read_folder(folder: Path) -> dict[str, Any]:
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 folder '{folder}' is missing {', '.join(missing)}; "
            "re-download or re-extract cifar-10-python.tar.gz"
        )
    batches = {}
    for name in REQUIRED_FILES:
        with open(folder / name, "rb") as stream:
            batches[name] = _unpickle(stream, name, folder)
    return batches


def _read_archive(archive: Path) -> dict[str, Any]:
    batches: dict[str, Any] = {}
    try:
        # Stream the members in order (no seeking back in the gzip stream).
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                member_path = PurePosixPath(member.name)
                if member.isfile() and member_path.name in REQUIRED_FILES and member_path.parent.name == BATCH_DIR:
                    stream = tar.extractfile(member)
                    assert stream is not None  # a regular file always has a stream
                    batches[member_path.name] = _unpickle(stream, member_path.name, archive)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"'{archive}' is not a readable .tar.gz archive ({exc}); re-download cifar-10-python.tar.gz, "
            "or unpack an image archive and pass the folder"
        ) from exc
    missing = [name for name in REQUIRED_FILES if name not in batches]
    if missing:
        raise DataError(
            f"archive '{archive}' is missing {', '.join(f'{BATCH_DIR}/{m}' for m in missing)}; "
            "pass the official cifar-10-python.tar.gz, or unpack an image archive and pass the folder"
        )
    return batches


def _batch_arrays(batch: Any, name: str, source: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(N×32×32×3 uint8, N int64) from one batch dict, checked."""
    try:
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"'{source}': {name} has no data/labels; it is not a CIFAR-10 batch") from exc
    if (
        data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
        or labels.shape != (data.shape[0],)
        or (labels.size and (labels.min() < 0 or labels.max() >= num_classes))
    ):
        raise DataError(
            f"'{source}': {name} does not hold N×3072 uint8 images with labels below {num_classes}; "
            "it is not a CIFAR-10 batch"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _image_set(hwc: np.ndarray, labels: np.ndarray, classes: list[str], image_size: int) -> ImageSet:
    if image_size != 32:
        hwc = np.stack([resize_array(img, image_size) for img in hwc])
    return ImageSet(stack_hwc(hwc), torch.from_numpy(labels), list(classes))
