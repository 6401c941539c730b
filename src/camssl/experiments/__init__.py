"""Sweeps and result tables: ``camssl sweep SPEC --out DIR`` and ``camssl table DIR``.

A **sweep spec** is a config file (``base:`` plus any config sections, applied to every
run) with one extra section, ``sweep:``, that spans the grid::

    base: cpu                       # preset or YAML path (relative to this file)
    model: {width: 0.25}            # config changes for every run
    optim: {epochs: 8}
    sweep:
      seeds: [0, 1, 2]              # or a count: 3 means [0, 1, 2]
      ratios: [0.5, 1.0, 2.0]       # split.ratio of every grid setting
      settings:                     # name: config changes (and role); each runs at every ratio and seed
        gradcam-layer3: {method.name: gradcam, method.gradcam.layers: [layer3], role: method}
        pseudo_label: {method.name: pseudo_label, role: ablation}
      baseline:                     # name: config changes; runs once per seed (no ratio)
        supervised: {method.name: supervised, split.ratio: 0}

A run's config is: the spec's base ← the spec's sections ← command-line overrides ←
the setting's changes ← the grid (``split.ratio``, and ``seed`` = ``split.seed`` = the
seed). Runs that share a seed therefore share the split: the labeled and validation sets
are drawn before the unlabeled set (:mod:`camssl.data.splits`), so they do not depend on
the ratio, and every comparison in the tables is paired by seed. The text ``{seed}`` in a
string value becomes the run's seed (``method.teacher: sweeps/teachers/baseline/teacher/s{seed}``:
a distillation teacher trained on the same split).

Each run has its own directory (``r0.5/gradcam-layer3/s0``, ``baseline/supervised/s0``)
and runs in its own ``python -m camssl train --resume RUN_DIR`` subprocess (the runner
writes the run's config.yaml first), so a crash or a kill stays isolated and a later
sweep continues it from its last checkpoint; runs with a result.json are skipped. The
plan is written to ``sweep.json``; each run's output to ``RUN_DIR/train.log``.

``--launcher slurm`` submits the same runs as one Slurm job array through submitit
instead (:mod:`.slurm`; options in the spec's ``launcher:`` section, :mod:`.slurm_options`),
and ``camssl sweep DIR --status`` shows every run's state for either launcher (:mod:`.status`).

The modules: :mod:`.spec` (specs and plans), :mod:`.runner` (running a plan), :mod:`.slurm`,
:mod:`.slurm_job` (what a Slurm job runs), :mod:`.slurm_options`, :mod:`.status`, :mod:`.stats`,
:mod:`.tables` (``camssl table``), :mod:`.paper` (the paper's numbers), :mod:`.cli`.

``camssl table DIR`` reads the plan and the runs' result.json files and writes
``results.md``, ``results.csv``, ``runs.csv`` and ``figure3.png``: the paper's Table I,
Table II and Figure 3 with mean ± std over seeds, paired differences with 95% Student-t
confidence intervals, validation and test accuracy, and the paper's own numbers beside
ours (labelled as the paper's: a different protocol).
"""

from __future__ import annotations

from camssl.experiments.cli import (
    add_sweep_arguments,
    add_table_arguments,
    cmd_sweep,
    cmd_table,
)
from camssl.experiments.runner import run_state, run_sweep
from camssl.experiments.slurm import submit_sweep
from camssl.experiments.slurm_options import SlurmOptions, plan_with_launcher, slurm_options
from camssl.experiments.spec import (
    Plan,
    Run,
    format_ratio,
    load_spec,
    plan_sweep,
    spec_path,
)
from camssl.experiments.stats import PairedDiff, Stat, paired_diff, t_quantile_975
from camssl.experiments.status import print_status, sweep_status
from camssl.experiments.tables import (
    READING_BEGIN,
    READING_END,
    SELECTIONS,
    SweepResults,
    build_tables,
    figure3,
    write_tables,
)

__all__ = [
    "READING_BEGIN",
    "READING_END",
    "SELECTIONS",
    "PairedDiff",
    "Plan",
    "Run",
    "SlurmOptions",
    "Stat",
    "SweepResults",
    "add_sweep_arguments",
    "add_table_arguments",
    "build_tables",
    "cmd_sweep",
    "cmd_table",
    "figure3",
    "format_ratio",
    "load_spec",
    "paired_diff",
    "plan_sweep",
    "plan_with_launcher",
    "print_status",
    "run_state",
    "run_sweep",
    "slurm_options",
    "spec_path",
    "submit_sweep",
    "sweep_status",
    "t_quantile_975",
    "write_tables",
]
