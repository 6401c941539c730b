"""Paired comparisons of any two settings of a sweep, convergence, diagnostics and curves.

``camssl table`` builds the Grad-CAM paper's tables from the roles of a sweep's settings;
the sections here compare settings by name, so a sweep of other methods (CAM-loss,
distillation, LGA, VAT...) gets its paired intervals too:

- ``--compare A:B`` (repeatable): A − B per seed, with a 95% Student-t interval, for the
  final (or best-validation) accuracies; without it, a sweep that has no Grad-CAM setting
  compares each of its settings with its first baseline;
- ``--epochs 1,2,4``: the same differences for the validation accuracy after those epochs
  (convergence);
- a table of the final-epoch training diagnostics that the runs logged (CAAM–CAM
  agreement, the imputed labels' accuracy...), and ``--curves KEY,...``: per-epoch means
  over seeds of those keys, as a table and a figure.
"""

from __future__ import annotations

from collections.abc import Sequence

from camssl.errors import UserError
from camssl.experiments.results import _METRICS, DIAGNOSTIC_KEYS, SweepResults
from camssl.experiments.spec import format_ratio
from camssl.experiments.stats import PairedDiff, Stat, paired_diff
from camssl.viz import figure_png

Comparison = tuple[str, str]


def parse_comparisons(sr: SweepResults, texts: Sequence[str]) -> list[Comparison]:
    """``["A:B", ...]`` → [(A, B)]; a one-line error for a malformed pair or an unknown name."""
    names = [*sr.plan["settings"], *sr.plan["baselines"]]
    out = []
    for text in texts:
        a, sep, b = text.partition(":")
        if not sep or not a or not b:
            raise UserError(f"--compare {text!r} is not SETTING:REFERENCE; e.g. --compare cam_loss:supervised")
        for name in (a, b):
            if name not in names:
                raise UserError(f"--compare {text}: the sweep has no setting '{name}'; its settings: {', '.join(names)}")
        out.append((a, b))
    return out


def default_comparisons(sr: SweepResults) -> list[Comparison]:
    """Without ``--compare``: each setting against the first baseline, in sweeps with no Grad-CAM setting
    (the Grad-CAM tables already pair those with the baseline and the ablation)."""
    roles = {r["setting"]: r["role"] for r in sr.plan["runs"]}
    if not sr.plan["baselines"] or any(v == "method" for v in roles.values()):
        return []
    base = sr.plan["baselines"][0]
    return [(s, base) for s in sr.plan["settings"]]


def parse_epochs(text: str | None) -> list[int]:
    """``"1,2,4"`` → [1, 2, 4]; a one-line error for anything but positive integers."""
    if not text:
        return []
    try:
        epochs = [int(e) for e in text.split(",")]
    except ValueError:
        raise UserError(f"--epochs {text!r} must be comma-separated epoch numbers, e.g. --epochs 1,2,4") from None
    if any(e < 1 for e in epochs):
        raise UserError(f"--epochs {text!r}: epochs count from 1")
    return epochs


def _ratio_of(sr: SweepResults, setting: str, ratio: float) -> float | None:
    return None if setting in sr.plan["baselines"] else ratio


def _cell(st: Stat | None) -> str:
    if st is None:
        return "—"
    return f"{st.mean:.2f}" + ("" if st.std is None else f" ± {st.std:.2f}") + f" (n={st.n})"


def diff_text(d: PairedDiff | None) -> str:
    """"+1.23 [+0.10, +2.36] (n=3)", the interval bold when it excludes zero."""
    if d is None:
        return "—"
    if d.low is None:
        return f"{d.mean:+.2f} (n=1, no CI)"
    ci = f"[{d.low:+.2f}, {d.high:+.2f}]"
    return f"{d.mean:+.2f} {'**' + ci + '**' if d.excludes_zero else ci} (n={d.n})"


def _pair_rows(sr: SweepResults, comps: list[Comparison], values) -> list[str]:
    """Table rows ``| ratio | A − B | A | B | Δ [95% CI] |``; ``values(setting, ratio) -> {seed: value}``."""
    rows = []
    for ratio in [float(r) for r in sr.plan["ratios"]] or [None]:
        for a, b in comps:
            va, vb = values(a, _ratio_of(sr, a, ratio)), values(b, _ratio_of(sr, b, ratio))
            seeds = sorted(set(va) & set(vb))
            rows.append(
                f"| {format_ratio(ratio) if ratio is not None else '—'} | `{a}` − `{b}` | "
                f"{_cell(Stat.of([va[s] for s in seeds]))} | {_cell(Stat.of([vb[s] for s in seeds]))} | "
                f"{diff_text(paired_diff(va, vb))} |"
            )
    return rows


_HEAD = ["| ratio | comparison | setting | reference | paired Δ [95% CI] |", "|---|---|---|---|---|"]
_NOTE = ("Mean ± standard deviation over the seeds both settings finished (%); Δ is the mean per-seed difference "
         "with a two-sided 95% Student-t interval; **bold** intervals exclude zero (no correction for the number "
         "of comparisons).")


