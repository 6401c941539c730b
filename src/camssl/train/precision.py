"""Which precision a run trains in: fp32, or bf16/fp16 autocast where the device computes it natively."""

from __future__ import annotations

import torch

from camssl.config import TrainConfig


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run (None: full precision).

    CUDA: bf16 where the GPU has it natively, else fp16 (with a grad scaler); ``amp_dtype``
    forces one. The CPU stays in fp32.
    """
    if not (cfg.amp and device.type == "cuda"):
        return None
    if cfg.amp_dtype != "auto":
        return torch.bfloat16 if cfg.amp_dtype == "bf16" else torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def describe(dtype: torch.dtype | None) -> str:
    """``fp32``, ``bf16 autocast`` or ``fp16 autocast`` (the run header and result.json)."""
    return "fp32" if dtype is None else f"{'bf16' if dtype == torch.bfloat16 else 'fp16'} autocast"
