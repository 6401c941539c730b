"""Value checks shared by every typed config (training, methods, augmentation, active learning).

Each raises :class:`~camssl.errors.ConfigError` with one line naming the key, the value and
the rule, e.g. ``method.pseudo.threshold=1.5 is invalid: must be in [0, 1)``. A leaf module:
it imports nothing of camssl but the errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from camssl.errors import ConfigError


def invalid(key: str, value: Any, rule: str) -> ConfigError:
    """The error for ``key=value`` breaking ``rule`` (raise it)."""
    return ConfigError(f"{key}={value!r} is invalid: {rule}")


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(key, value, "expected a finite number")
    return float(value)


def positive(key: str, value: Any) -> None:
    """``value > 0``."""
    if not _number(key, value) > 0:
        raise ConfigError(f"{key}={value} is invalid: must be > 0")


def at_least(key: str, value: Any, low: float) -> None:
    """``value >= low``."""
    if _number(key, value) < low:
        raise ConfigError(f"{key}={value} is invalid: must be >= {low}")


def integer_at_least(key: str, value: Any, low: int) -> None:
    """An integer (not a bool) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise invalid(key, value, f"must be an integer >= {low}")


def in_range(key: str, value: Any, low: float, high: float, *, low_open: bool = False,
             high_open: bool = False) -> None:
    """``low <= value <= high`` (a number), with either end open when asked; ``high`` may be ``math.inf``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
        raise invalid(key, value, f"must be a number in {left}{low:g}, {high:g}{right}")


def check_bool(key: str, value: Any) -> None:
    """``true`` or ``false`` (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise invalid(key, value, "must be true or false")


def one_of(key: str, value: Any, choices: Sequence[Any]) -> None:
    """One of ``choices``."""
    if value not in choices:
        raise invalid(key, value, f"must be one of {', '.join(map(str, choices))}")


def numbers(key: str, value: Any, n: int) -> tuple[float, ...]:
    """A list of ``n`` finite numbers, as floats."""
    ok = not isinstance(value, (str, bytes)) and isinstance(value, Sequence) and len(value) == n
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        raise invalid(key, value, f"must be a list of {n} finite numbers")
    return tuple(float(v) for v in value)


def fraction(key: str, value: Any) -> None:
    """A share in ``[0, 1)`` (a confidence threshold, a momentum, a decay)."""
    in_range(key, value, 0.0, 1.0, high_open=True)
