"""Accuracy against wall-clock minutes: per setting, the mean over seeds at each epoch, scaled to the reference machine.

Every epoch record of a run holds ``wall_s`` (the run's wall time so far) and its
result.json the machine's yardstick (``yardstick_ms``, :func:`camssl.machine.yardstick_ms`),
so each run's time is also given scaled to the 450 ms reference machine:
``wall_s * 450 / yardstick_ms``. ``camssl table DIR --time-curves`` writes a table per setting
and a figure (validation accuracy against scaled minutes), from the archived runs alone.
"""

from __future__ import annotations

from typing import Any

from camssl.experiments.compare import _cells, _label
from camssl.experiments.results import SweepResults
from camssl.machine import REFERENCE_YARDSTICK_MS
from camssl.viz import figure_png


def _scale(result: dict[str, Any]) -> float | None:
    ms = result.get("yardstick_ms")
    return REFERENCE_YARDSTICK_MS / ms if isinstance(ms, (int, float)) and ms > 0 else None


def time_curves(sr: SweepResults) -> dict[tuple[str, float | None], list[dict[str, float]]]:
    """(setting, ratio) -> per epoch: mean minutes (measured and scaled), mean validation accuracy, runs."""
    out: dict[tuple[str, float | None], list[dict[str, float]]] = {}
    for setting, ratio in _cells(sr):
        by_epoch: dict[int, list[tuple[float, float | None, float]]] = {}
        for r in sr.cell_runs(setting, ratio):
            scale = _scale(sr.results.get(r["id"], {}))
            for rec in sr.records.get(r["id"], []):
                if isinstance(rec.get("wall_s"), (int, float)) and isinstance(rec.get("val_acc"), (int, float)):
                    minutes = rec["wall_s"] / 60
                    by_epoch.setdefault(int(rec["epoch"]), []).append(
                        (minutes, minutes * scale if scale else None, rec["val_acc"]))
        rows = []
        for epoch, pts in sorted(by_epoch.items()):
            scaled = [p[1] for p in pts if p[1] is not None]
            rows.append({"epoch": epoch, "minutes": sum(p[0] for p in pts) / len(pts),
                         "scaled_minutes": sum(scaled) / len(scaled) if len(scaled) == len(pts) else float("nan"),
                         "val_acc": sum(p[2] for p in pts) / len(pts), "runs": len(pts)})
        if rows:
            out[(setting, ratio)] = rows
    return out


def md_time_curves(sr: SweepResults) -> list[str]:
    data = time_curves(sr)
    if not data:
        return []
    lines = ["## Accuracy against wall-clock time (mean over seeds)", "",
             f"Minutes as measured, and scaled to the reference machine (yardstick {REFERENCE_YARDSTICK_MS:.0f} ms: "
             "ResNet-18 width 0.5, batch 64, fp32); validation accuracy after each epoch. Drawn in the time figure "
             "written beside this file.", ""]
    for (setting, ratio), rows in data.items():
        lines += [f"**{_label(setting, ratio, sr)}**", "", "| epoch | minutes | scaled minutes | val % | runs |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['epoch']} | {r['minutes']:.1f} | {r['scaled_minutes']:.1f} | {100 * r['val_acc']:.2f} | "
                  f"{r['runs']} |" for r in rows]
        lines.append("")
    return lines


def time_curves_png(sr: SweepResults) -> bytes | None:
    data = time_curves(sr)
    if not data:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for (setting, ratio), rows in data.items():
        scaled = all(r["scaled_minutes"] == r["scaled_minutes"] for r in rows)
        x = [r["scaled_minutes" if scaled else "minutes"] for r in rows]
        ax.plot(x, [100 * r["val_acc"] for r in rows], marker="o", ms=3, label=_label(setting, ratio, sr))
    ax.set_xlabel(f"wall-clock minutes, scaled to the {REFERENCE_YARDSTICK_MS:.0f} ms yardstick machine")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)
