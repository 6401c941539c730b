"""Entry points: ``camssl bench`` and ``python benchmarks/step_cost.py``."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from camssl.bench.options import add_bench_arguments, options_from_args
from camssl.bench.output import write_report
from camssl.bench.report import console_table
from camssl.bench.run import run_bench
from camssl.errors import UserError


def add_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", parents=parents, help="training-step cost per method and layer (docs/benchmarks.md)")
    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """``camssl bench``: run the benchmark, print the tables and write the markdown file."""
    o = options_from_args(args, command=getattr(args, "bench_command", None))
    res = run_bench(o, checkpoint=write_report)
    print(console_table(res))
    path = write_report(res)
    print(f"\nwrote {path}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "camssl bench") -> int:
    """Stand-alone entry (``python benchmarks/step_cost.py``), with camssl's one-line errors."""
    parser = argparse.ArgumentParser(prog=prog, description="Training-step cost per method and Grad-CAM layer.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    args.bench_command = " ".join([prog, *[shlex.quote(a) for a in given]])
    try:
        return cmd_bench(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