def md_comparisons(sr: SweepResults, select: str, comps: list[Comparison], epochs: list[int]) -> list[str]:
    """The paired-comparison sections (final accuracies, then validation accuracy after ``epochs``)."""
    if not comps:
        return []
    lines: list[str] = []
    for m in _METRICS:
        lines += [f"## Paired comparisons — {m.title}, %", "", _NOTE, "", *_HEAD]
        lines += _pair_rows(sr, comps, lambda s, r, m=m: sr.per_seed(s, r, m.key, select))
        lines.append("")
    if select == "final" and any("test_acc_online" in r for r in sr.results.values()):
        lines += ["## Paired comparisons — test accuracy of the trained weights (not their EMA), %", "",
                  "Where a run keeps an EMA, the tables above evaluate the EMA weights; this one evaluates the final "
                  "epoch's trained (online) weights (`test_acc_online` in result.json; runs without it are left out).",
                  "", *_HEAD]
        lines += _pair_rows(sr, comps, lambda s, r: sr.per_seed_result(s, r, "test_acc_online"))
        lines.append("")
    for e in epochs:
        lines += [f"## Paired comparisons — validation accuracy after epoch {e}, %", "",
                  "From each run's metrics.jsonl (the weights after that epoch; convergence).", "", *_HEAD]
        lines += _pair_rows(sr, comps, lambda s, r, e=e: {k: 100 * v for k, v in
                                                           sr.per_seed_epoch(s, r, "val_acc", e).items()})
        lines.append("")
    return lines


def _cells(sr: SweepResults) -> list[tuple[str, float | None]]:
    """(setting, ratio) of every cell: baselines once, grid settings per ratio."""
    cells: list[tuple[str, float | None]] = [(b, None) for b in sr.plan["baselines"]]
    return cells + [(s, float(r)) for r in sr.plan["ratios"] for s in sr.plan["settings"]]


def _label(setting: str, ratio: float | None, sr: SweepResults) -> str:
    return setting if ratio is None or len(sr.plan["ratios"]) == 1 else f"{setting} @{format_ratio(ratio)}"


def md_diagnostics(sr: SweepResults) -> list[str]:
    """Final-epoch training diagnostics (mean ± std over seeds) of every cell, for the keys any run logged."""
    keys = [k for k in DIAGNOSTIC_KEYS if any(k in rec for rec in sr.last_epoch.values())]
    if not keys:
        return []
    lines = ["## Training diagnostics at the final epoch", "",
             "Mean ± std over seeds of each run's last metrics.jsonl record (— where a method does not log it).",
             "", "| setting | " + " | ".join(f"`{k}`" for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for setting, ratio in _cells(sr):
        stats = [sr.diagnostic(setting, ratio, k) for k in keys]
        cells = ["—" if st is None else f"{st.mean:.3f}" + ("" if st.std is None else f" ± {st.std:.3f}")
                 for st in stats]
        lines.append(f"| {_label(setting, ratio, sr)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def curves(sr: SweepResults, keys: Sequence[str]) -> dict[tuple[str, float | None], dict[str, list[tuple[int, float]]]]:
    """(setting, ratio) -> key -> [(epoch, mean over seeds)] for the cells that logged the key."""
    out: dict[tuple[str, float | None], dict[str, list[tuple[int, float]]]] = {}
    for setting, ratio in _cells(sr):
        runs = sr.cell_runs(setting, ratio)
        for key in keys:
            by_epoch: dict[int, list[float]] = {}
            for r in runs:
                for rec in sr.records.get(r["id"], []):
                    if isinstance(rec.get(key), (int, float)):
                        by_epoch.setdefault(int(rec["epoch"]), []).append(float(rec[key]))
            if by_epoch:
                out.setdefault((setting, ratio), {})[key] = [(e, sum(v) / len(v)) for e, v in sorted(by_epoch.items())]
    return out


def md_curves(sr: SweepResults, keys: Sequence[str]) -> list[str]:
    """Per-epoch means of ``keys``, one table per cell that logged them."""
    data = curves(sr, keys)
    if not data:
        return []
    lines = ["## Per-epoch curves (mean over seeds)", "", "Drawn in the curves figure written beside this file.", ""]
    for (setting, ratio), series in data.items():
        epochs = sorted({e for pts in series.values() for e, _ in pts})
        lines += [f"**{_label(setting, ratio, sr)}**", "", "| epoch | " + " | ".join(f"`{k}`" for k in series) + " |",
                  "|---|" + "---|" * len(series)]
        for e in epochs:
            vals = [dict(pts).get(e) for pts in series.values()]
            lines.append(f"| {e} | " + " | ".join("—" if v is None else f"{v:.3f}" for v in vals) + " |")
        lines.append("")
    return lines


def curves_png(sr: SweepResults, keys: Sequence[str]) -> bytes | None:
    """A figure of the per-epoch curves (one panel per key, a line per cell); None when nothing logged them."""
    data = curves(sr, keys)
    if not data:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for (setting, ratio), series in data.items():
            if key in series:
                e, v = zip(*series[key])
                ax.plot(e, v, marker="o", ms=3, label=_label(setting, ratio, sr))
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_png(fig)


__all__ = ["Comparison", "curves", "curves_png", "default_comparisons", "md_comparisons", "md_curves",
           "diff_text", "md_diagnostics", "parse_comparisons", "parse_epochs"]
