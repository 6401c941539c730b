"""Accuracy-vs-labels curves of several strategies × seeds, with paired differences against a baseline.

``camssl active-table DIR... --out DIR`` reads every ``active.json`` under the given
folders; ``scripts/active_features.py`` hands its own points in. Both write:

- ``curves.csv``: one row per (strategy, seed, cycle): labels, accuracy;
- ``curves.md``: mean ± std over seeds per strategy and cycle, and the paired difference
  of each strategy minus the baseline (``random``) per cycle, over the seeds both have,
  with a two-sided 95% Student-t interval (:mod:`camssl.experiments.stats`; ``*`` marks an
  interval that excludes 0);
- ``curves.png``: accuracy against the number of labels (±1 std bars) and the paired
  differences (95% interval bars).

``camssl active-table`` also writes each run's per-cycle diagnostics from active.json
(:func:`diagnostics_from_runs`): ``diagnostics.csv`` (one row per strategy, seed and
query) and ``diagnostics.md`` (means over seeds per strategy and cycle: virtual-label
accuracy on the pool before and after the query, the queried images' class histogram,
selection time beside training time).
"""

from __future__ import annotations

import csv
import functools
import io as _stdio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from camssl import io
from camssl.errors import UserError
from camssl.experiments.stats import PairedDiff, Stat, paired_diff
from camssl.text import fmt_pct

_pts = functools.partial(fmt_pct, sign="")  # table cells are in points, without a % sign


@dataclass(frozen=True)
class Point:
    strategy: str
    seed: int
    cycle: int
    n_labeled: int
    acc: float


def points_from_runs(dirs: Sequence[str | Path], metric: str = "test_acc") -> list[Point]:
    """The points of every active-learning run (a folder with active.json) in or below ``dirs``."""
    from camssl.active.state import STATE_FILE, ActiveState

    found = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise UserError(f"'{d}' is not a directory; give active-learning output folders (camssl active --out)")
        found += sorted(p.parent for p in d.rglob(STATE_FILE))
    if not found:
        raise UserError(f"no {STATE_FILE} in or below {', '.join(map(str, dirs))}; give camssl active --out folders")
    points, owner = [], {}
    for run in dict.fromkeys(found):
        state = ActiveState.load(run)
        strategy, seed = state.active["strategy"], int(state.train_config["seed"])
        if (strategy, seed) in owner:
            raise UserError(f"two runs of strategy {strategy} with seed {seed}: '{owner[strategy, seed]}' and '{run}'; "
                            "give each seed once")
        owner[strategy, seed] = run
        for c in state.cycles:
            if c.get(metric) is None:
                raise UserError(f"'{run}' cycle {c['cycle']} has no {metric}; choose --metric test_acc or "
                                "test_acc_at_best_val")
            points.append(Point(strategy, seed, int(c["cycle"]), int(c["n_labeled"]), float(c[metric])))
    return points


def _by(points: Iterable[Point]) -> dict[str, dict[int, dict[int, Point]]]:
    out: dict[str, dict[int, dict[int, Point]]] = {}
    for p in points:
        out.setdefault(p.strategy, {}).setdefault(p.cycle, {})[p.seed] = p
    return out


def _order(strategies: Iterable[str], baseline: str) -> list[str]:
    return sorted(strategies, key=lambda s: (s != baseline, s))


def _labels(cells: Iterable[dict[int, Point]]) -> str:
    ns = sorted({p.n_labeled for cell in cells for p in cell.values()})
    return str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"


def _stat_cell(st: Stat | None) -> str:
    if st is None:
        return "—"
    return f"{_pts(st.mean)} ± {_pts(st.std)} ({st.n})" if st.std is not None else f"{_pts(st.mean)} ({st.n})"


def _diff_cell(d: PairedDiff | None) -> str:
    if d is None:
        return "—"
    if d.low is None:
        return f"{_pts(d.mean, signed=True)} ({d.n})"
    return f"{_pts(d.mean, signed=True)} [{_pts(d.low, signed=True)}, {_pts(d.high, signed=True)}]{'*' if d.excludes_zero else ''} ({d.n})"


def diffs(points: Sequence[Point], baseline: str = "random") -> dict[str, dict[int, PairedDiff | None]]:
    """Per strategy (not the baseline) and cycle: the paired difference strategy − baseline over common seeds."""
    by = _by(points)
    base = by.get(baseline, {})
    return {s: {c: paired_diff({k: p.acc for k, p in cell.items()}, {k: p.acc for k, p in base.get(c, {}).items()})
                for c, cell in sorted(cycles.items())}
            for s, cycles in by.items() if s != baseline}


