"""Mean ± std over seeds and paired differences with a 95% Student-t confidence interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# two-sided 95% Student-t quantiles t(0.975, df); between tabulated df the next lower df is
# used (slightly conservative); beyond 120 the normal quantile
_T975 = {
    1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060,
    9: 2.2622, 10: 2.2281, 11: 2.2010, 12: 2.1788, 13: 2.1604, 14: 2.1448, 15: 2.1314,
    16: 2.1199, 17: 2.1098, 18: 2.1009, 19: 2.0930, 20: 2.0860, 21: 2.0796, 22: 2.0739,
    23: 2.0687, 24: 2.0639, 25: 2.0595, 26: 2.0555, 27: 2.0518, 28: 2.0484, 29: 2.0452,
    30: 2.0423, 40: 2.0211, 60: 2.0003, 120: 1.9799,
}


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (hard-coded table)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df > 120:
        return 1.9600
    return _T975[max(k for k in _T975 if k <= df)]


# ---------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1; None for one value) of ``n`` values."""

    n: int
    mean: float
    std: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat | None:
        if not values:
            return None
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
        return cls(n, mean, std)


@dataclass(frozen=True)
class PairedDiff:
    """Mean of the per-seed differences a − b with a two-sided 95% Student-t interval."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None
    seeds: tuple[int, ...]

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def paired_diff(a: dict[int, float], b: dict[int, float]) -> PairedDiff | None:
    """Per-seed differences ``a[s] − b[s]`` over the seeds both have; None if there are none."""
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        return None
    d = [a[s] - b[s] for s in seeds]
    st = Stat.of(d)
    assert st is not None
    if st.std is None:
        return PairedDiff(st.n, st.mean, None, None, None, seeds)
    half = t_quantile_975(st.n - 1) * st.std / math.sqrt(st.n)
    return PairedDiff(st.n, st.mean, st.std, st.mean - half, st.mean + half, seeds)


