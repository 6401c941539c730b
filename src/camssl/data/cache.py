"""Decode-once cache: a decoded source saved as ``uint8`` tensors with ``torch.save``.

A cache file is named by a key that hashes everything its content depends on (the resolved
source path, the image size and, for every input file, its relative path, size and
modification time), so any change to the source makes a new key and the next load decodes
afresh. It goes next to the source when that directory is writable, else into the cache
directory (``data.cache_dir``, else ``$CAMSSL_CACHE``, else ``~/.cache/camssl``). Files are
written atomically; older caches of the same source and image size are removed after a new
one is written. A cache that cannot be read (truncated, corrupt, another format version) is
ignored and rebuilt. Only tensors, strings, lists and ints are stored, so loading uses
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from camssl.data.images import ImageSet, RawSource
from camssl.io import atomic_path

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_SUFFIX = ".camssl-cache.pt"


def default_cache_dir(configured: str | None) -> Path:
    """The fallback cache directory: ``configured``, else ``$CAMSSL_CACHE``, else ``~/.cache/camssl``."""
    chosen = configured or os.environ.get("CAMSSL_CACHE")
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "camssl"


def cache_key(parts: Iterable[str]) -> str:
    """A short hex digest of ``parts`` (each part is hashed with a separator after it)."""
    digest = hashlib.sha256(f"camssl-cache-v{CACHE_VERSION}\n".encode())
    for part in parts:
        digest.update(part.encode("utf-8", "surrogateescape"))
        digest.update(b"\n")
    return digest.hexdigest()[:20]


@dataclass(frozen=True)
class CacheSpot:
    """Where the caches of one source live.

    ``near_dir`` is the preferred directory (the source folder itself, or the folder holding
    an archive); ``tag`` tells this source's caches apart from others in ``near_dir``.
    """

    source: Path  # resolved source path
    near_dir: Path
    tag: str
    image_size: int
    fallback_dir: Path

    def _prefixes(self) -> tuple[tuple[Path, str], tuple[Path, str]]:
        path_hash = hashlib.sha256(str(self.source).encode("utf-8", "surrogateescape")).hexdigest()[:8]
        safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", self.source.name) or "source"
        return (
            (self.near_dir, f".{self.tag}-s{self.image_size}-"),
            (self.fallback_dir, f"{safe_name}-{path_hash}-s{self.image_size}-"),
        )

    def paths(self, key: str) -> list[Path]:
        """Candidate cache files for ``key``, preferred first."""
        return [folder / f"{prefix}{key}{CACHE_SUFFIX}" for folder, prefix in self._prefixes()]

    def load_or_build(self, key: str, build: Callable[[], RawSource]) -> RawSource:
        """Return the cached decode for ``key``, or ``build()`` it and cache the result."""
        for path in self.paths(key):
            if path.is_file():
                try:
                    return _from_state(torch.load(path, map_location="cpu", weights_only=True))
                except Exception as exc:  # noqa: BLE001 - any unreadable cache is simply rebuilt
                    log.warning("ignoring unreadable cache %s (%s); decoding again", path, exc)
        raw = build()
        self._save(key, raw)
        return raw

    def _save(self, key: str, raw: RawSource) -> None:
        state = _to_state(raw)
        for (folder, prefix), path in zip(self._prefixes(), self.paths(key), strict=True):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                if not _writable(folder):
                    continue
                with atomic_path(path) as tmp:
                    torch.save(state, tmp)
            except (OSError, RuntimeError) as exc:  # torch.save reports write failures as RuntimeError
                log.warning("could not write cache %s (%s)", path, exc)
                continue
            for old in glob.glob(glob.escape(str(folder / prefix)) + "*" + CACHE_SUFFIX):
                if Path(old) != path:
                    Path(old).unlink(missing_ok=True)
            return
        log.warning("no writable cache location for %s; it will be decoded again next time", self.source)


def _writable(folder: Path) -> bool:
    """Whether this process may create files in ``folder``."""
    return os.access(folder, os.W_OK)


def _to_state(raw: RawSource) -> dict[str, Any]:
    state: dict[str, Any] = {
        "version": CACHE_VERSION,
        "classes": list(raw.train.classes),
        "train_images": raw.train.images,
        "train_labels": raw.train.labels,
        "skipped": list(raw.skipped),
        "skip_reasons": list(raw.skip_reasons),
    }
    if raw.test is not None:
        state["test_images"] = raw.test.images
        state["test_labels"] = raw.test.labels
    return state


def _from_state(state: object) -> RawSource:
    """Rebuild a :class:`RawSource`; ``ValueError`` if ``state`` is not a cache of this version."""
    if not isinstance(state, dict) or state.get("version") != CACHE_VERSION:
        raise ValueError("not a camssl cache of this version")
    classes = state["classes"]
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise ValueError("bad class list")

    def image_set(prefix: str) -> ImageSet:
        images, labels = state[f"{prefix}_images"], state[f"{prefix}_labels"]
        if not (
            isinstance(images, torch.Tensor)
            and isinstance(labels, torch.Tensor)
            and images.dtype == torch.uint8
            and labels.dtype == torch.int64
            and images.dim() == 4
            and labels.dim() == 1
            and images.shape[0] == labels.shape[0]
        ):
            raise ValueError(f"bad {prefix} tensors")
        return ImageSet(images.contiguous(), labels, list(classes))

    return RawSource(
        train=image_set("train"),
        test=image_set("test") if "test_images" in state else None,
        skipped=list(state["skipped"]),
        skip_reasons=list(state["skip_reasons"]),
    )
