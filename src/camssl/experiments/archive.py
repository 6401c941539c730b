"""A sweep's finished runs kept in the repository: their small files, enough to rebuild every table.

``camssl sweep SPEC --out DIR --archive docs/runs/NAME`` copies each run that finishes into
``docs/runs/NAME/<run id>/`` — ``config.yaml``, ``split.json``, ``metrics.jsonl`` and
``result.json``, no checkpoints — and keeps ``sweep.json`` (the plan and its sessions) there,
so ``camssl table docs/runs/NAME`` works on a machine where the sweep directory is gone, and
the sweep skips a run whose result is archived with the same config (a new machine
continues where the last one stopped).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from camssl import io
from camssl.config import RESULT_NEUTRAL_KEYS, TrainConfig, config_differences, from_dict, read_yaml, to_dict
from camssl.errors import ConfigError

ARCHIVED_FILES = ("config.yaml", "split.json", "metrics.jsonl", "result.json")


def is_archived(run_dir: Path, cfg: TrainConfig) -> bool:
    """Whether ``run_dir`` (in an archive) holds the finished run of ``cfg``."""
    if not all((run_dir / name).is_file() for name in ARCHIVED_FILES):
        return False
    try:
        saved = from_dict(TrainConfig, read_yaml(run_dir / "config.yaml"))
    except ConfigError:
        return False
    return not config_differences(to_dict(saved), to_dict(cfg), ignore=RESULT_NEUTRAL_KEYS)


def archive_run(run_dir: Path, dest: Path) -> None:
    """Copy a finished run's small files into ``dest`` (each written atomically; result.json last)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ARCHIVED_FILES:
        with io.atomic_path(dest / name) as tmp:
            shutil.copyfile(run_dir / name, tmp)


def write_record(archive: Path, record: dict[str, Any]) -> None:
    """The archive's sweep.json: the sweep's plan and sessions (what ``camssl table`` reads first)."""
    archive.mkdir(parents=True, exist_ok=True)
    io.write_json(archive / "sweep.json", record)
