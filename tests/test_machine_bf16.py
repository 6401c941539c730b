"""Tests for camssl.machine's native-bf16 detection from /proc/cpuinfo text."""

from __future__ import annotations

from pathlib import Path

import pytest

from camssl import machine
from camssl.machine import cpu_bf16_reason, native_bf16_cpu

BASE = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma"
AVX512 = BASE + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni"


def cpuinfo(*flag_lines: str) -> str:
    """/proc/cpuinfo text with one processor block per flags line."""
    blocks = [f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU\nflags\t\t: {flags}\n"
              for i, flags in enumerate(flag_lines)]
    return "\n".join(blocks)


@pytest.mark.parametrize(("flags", "native", "reason"), [
    (AVX512 + " avx512_bf16", True, "bf16 autocast (avx512_bf16)"),  # Zen 4, Cooper Lake
    (AVX512 + " avx512_bf16 amx_bf16 amx_tile amx_int8", True, "bf16 autocast (avx512_bf16, amx_bf16)"),  # SPR
    (BASE + " amx_bf16 amx_tile", True, "bf16 autocast (amx_bf16)"),
    (BASE + " amx_bf16", False, "fp32 (no native bf16"),  # AMX-BF16 without tiles is not usable
    (AVX512, False, "fp32 (no native bf16: no avx512_bf16/amx_bf16 in /proc/cpuinfo)"),  # Ice Lake: emulated
    (BASE, False, "fp32 (no native bf16"),  # AVX2 only: emulated
    (BASE + " avx512_bf16x xavx512_bf16", False, "fp32"),  # whole flags only, no substrings
])
def test_flags_decide(flags: str, native: bool, reason: str) -> None:
    text = cpuinfo(flags, flags)
    assert native_bf16_cpu(text) is native
    assert cpu_bf16_reason(text).startswith(reason)


def test_every_processor_must_have_the_flag() -> None:
    assert native_bf16_cpu(cpuinfo(AVX512 + " avx512_bf16", AVX512)) is False
    assert native_bf16_cpu(cpuinfo(AVX512 + " avx512_bf16", AVX512 + " avx512_bf16")) is True


@pytest.mark.parametrize("text", ["", "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU implementer\t: 0x41\n",
                                  "garbage without colons\n"])
def test_no_x86_flags_means_fp32(text: str) -> None:
    assert native_bf16_cpu(text) is False
    reason = cpu_bf16_reason(text)
    assert reason.startswith("fp32 (no native bf16: no CPU flags") and "\n" not in reason


def test_unreadable_cpuinfo_means_fp32(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(machine, "_CPUINFO", tmp_path / "missing")
    assert native_bf16_cpu() is False
    assert "unreadable" in cpu_bf16_reason()


def test_default_reads_proc_cpuinfo() -> None:
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    text = path.read_text()
    assert native_bf16_cpu() is native_bf16_cpu(text)
    assert cpu_bf16_reason() == cpu_bf16_reason(text)
    assert native_bf16_cpu() is ("avx512_bf16" in text.split() or {"amx_bf16", "amx_tile"} <= set(text.split()))
