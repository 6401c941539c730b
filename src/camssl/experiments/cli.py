"""Command-line glue of ``camssl sweep`` and ``camssl table``."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from camssl.experiments.runner import run_sweep
from camssl.experiments.spec import plan_sweep
from camssl.experiments.tables import SELECTIONS, SweepResults, write_tables


class _IntermixedParser(argparse.ArgumentParser):
    """Lets ``section.key=value`` overrides come after options: ``sweep SPEC --out DIR data.source=X``.

    (A plain parser stops filling positionals at the first option after SPEC.)
    """

    _busy = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        if self._busy:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._busy = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._busy = False


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``camssl sweep SPEC --out DIR [--jobs N] [--dry-run] [section.key=value ...]``."""
    if type(p) is argparse.ArgumentParser:
        p.__class__ = _IntermixedParser
    p.add_argument("spec", help="sweep spec YAML (e.g. configs/table1-cpu.yaml)")
    p.add_argument("--out", required=True, help="sweep directory (one sub-directory per run); rerun to continue")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each with max(1, cores // jobs) threads [1]")
    p.add_argument("--only", action="append", default=[], metavar="GLOB",
                   help="run only the runs whose id matches, e.g. 'r0.5/*' or '*/s0' (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and each run's state; start nothing")
    p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value",
                   help="config changes for every run, e.g. data.source=/tmp/cifar")


def cmd_sweep(args: argparse.Namespace) -> int:
    """``camssl sweep``: 0 when every run finished, 1 when some failed (listed at the end)."""
    plan = plan_sweep(args.spec, args.overrides)
    command = shlex.join(
        ["camssl", "sweep", str(args.spec), "--out", str(args.out), "--jobs", str(args.jobs)]
        + [f"--only={o}" for o in args.only] + list(args.overrides)
    )
    try:
        failed = run_sweep(plan, args.out, jobs=args.jobs, only=args.only, dry_run=args.dry_run, command=command)
    except KeyboardInterrupt:
        return 130
    return 1 if failed else 0


def add_table_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``camssl table SWEEP_DIR [--select final|best-val] [--out DIR]``."""
    p.add_argument("sweep_dir", help="the --out directory of a camssl sweep")
    p.add_argument("--select", choices=SELECTIONS, default="final",
                   help="model-selection rule: final epoch, or the best-validation epoch [final]")
    p.add_argument("--out", default=None, help="where to write results.md/.csv and figure3.png [SWEEP_DIR]")


def cmd_table(args: argparse.Namespace) -> int:
    """``camssl table``: write the tables and the figure of a sweep."""
    paths = write_tables(args.sweep_dir, args.out, args.select)
    sr_note = SweepResults.load(args.sweep_dir)
    print(f"{len(sr_note.results)} of {len(sr_note.plan['runs'])} runs finished")
    for p in paths:
        print(f"wrote {p}")
    return 0
