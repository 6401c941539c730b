"""Atomic file writing: a kill at any moment never leaves a truncated file behind."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; move it onto ``dest`` when the block succeeds.

    The caller creates and writes the temporary path (it does not exist yet, so unless the
    caller says otherwise it gets the usual umask permissions). When the block succeeds the
    file is flushed to disk (fsync) and replaces ``dest`` atomically (same directory, so same
    filesystem); on any exception the temporary file is removed and ``dest`` is left
    untouched. The temporary name is ``.<dest name>.<pid>-<random>.tmp``: hidden, and found
    by a ``.<dest name>.*.tmp`` glob (the trainer removes such leftovers of a kill).
    The parent folder must exist.
    """
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def _write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Create ``path``'s parent folders and write the file atomically through ``write(file)``.

    The file is created owner-only (0600), as these writes always have been.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with os.fdopen(os.open(tmp, _CREATE, 0o600), "wb") as f:
            write(f)


def write_text(path: Path, text: str) -> None:
    _write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_bytes(path: Path, data: bytes) -> None:
    _write(path, lambda f: f.write(data))


def torch_save(path: Path, obj: Any) -> None:
    _write(path, lambda f: torch.save(obj, f))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a torn last line (from a kill mid-write) is ignored."""
    out = []
    if not Path(path).exists():
        return out
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def kept_section(path: Path, begin: str, end: str) -> str | None:
    """The text between the markers ``begin`` and ``end`` of an existing file, if any.

    Generated reports (docs/benchmarks.md, a sweep's results.md) carry hand-written parts
    between such markers; regenerating the file keeps them.
    """
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    if begin in text and end in text.split(begin, 1)[1]:
        inner = text.split(begin, 1)[1].split(end, 1)[0]
        return inner.strip("\n") or None
    return None