def curves_markdown(points: Sequence[Point], title: str, baseline: str = "random", metric: str = "test accuracy") -> str:
    by = _by(points)
    strategies = _order(by, baseline)
    cycles = sorted({p.cycle for p in points})
    lines = [f"# {title}", "", f"{metric} (%), mean ± std over seeds (number of seeds)", "",
             "| cycle | labels | " + " | ".join(strategies) + " |", "|---|---|" + "---|" * len(strategies)]
    for c in cycles:
        cells = [by[s].get(c, {}) for s in strategies]
        stats = [_stat_cell(Stat.of([p.acc for p in cell.values()])) for cell in cells]
        lines.append(f"| {c} | {_labels(cells)} | " + " | ".join(stats) + " |")
    d = diffs(points, baseline)
    if baseline in by and d:
        others = [s for s in strategies if s != baseline]
        lines += ["", f"Paired difference minus {baseline} (percentage points), mean [95% t interval] (seeds); "
                  "* = the interval excludes 0", "",
                  "| cycle | labels | " + " | ".join(others) + " |", "|---|---|" + "---|" * len(others)]
        for c in cycles:
            cells = [by[s].get(c, {}) for s in strategies]
            lines.append(f"| {c} | {_labels(cells)} | " + " | ".join(_diff_cell(d[s].get(c)) for s in others) + " |")
    elif baseline not in by:
        lines += ["", f"(no {baseline} runs: no paired differences)"]
    return "\n".join(lines) + "\n"


def curves_csv(points: Sequence[Point]) -> str:
    buf = _stdio.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["strategy", "seed", "cycle", "n_labeled", "acc"])
    for p in sorted(points, key=lambda p: (p.strategy, p.seed, p.cycle)):
        w.writerow([p.strategy, p.seed, p.cycle, p.n_labeled, f"{p.acc:.6f}"])
    return buf.getvalue()


