"""Command-line glue of ``camssl sweep`` and ``camssl table``."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from camssl.errors import UserError
from camssl.experiments.runner import run_sweep
from camssl.experiments.slurm_options import plan_with_launcher, slurm_options
from camssl.experiments.tables import SELECTIONS, SweepResults, write_tables

# --launcher slurm options: flag -> help (values are checked by slurm_options, with one-line errors)
SLURM_FLAGS = {
    "--partition": "Slurm partition [the cluster's default]",
    "--time": "time limit per job: minutes or H:MM:SS; a longer run is requeued and continues [240]",
    "--gpus-per-run": "GPUs per run (more than 1: torchrun inside the job) [0]",
    "--cpus-per-run": "CPU cores per run [the cluster's default]",
    "--mem": "memory per run, e.g. 32G [the cluster's default]",
    "--array-parallelism": "at most N runs at once (the array's %%N) [no limit]",
    "--sbatch": "any other sbatch flag, e.g. --sbatch account=proj or --sbatch=--exclusive (repeatable)",
    "--setup": "a shell line to run in the job before the run, e.g. 'module load cuda' (repeatable)",
}
_LISTS = ("--sbatch", "--setup")
_METAVARS = dict(zip(SLURM_FLAGS, ["NAME", "MINUTES", "G", "N", "SIZE", "N", "FLAG=VALUE", "LINE"], strict=True))


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


def add_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """``camssl sweep`` and ``camssl table``."""
    p = sub.add_parser("sweep", parents=parents, help="run a grid of training runs (resumable; Table I of the paper)")
    add_sweep_arguments(p)
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("table", parents=parents, help="Table I/II, paired CIs and Figure 3 of a sweep")
    add_table_arguments(p)
    p.set_defaults(func=cmd_table)


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``camssl sweep SPEC --out DIR [--jobs N | --launcher slurm ...] [section.key=value ...]``
    and of ``camssl sweep DIR --status``."""
    if type(p) is argparse.ArgumentParser:
        p.__class__ = _IntermixedParser
    p.add_argument("spec", help="sweep spec YAML (e.g. configs/table1-cpu.yaml); with --status: the sweep directory")
    p.add_argument("--out", default=None, help="sweep directory (one sub-directory per run); rerun to continue")
    p.add_argument("--jobs", type=int, default=None, help="runs at a time, each with max(1, cores // jobs) threads [1]")
    p.add_argument("--only", action="append", default=[], metavar="GLOB",
                   help="run only the runs whose id matches, e.g. 'r0.5/*' or '*/s0' (repeatable)")
    p.add_argument("--archive", default=None, metavar="DIR",
                   help="keep each finished run's small files (config, split, metrics, result) in DIR, e.g. "
                        "docs/runs/NAME, and skip runs already archived there; camssl table DIR rebuilds the tables")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and each run's state (with --launcher slurm: the sbatch script); start nothing")
    p.add_argument("--status", action="store_true",
                   help="show each run's state (finished, running, queued, failed, not started) and exit")
    p.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help="local: a process pool on this machine; slurm: one job array through submitit [local]")
    g = p.add_argument_group("--launcher slurm (override the spec's launcher: section)")
    for flag, text in SLURM_FLAGS.items():
        g.add_argument(flag, action="append" if flag in _LISTS else "store", default=None, help=text,
                       metavar=_METAVARS[flag])
    g.add_argument("--wait", action="store_true", help="stay until the jobs end and list each run's outcome")
    p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value",
                   help="config changes for every run, e.g. data.source=/tmp/cifar")


def _slurm_cli(args: argparse.Namespace) -> dict[str, Any]:
    """The --launcher slurm options given on the command line (key -> value)."""
    return {f.lstrip("-").replace("-", "_"): getattr(args, f.lstrip("-").replace("-", "_"), None) for f in SLURM_FLAGS}


def _command(args: argparse.Namespace, cli: dict[str, Any]) -> str:
    words = ["camssl", "sweep", str(args.spec), "--out", str(args.out)]
    if args.launcher == "local":
        words += ["--jobs", str(args.jobs or 1)]
    else:
        words += ["--launcher", "slurm"]
        for key, value in cli.items():
            for v in value if isinstance(value, list) else [value] if value is not None else []:
                words.append(f"--{key.replace('_', '-')}={v}")
    words += [f"--archive={args.archive}"] if getattr(args, "archive", None) else []
    return shlex.join(words + [f"--only={o}" for o in args.only] + list(args.overrides))


