"""How camssl writes numbers for people: percentages and durations (one formatter each)."""

from __future__ import annotations

from typing import Any


def fmt_pct(x: Any, digits: int = 2, signed: bool = False, sign: str = "%") -> str:
    """A share as a percentage (``0.4512`` → ``45.12%``; ``sign=""`` for table cells in points); ``—`` if missing."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "—"
    return f"{100 * x:{'+' if signed else ''}.{digits}f}{sign}"


def fmt_duration(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``1h02m``."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
