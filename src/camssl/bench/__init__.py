"""``camssl bench``: what one training step costs, per method and Grad-CAM target layer.

The benchmark times the library's real training step (what :meth:`Trainer.train_epoch
<camssl.train.Trainer.train_epoch>` does per step: ``method.step`` under autocast,
``zero_grad``, ``backward``, the SGD step) for

* ``supervised`` and ``pseudo_label``;
* ``gradcam`` at each target layer in ``full`` and ``detach-weights`` gradient mode;
* the *reference*: the same Grad-CAM consistency objective built the way a user would
  without camssl, with captum's ``LayerGradCam(..., grad_kwargs={"create_graph": True})``
  on both views (its own forward passes included);
* the views alone (augmentation of one ``pseudo_label`` step),

on ResNet-18 (CIFAR stem) at the ``cpu`` preset's width and at full width. All step types
of one width are timed **in one process, interleaved** (A B C ... A B C ..., the start of
the cycle rotating every repetition) after a warm-up, and the table reports medians and
ratios of medians: on a shared, noisy machine ratios measured this way stay meaningful
while absolute times drift with the load.

Peak memory is measured per step type on one extra step: on CUDA with
``torch.cuda.max_memory_allocated``; on CPU from the allocation events of torch's CPU
allocator recorded by ``torch.profiler`` (``profile_memory=True``): the running total of
bytes allocated minus freed during the step, whose maximum is the peak of tensor memory
above what was live when the step started (parameters, optimizer state, the data and
the previous step's gradients). That same profiled step gives the time breakdown
(views, forward, Grad-CAM gradients, first- and second-order backward, optimizer) used
to explain any missed target.

A "what we tried" part measures, interleaved as well, the memory layout
(contiguous vs channels_last), intra-op thread counts and ``torch.compile``.

Entry points: ``camssl bench [options]`` (see :func:`add_bench_arguments`) and
``python benchmarks/step_cost.py [options]``; both write ``docs/benchmarks.md``
(atomically) and print the tables.

Modules: :mod:`.options` (defaults and flags), :mod:`.rig` (model, batch, step types),
:mod:`.measure` (interleaved timing, profiles, the FLOP model), :mod:`.trials` (what we
tried), :mod:`.run` (the whole run), :mod:`.results`, :mod:`.report` (targets and the
markdown), :mod:`.cli` (entry points).
"""

from __future__ import annotations

from camssl.bench.cli import cmd_bench, main
from camssl.bench.options import (
    DEFAULT_OUT,
    LAYERS,
    MODES,
    BenchOptions,
    add_bench_arguments,
    options_from_args,
)
from camssl.bench.output import as_json, write_report
from camssl.bench.report import render
from camssl.bench.results import BenchResult
from camssl.bench.run import captum_status, run_bench

__all__ = [
    "DEFAULT_OUT",
    "LAYERS",
    "MODES",
    "BenchOptions",
    "BenchResult",
    "add_bench_arguments",
    "as_json",
    "captum_status",
    "cmd_bench",
    "main",
    "options_from_args",
    "render",
    "run_bench",
    "write_report",
]
