"""What a benchmark run measured, and the number formats the reports share."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from camssl.bench.measure import StepProfile, Timing
from camssl.bench.options import BenchOptions
from camssl.bench.rig import StepType


@dataclass
class WidthResult:
    width: float
    channels_last: bool
    types: list[StepType]
    timings: dict[str, Timing]
    profiles: dict[str, StepProfile]
    fractions: dict[str, float]


@dataclass
class Experiment:
    title: str
    rows: list[tuple[str, ...]]
    header: tuple[str, ...]
    verdict: str = ""
    note: str = ""
    winner: int | None = None  # threads experiment: the faster thread count


@dataclass
class BenchResult:
    options: BenchOptions
    device: torch.device
    machine: dict[str, str]
    widths: list[WidthResult]
    experiments: list[Experiment]
    target_width: float
    preset_width: float | None
    data: str
    captum: str | None  # None when captum is importable, else why not
    seconds: float = 0.0
    pending: bool = False  # experiments still to run (an intermediate report)




def ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def mib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.1f}"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:240]
