"""Training-step cost per method and Grad-CAM target layer; writes docs/benchmarks.md.

    python benchmarks/step_cost.py            # the full benchmark (takes a while on a small CPU)
    python benchmarks/step_cost.py --quick    # a tiny smoke run
    python benchmarks/step_cost.py --help

A thin wrapper around :mod:`camssl.bench`, the same entry point as ``camssl bench``.
"""

import sys

from camssl.bench import main

if __name__ == "__main__":
    sys.exit(main(prog="python benchmarks/step_cost.py"))
