"""What machine this is: CPU model, usable cores, native bf16, training speed (run headers, sweeps, benchmarks)."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_CPUINFO = Path("/proc/cpuinfo")
# x86 flags of instructions that compute in bf16 natively (AVX512-BF16; AMX tiles with AMX-BF16).
# Without them oneDNN still runs bf16, by converting to fp32 (emulated, often slower than fp32).
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


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


def _cpu_flags(cpuinfo: str | None) -> set[str] | None:
    """Flags every processor in ``cpuinfo`` (default: /proc/cpuinfo) reports; None if unreadable or none listed."""
    if cpuinfo is None:
        try:
            cpuinfo = _CPUINFO.read_text()
        except OSError:
            return None
    per_cpu = [set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines()
               if line.split(":", 1)[0].strip() == "flags" and ":" in line]
    return set.intersection(*per_cpu) if per_cpu else None


def _native_bf16_flags(flags: set[str]) -> list[str]:
    found = [flag for flag in _BF16_FLAGS if flag in flags]
    if "amx_bf16" in found and "amx_tile" not in flags:
        found.remove("amx_bf16")
    return found


def native_bf16_cpu(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively: AVX512-BF16 or AMX-BF16 (with AMX tiles) in its cpuinfo flags.

    Args:
        cpuinfo: the text of /proc/cpuinfo to judge (for tests); None reads /proc/cpuinfo.

    Returns:
        True only where every listed processor has ``avx512_bf16``, or ``amx_bf16`` and
        ``amx_tile``; False elsewhere, including where bf16 would be emulated (AVX-512 or AVX2
        without those flags), and where /proc/cpuinfo is unreadable or has no x86 ``flags``
        (non-Linux, ARM: camssl's choice, conservative).
    """
    flags = _cpu_flags(cpuinfo)
    return flags is not None and bool(_native_bf16_flags(flags))


def cpu_bf16_reason(cpuinfo: str | None = None) -> str:
    """One phrase for the run header: the CPU precision :func:`native_bf16_cpu` implies, and why.

    E.g. ``"bf16 autocast (avx512_bf16)"`` or
    ``"fp32 (no native bf16: no avx512_bf16/amx_bf16 in /proc/cpuinfo)"``.
    """
    flags = _cpu_flags(cpuinfo)
    if flags is None:
        return "fp32 (no native bf16: no CPU flags in /proc/cpuinfo, or it is unreadable)"
    found = _native_bf16_flags(flags)
    if found:
        return f"bf16 autocast ({', '.join(found)})"
    return "fp32 (no native bf16: no avx512_bf16/amx_bf16 in /proc/cpuinfo)"


YARDSTICK = "ResNet-18 width 0.5 (batch 64, fp32)"  # the step the issues size CPU budgets by (450 ms on the reference machine)
REFERENCE_YARDSTICK_MS = 450.0


@functools.cache
def yardstick_ms() -> float | None:
    """This machine's time (ms) of a plain fp32 training step of ResNet-18 width 0.5 at batch 64 on the CPU.

    camssl's CPU budgets are stated for a machine where this takes 450 ms; a time measured
    here scales by ``450 / yardstick_ms()``. Measured once per process (a few training steps);
    ``CAMSSL_YARDSTICK=0`` in the environment skips it (None), e.g. in the test suite.
    """
    if os.environ.get("CAMSSL_YARDSTICK", "1") == "0":
        return None
    import torch

    from camssl.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("resnet18", 10, width=0.5)
    return 1000 * plain_step_seconds(model, 64, (32, 32), torch.device("cpu"), budget_s=1.5, max_steps=3)


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
