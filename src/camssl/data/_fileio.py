"""Small file helpers shared by the data layer."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; move it onto ``dest`` when the block succeeds.

    The caller writes the temporary path (it does not exist yet, so it gets the usual
    umask permissions). On success it replaces ``dest`` atomically (same directory, so
    same filesystem); on any exception the temporary file is removed and ``dest`` is left
    untouched. The temporary name starts with a dot and ends in ``.tmp``.
    """
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
