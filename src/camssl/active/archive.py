"""A finished active-learning run kept in the repository: its small files, enough to rebuild its curves.

``camssl active ... --archive docs/runs/NAME/<strategy>-s<seed>`` copies, once the run is
finished, each cycle's ``config.yaml``, ``split.json``, ``metrics.jsonl`` and ``result.json``
(no checkpoints, the same files a sweep archives, :mod:`camssl.experiments.archive`) into
``DEST/cycle_<c>/`` and then ``active.json`` into ``DEST``; ``camssl active-table`` reads
``active.json`` only, so ``camssl active-table docs/runs/NAME`` rebuilds the curves and the
diagnostics on a machine where the run's folder is gone. ``active.json`` is written last: a
copy cut short leaves no run that the table would read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from camssl import io
from camssl.active.state import STATE_FILE, ActiveState
from camssl.errors import UserError
from camssl.experiments.archive import archive_run


def check_archive(dest: Path, out: Path, strategy: str, seed: int) -> None:
    """Before the run: ``dest`` is not the run's own folder and holds no other run (another strategy or seed)."""
    dest_abs, out_abs = dest.resolve(), out.resolve()
    if dest_abs == out_abs or out_abs in dest_abs.parents:
        raise UserError(f"--archive '{dest}' is inside the run's --out '{out}'; give a folder outside it, "
                        "e.g. docs/runs/NAME/STRATEGY-sSEED")
    if dest.exists() and not dest.is_dir():
        raise UserError(f"--archive '{dest}' is a file; give a folder")
    if (dest / STATE_FILE).exists():
        held = ActiveState.load(dest)
        other = (held.active["strategy"], int(held.train_config["seed"]))
        if other != (strategy, seed):
            raise UserError(f"--archive '{dest}' already holds the run of strategy {other[0]} with seed {other[1]}, "
                            f"not {strategy} with seed {seed}; give another folder, e.g. .../{strategy}-s{seed}")


def archive_active(out: Path, dest: Path) -> list[Path]:
    """Copy the finished run in ``out`` into ``dest`` (see the module docstring); returns the cycle folders written."""
    state = ActiveState.load(out)
    if not state.finished:
        raise UserError(f"'{out}' is not finished; only a finished run is archived (camssl active --out {out} "
                        "--resume --archive DEST once it is)")
    written = []
    for c in state.cycles:
        folder = dest / f"cycle_{int(c['cycle'])}"
        archive_run(out / folder.name, folder)
        written.append(folder)
    with io.atomic_path(dest / STATE_FILE) as tmp:
        shutil.copyfile(out / STATE_FILE, tmp)
    return written
