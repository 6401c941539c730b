"""Which precision a run trains in: fp32, or bf16/fp16 autocast where the device computes it natively.

- CUDA, ``amp=true``: bf16 where the GPU has it natively, else fp16 with a grad scaler
  (``amp_dtype`` forces one).
- CPU, ``amp=true``: bf16 autocast on a processor with native bf16 (AVX-512 BF16 or AMX,
  :func:`camssl.machine.native_bf16_cpu`), else fp32 — never emulated bf16, which is slower
  than fp32. Under CPU autocast BatchNorm's statistics are fp32: its running mean and
  variance are fp32 buffers, and PyTorch's CPU kernel accumulates a bf16 batch's mean and
  variance in fp32 (tests/test_precision.py checks both); the Grad-CAM maps are computed in
  fp32 (:mod:`camssl.cam` casts features and gradients before the weighted sum).
"""

from __future__ import annotations

import torch

from camssl.config import TrainConfig
from camssl.errors import ConfigError
from camssl.machine import cpu_bf16_reason, native_bf16_cpu


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run (None: full precision)."""
    if not cfg.amp:
        return None
    if device.type == "cuda":
        if cfg.amp_dtype != "auto":
            return torch.bfloat16 if cfg.amp_dtype == "bf16" else torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if cfg.amp_dtype == "fp16":
        raise ConfigError("amp_dtype=fp16 is for CUDA; on the CPU camssl trains in bf16 where the processor has it "
                          "natively, else fp32: use amp_dtype=auto, or amp=false for fp32")
    if native_bf16_cpu():
        return torch.bfloat16
    if cfg.amp_dtype == "bf16":
        raise ConfigError(f"amp_dtype=bf16 on a CPU without native bf16 would be emulated and slower than fp32 "
                          f"({cpu_bf16_reason()}); use amp_dtype=auto or amp=false")
    return None


def describe(dtype: torch.dtype | None, device: torch.device | None = None, amp: bool = False) -> str:
    """``fp32``, ``bf16 autocast`` or ``fp16 autocast`` (the run header and result.json); on the CPU with
    ``amp`` on, why (e.g. ``bf16 autocast (avx512_bf16)``, ``fp32 (no native bf16: ...)``)."""
    text = "fp32" if dtype is None else f"{'bf16' if dtype == torch.bfloat16 else 'fp16'} autocast"
    if amp and device is not None and device.type == "cpu":
        reason = cpu_bf16_reason()
        text += f" ({reason.split('(', 1)[1]}" if "(" in reason else ""
    return text