def cmd_sweep(args: argparse.Namespace) -> int:
    """``camssl sweep``: 0 when every run finished (or was submitted), 1 when some failed (listed at the end)."""
    if args.status:
        from camssl.experiments.status import print_status

        print_status(Path(args.out or args.spec))
        return 0
    if not args.out:
        raise UserError("camssl sweep SPEC needs --out DIR (the sweep directory; rerun the command to continue)")
    cli = _slurm_cli(args)
    plan, section = plan_with_launcher(args.spec, args.overrides)
    opts = slurm_options(section, cli if args.launcher == "slurm" else {}, f"'{plan.spec}'")  # checked either way
    try:
        if args.launcher == "local":
            given = [f for f in SLURM_FLAGS if cli[f.lstrip("-").replace("-", "_")] is not None]
            given += ["--wait"] if args.wait else []
            if given:
                raise UserError(f"{given[0]} applies to --launcher slurm; add --launcher slurm or drop {given[0]}")
            if not args.dry_run:
                from camssl.experiments.slurm import refuse_if_active

                refuse_if_active(Path(args.out), [r.id for r in plan.runs])
            failed = run_sweep(plan, args.out, jobs=args.jobs or 1, only=args.only, dry_run=args.dry_run,
                               command=_command(args, cli), archive=args.archive)
        else:
            if args.jobs is not None:
                raise UserError("--jobs sets the runs at once on this machine; with --launcher slurm use "
                                "--array-parallelism N")
            if args.archive:
                raise UserError("--archive is for --launcher local; with slurm, archive afterwards by rerunning the "
                                "sweep locally with --archive (finished runs are only copied)")
            from camssl.experiments.slurm import submit_sweep

            failed = submit_sweep(plan, args.out, opts, only=args.only, dry_run=args.dry_run, wait=args.wait,
                                  command=_command(args, cli))
    except KeyboardInterrupt:
        return 130
    return 1 if failed else 0


def add_table_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``camssl table SWEEP_DIR [--select final|best-val] [--out DIR]``."""
    p.add_argument("sweep_dir", help="the --out directory of a camssl sweep")
    p.add_argument("--select", choices=SELECTIONS, default="final",
                   help="model-selection rule: final epoch, or the best-validation epoch [final]")
    p.add_argument("--out", default=None, help="where to write results.md/.csv and figure3.png [SWEEP_DIR]")
    p.add_argument("--name", default="results",
                   help="file name of the tables: NAME.md, NAME.csv, NAME-runs.csv... [results]")
    p.add_argument("--compare", action="append", default=None, metavar="SETTING:REFERENCE",
                   help="paired differences SETTING − REFERENCE, e.g. cam_loss:supervised (repeatable; default in a "
                        "sweep without Grad-CAM settings: every setting against the first baseline)")
    p.add_argument("--epochs", default=None, metavar="E,E,...",
                   help="also compare the validation accuracy after these epochs (convergence), e.g. 1,2,4")
    p.add_argument("--curves", default=None, metavar="KEY,KEY,...",
                   help="per-epoch curves of these logged metrics, e.g. imputed_acc,imputed_rows_pl_acc")
    p.add_argument("--time-curves", action="store_true",
                   help="validation accuracy against wall-clock minutes (scaled to the 450 ms yardstick machine)")


def cmd_table(args: argparse.Namespace) -> int:
    """``camssl table``: write the tables and the figure of a sweep."""
    paths = write_tables(args.sweep_dir, args.out, args.select, name=args.name, compare=args.compare,
                         epochs=args.epochs, curve_keys=[k for k in (args.curves or "").split(",") if k],
                         time_curves=args.time_curves)
    sr_note = SweepResults.load(args.sweep_dir)
    print(f"{len(sr_note.results)} of {len(sr_note.plan['runs'])} runs finished")
    for p in paths:
        print(f"wrote {p}")
    return 0