def curves_figure(points: Sequence[Point], title: str, baseline: str = "random", metric: str = "test accuracy") -> bytes:
    """PNG bytes: accuracy vs labels (±1 std) and the paired differences vs ``baseline`` (95% t intervals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = _by(points)
    strategies = _order(by, baseline)
    d = diffs(points, baseline)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for i, s in enumerate(strategies):
        xs, ys, es = [], [], []
        for c, cell in sorted(by[s].items()):
            st = Stat.of([p.acc for p in cell.values()])
            if st is not None:
                xs.append(sum(p.n_labeled for p in cell.values()) / len(cell))
                ys.append(100 * st.mean)
                es.append(100 * (st.std or 0.0))
        axes[0].errorbar(xs, ys, yerr=es, label=s, marker="o", capsize=3, linewidth=1.4)
        if s in d:
            dx, dy, lo, hi = [], [], [], []
            for c, diff in d[s].items():
                if diff is not None:
                    dx.append(sum(p.n_labeled for p in by[s][c].values()) / len(by[s][c]) + 0.004 * i * max(xs or [1]))
                    dy.append(100 * diff.mean)
                    lo.append(100 * (diff.mean - diff.low) if diff.low is not None else 0.0)
                    hi.append(100 * (diff.high - diff.mean) if diff.high is not None else 0.0)
            axes[1].errorbar(dx, dy, yerr=[lo, hi], label=s, marker="o", capsize=3, linewidth=1.4, color=f"C{i}")
    axes[0].set(xlabel="labeled images", ylabel=f"{metric}, %", title="accuracy vs labels (±1 std over seeds)")
    axes[1].axhline(0.0, color="gray", linewidth=1)
    axes[1].set(xlabel="labeled images", ylabel="percentage points",
                title=f"paired difference minus {baseline} (95% t interval)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    buf = _stdio.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_curves(points: Sequence[Point], out: str | Path, title: str, baseline: str = "random",
                 metric: str = "test accuracy") -> list[Path]:
    """Write curves.csv, curves.md and curves.png into ``out``; returns their paths."""
    if not points:
        raise UserError("no accuracy points to tabulate")
    out = Path(out)
    paths = [out / "curves.csv", out / "curves.md", out / "curves.png"]
    io.write_text(paths[0], curves_csv(points))
    io.write_text(paths[1], curves_markdown(points, title, baseline, metric))
    io.write_bytes(paths[2], curves_figure(points, title, baseline, metric))
    return paths


DIAGNOSTIC_FIELDS = ("strategy", "seed", "cycle", "n_labeled", "test_acc", "virtual_acc_before", "virtual_acc_after",
                     "scored_pool", "train_s", "selection_s", "selection_share", "class_histogram")


def diagnostics_from_runs(dirs: Sequence[str | Path]) -> list[dict[str, object]]:
    """One row per query of every active-learning run in or below ``dirs`` (see DIAGNOSTIC_FIELDS).

    ``selection_s`` = the feature pass + the strategy (``time.features_s + time.select_s``), as the
    loop's log line reports it; ``selection_share`` = selection_s / the same cycle's ``time.train_s``.
    """
    from camssl.active.state import STATE_FILE, ActiveState

    rows = []
    for d in map(Path, dirs):
        for run in sorted(p.parent for p in d.rglob(STATE_FILE)):
            state = ActiveState.load(run)
            for c in state.cycles:
                q, t = c.get("query"), c.get("time", {})
                if q is None or "select_s" not in t:
                    continue
                sel = t["features_s"] + t["select_s"]
                rows.append({"strategy": state.active["strategy"], "seed": int(state.train_config["seed"]),
                             "cycle": int(c["cycle"]), "n_labeled": int(c["n_labeled"]), "test_acc": c["test_acc"],
                             "virtual_acc_before": q.get("virtual_acc_before"),
                             "virtual_acc_after": q.get("virtual_acc_after"), "scored_pool": q.get("scored_pool"),
                             "train_s": t["train_s"], "selection_s": sel, "selection_share": sel / max(t["train_s"], 1e-9),
                             "class_histogram": q.get("class_histogram")})
    return rows


def _mean(values: Iterable[object]) -> float | None:
    xs = [float(v) for v in values if v is not None]  # type: ignore[arg-type]
    return sum(xs) / len(xs) if xs else None


def diagnostics_markdown(rows: Sequence[dict[str, object]], title: str, baseline: str = "random") -> str:
    """Means over seeds per strategy and query: virtual labels, class balance of the query, time."""
    lines = [f"# {title}: per-cycle diagnostics", "",
             "Means over seeds (number of seeds). Virtual labels: label propagation's accuracy on the (scored) pool "
             "before the query and on the rest of it after the query's labels join the graph. Classes: the fewest "
             "and most queried images of one class (true labels), summed over seeds. Selection: the feature pass "
             "and the strategy, seconds and share of the same cycle's training time.", "",
             "| strategy | cycle | labels | virtual labels before → after | classes min–max | train s | selection s "
             "| selection / train |", "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, int], list[dict[str, object]]] = {}
    for r in rows:
        groups.setdefault((str(r["strategy"]), int(r["cycle"])), []).append(r)  # type: ignore[call-overload]
    for strategy in _order({s for s, _ in groups}, baseline):
        for cycle in sorted(c for s, c in groups if s == strategy):
            g = groups[strategy, cycle]
            hist = [sum(h) for h in zip(*(r["class_histogram"] for r in g if r["class_histogram"]))]  # type: ignore[arg-type]
            share = _mean(r["selection_share"] for r in g)
            lines.append(
                f"| {strategy} | {cycle} | {g[0]['n_labeled']} | {_pts(_mean(r['virtual_acc_before'] for r in g))} → "
                f"{_pts(_mean(r['virtual_acc_after'] for r in g))} | "
                f"{f'{min(hist)}–{max(hist)}' if hist else '—'} | {_mean(r['train_s'] for r in g):.0f} | "
                f"{_mean(r['selection_s'] for r in g):.1f} | {100 * share:.0f}% ({len(g)}) |")  # type: ignore[operator]
    return "\n".join(lines) + "\n"


def write_diagnostics(rows: Sequence[dict[str, object]], out: str | Path, title: str,
                      baseline: str = "random") -> list[Path]:
    """Write diagnostics.csv and diagnostics.md into ``out`` (nothing when there are no queries yet)."""
    if not rows:
        return []
    out = Path(out)
    buf = _stdio.StringIO()
    w = csv.DictWriter(buf, fieldnames=DIAGNOSTIC_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        hist = r["class_histogram"]
        w.writerow({**r, "class_histogram": " ".join(map(str, hist)) if hist else ""})  # type: ignore[call-overload]
    paths = [out / "diagnostics.csv", out / "diagnostics.md"]
    io.write_text(paths[0], buf.getvalue())
    io.write_text(paths[1], diagnostics_markdown(rows, title, baseline))
    return paths
