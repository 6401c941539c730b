"""What machine this is: CPU model, usable cores, and how fast it trains (for run headers, sweeps and benchmarks)."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, or what ``platform`` knows elsewhere."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask; all CPUs where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def plain_step_seconds(model: torch.nn.Module, batch: int, image_size: tuple[int, int], device: torch.device,
                       budget_s: float = 1.0, max_steps: int = 5) -> float:
    """Median wall time of a plain training step (forward, cross-entropy, backward) of ``model`` on this machine.

    Runs on a copy of the model with random inputs from its own generator, so the model,
    its BatchNorm statistics and every random stream of the run are untouched. One
    warm-up step, then up to ``max_steps`` timed steps within about ``budget_s`` seconds.
    """
    import copy
    import time

    import torch
    import torch.nn.functional as F

    probe = copy.deepcopy(model).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, *image_size, generator=g).to(device)
    y = torch.randint(0, 2, (batch,), generator=g).to(device)
    times: list[float] = []
    start = time.perf_counter()
    for i in range(max_steps + 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(probe(x).float(), y)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - t0)
        if i and time.perf_counter() - start > budget_s:
            break
    return sorted(times)[len(times) // 2]
