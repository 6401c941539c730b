"""Image-folder sources: ``root/<class>/<image>`` or ``root/train/<class>/...`` + ``root/test/...``.

Rules:

* Class folders are the non-hidden subfolders of the class root, sorted by name; their
  position in that order is the label id. Images may sit in nested folders of a class.
* Images are files ending in .jpg/.jpeg/.png/.bmp/.webp (any case); other files (.txt,
  .DS_Store, ...) and hidden files or folders (names starting with ``.``, e.g. the
  ``._x.jpg`` files macOS leaves) are ignored. Files are sorted by path for determinism.
* If ``root/train`` exists it holds the training images, and ``root/test`` (or else
  ``root/val``), when present, the test images; both must have the same class folders.
* Images are converted and resized as described in :mod:`camssl.data.images`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import camssl.data.images as images
from camssl.data.images import DECODE_ERRORS, IMAGE_EXTENSIONS, ImageSet, RawSource
from camssl.errors import DataError

_EXTENSIONS_TEXT = "/".join(sorted(IMAGE_EXTENSIONS))


@dataclass(frozen=True)
class ImageFile:
    path: str
    size: int
    mtime_ns: int
    label: int


@dataclass(frozen=True)
class FolderPart:
    """The scanned files of one class root (train or test part)."""

    class_root: Path
    classes: list[str]
    files: list[ImageFile]


@dataclass(frozen=True)
class FolderScan:
    root: Path
    train: FolderPart
    test: FolderPart | None

    def key_parts(self, image_size: int) -> list[str]:
        """What the decoded content depends on: path, size and every file's (path, size, mtime)."""
        parts = [f"folder:{self.root}", f"size:{image_size}"]
        for part in (self.train, self.test):
            if part is None:
                continue
            parts.append(f"part:{part.class_root.relative_to(self.root)}")
            prefix = len(str(self.root)) + 1
            parts.extend(f"{f.path[prefix:]}\0{f.size}\0{f.mtime_ns}" for f in part.files)
        return parts


def scan_folder(root: Path) -> FolderScan:
    """Find the layout, classes and image files under ``root`` (only ``stat`` calls, no decoding)."""
    train_root = root / "train"
    if not train_root.is_dir():
        return FolderScan(root, _scan_part(root), None)
    test_root = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    train = _scan_part(train_root)
    if test_root is None:
        return FolderScan(root, train, None)
    test = _scan_part(test_root)
    check_same_classes(train.classes, test.classes, test_root)
    return FolderScan(root, train, test)


def check_same_classes(train_classes: list[str], test_classes: list[str], test_path: Path | str) -> None:
    """Raise a :class:`DataError` naming the difference when the test classes differ from train's."""
    if test_classes == train_classes:
        return
    missing = sorted(set(train_classes) - set(test_classes))
    extra = sorted(set(test_classes) - set(train_classes))
    raise DataError(
        f"test data '{test_path}' has classes that differ from the training data "
        f"(missing: {missing}, extra: {extra}); use the same class folders for train and test"
    )


def decode_folder(scan: FolderScan, image_size: int, skip_bad: bool) -> RawSource:
    """Decode every scanned image (the slow step that the cache saves)."""
    train, skipped, reasons = _decode_part(scan.train, image_size, skip_bad)
    test = None
    if scan.test is not None:
        test, test_skipped, test_reasons = _decode_part(scan.test, image_size, skip_bad)
        skipped += test_skipped
        reasons += test_reasons
    return RawSource(train, test, skipped, reasons)


def _scan_part(class_root: Path) -> FolderPart:
    with os.scandir(class_root) as entries:
        classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(
            f"no class folders in '{class_root}'; expected an image folder root/<class>/<image> "
            "with one subfolder per class"
        )
    if len(classes) < 2:
        raise DataError(
            f"'{class_root}' has only one class folder ({classes[0]!r}); "
            "classification needs at least 2 class subfolders"
        )
    files: list[ImageFile] = []
    for label, name in enumerate(classes):
        found = _scan_images(class_root / name)
        if not found:
            raise DataError(
                f"class folder '{class_root / name}' has no images ({_EXTENSIONS_TEXT}); "
                "add images to it or remove it"
            )
        files.extend(ImageFile(path, size, mtime, label) for path, size, mtime in found)
    return FolderPart(class_root, classes, files)


def _scan_images(folder: Path) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of the image files under ``folder``, sorted by path.

    Nested folders are searched; symlinked folders inside a class are not followed (no loops).
    """
    found: list[tuple[str, int, int]] = []
    pending = [str(folder)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file():
                    stat = entry.stat()
                    found.append((entry.path, stat.st_size, stat.st_mtime_ns))
    found.sort()
    return found


def _decode_part(part: FolderPart, image_size: int, skip_bad: bool) -> tuple[ImageSet, list[str], list[str]]:
    out = np.empty((len(part.files), image_size, image_size, 3), dtype=np.uint8)
    labels = np.empty(len(part.files), dtype=np.int64)
    skipped: list[str] = []
    reasons: list[str] = []
    kept = 0
    desc = f"decoding {part.class_root.name}"
    for item in tqdm(part.files, desc=desc, unit="img", disable=None, leave=False, mininterval=1.0):
        try:
            out[kept] = images.decode_image(item.path, image_size)
        except DECODE_ERRORS as exc:
            if not skip_bad:
                raise images.unreadable_image_error(item.path, str(exc)) from exc
            skipped.append(item.path)
            reasons.append(" ".join(str(exc).split()))
            continue
        labels[kept] = item.label
        kept += 1
    counts = np.bincount(labels[:kept], minlength=len(part.classes))
    for name, count in zip(part.classes, counts, strict=True):
        if count == 0:
            raise DataError(
                f"class folder '{part.class_root / name}' has no readable images (all were skipped "
                "as unreadable); add readable images to it or remove it"
            )
    return (
        ImageSet(images.stack_hwc(out[:kept]), torch.from_numpy(labels[:kept].copy()), list(part.classes)),
        skipped,
        reasons,
    )
