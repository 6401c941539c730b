"""``camssl table``: Table I, Table II, paired differences and Figure 3 of a sweep directory."""

from __future__ import annotations

import csv
import io as _stdio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from camssl import io
from camssl.errors import UserError
from camssl.experiments.paper import (
    PAPER,
    PAPER_ABLATION,
    PAPER_BASELINE,
    PAPER_PROTOCOL,
    PAPER_TABLE1,
)
from camssl.experiments.spec import format_ratio, spec_label
from camssl.experiments.figure import figure3
from camssl.experiments.results import (
    _METRICS,
    _RULES,
    SweepResults,
    _Metric,
    _num,
    run_rows,
    header_label,
    layer_of,
    role_of,
    settings_by_role,
)
from camssl.experiments.compare import (
    Comparison,
    curves_png,
    default_comparisons,
    diff_text,
    md_comparisons,
    md_curves,
    md_diagnostics,
    parse_comparisons,
    parse_epochs,
)
from camssl.experiments.stats import PairedDiff, Stat, paired_diff

SELECTIONS = ("final", "best-val")
# a hand-written reading of the results goes between these markers; `camssl table` keeps it
READING_BEGIN = "<!-- reading:begin (hand-written; kept when camssl table rewrites this file) -->"
READING_END = "<!-- reading:end -->"


def _paper_cell(role: str, layer: str | None, ratio: float | None) -> tuple[float, float] | None:
    if role == "baseline":
        return PAPER_BASELINE
    key = next((k for k in PAPER_TABLE1 if ratio is not None and abs(k - ratio) < 1e-9), None)
    if key is None:
        return None
    if role == "method" and layer is not None:
        return PAPER_TABLE1[key].get(layer)
    if role == "ablation":
        return PAPER_ABLATION[key]
    return None


def _ms(st: Stat | None, expected_n: int = 0, digits: int = 2) -> str:
    """"mean ± std", with "(n=k)" when fewer runs than seeds finished."""
    if st is None:
        return "—"
    if st.std is None:
        return f"{st.mean:.{digits}f} (n=1)"
    short = f" (n={st.n})" if st.n < expected_n else ""
    return f"{st.mean:.{digits}f} ± {st.std:.{digits}f}{short}"


def paper_grid(sr: SweepResults) -> bool:
    """Whether the sweep is a Grad-CAM grid, whose cells have the Grad-CAM paper's numbers beside them."""
    return any(r["role"] == "method" for r in sr.plan["runs"])


def _paper_ms(cell: tuple[float, float] | None) -> str:
    return "" if cell is None else f" (paper† {cell[0]:.2f} ± {cell[1]:.2f})"


def build_tables(
    sr: SweepResults, select: str = "final", reading: str | None = None, compare: list[Comparison] | None = None,
    epochs: list[int] = (), curve_keys: list[str] = (), time_curves: bool = False,
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """(results.md text, results.csv rows, runs.csv rows) of a sweep.

    ``reading``: hand-written text placed after the header between the READING markers
    (:func:`write_tables` carries it over from the results.md it replaces). ``compare``:
    pairs of settings to compare (default :func:`compare.default_comparisons`); ``epochs``:
    also compare the validation accuracy after these epochs; ``curve_keys``: per-epoch
    curves of these logged metrics (:mod:`camssl.experiments.compare`); ``time_curves``:
    accuracy against wall-clock minutes (:mod:`camssl.experiments.timecurves`).
    """
    if select not in SELECTIONS:
        raise UserError(f"--select {select} is invalid; choose one of: {', '.join(SELECTIONS)}")
    plan = sr.plan
    ratios = [float(r) for r in plan["ratios"]]
    columns, ablations, baselines = settings_by_role(sr)
    ablation = ablations[0] if ablations else None
    baseline = baselines[0] if baselines else None
    gradcams = [s for s in columns if role_of(sr, s) == "method"]

    csv_rows: list[dict[str, Any]] = []
    for rule in SELECTIONS:  # the CSV holds both selection rules; the markdown the chosen one
        csv_rows += _csv_rows(sr, rule, ratios, columns, gradcams, ablation, baseline)

    md: list[str] = []
    md += _md_header(sr, select, baseline, ablation, bool(gradcams))
    md += [READING_BEGIN, *([reading] if reading else []), READING_END, ""]
    for m in _METRICS:
        md += _md_table1(sr, select, m, ratios, columns, baseline)
    for m in _METRICS:
        md += _md_table2(sr, select, m, ratios, gradcams, ablation)
    for m in _METRICS:
        md += _md_diffs(sr, select, m, ratios, gradcams, ablation, baseline)
    md += _md_reading(sr, select, ratios, gradcams, ablation, baseline)
    md += md_comparisons(sr, select, default_comparisons(sr) if compare is None else compare, list(epochs))
    md += _md_maps(sr, ratios, [*columns, *ablations[:1], *baselines[:1]])
    md += md_diagnostics(sr)
    md += md_curves(sr, curve_keys)
    if time_curves:
        from camssl.experiments.timecurves import md_time_curves

        md += md_time_curves(sr)
    md += _md_missing(sr)
    runs_rows = run_rows(sr)
    return "\n".join(md).rstrip() + "\n", csv_rows, runs_rows


def _best_gradcam(sr: SweepResults, select: str, ratio: float, gradcams: list[str]) -> str | None:
    """The Grad-CAM setting with the highest mean validation accuracy at ``ratio``."""
    scored = []
    for s in gradcams:
        st = Stat.of(list(sr.per_seed(s, ratio, "val", select).values()))
        if st is not None:
            scored.append((st.mean, s))
    return max(scored)[1] if scored else None


def _csv_rows(
    sr: SweepResults,
    select: str,
    ratios: list[float],
    columns: list[str],
    gradcams: list[str],
    ablation: str | None,
    baseline: str | None,
) -> list[dict[str, Any]]:
    rows = []
    grid = paper_grid(sr)

    def row(
        section: str, metric: str, ratio: float | None, setting: str, st: Stat | PairedDiff | None, **kw: Any
    ) -> None:
        role = role_of(sr, setting)
        paper = kw.pop("paper", _paper_cell(role, layer_of(sr, setting), ratio) if metric == "val" and grid else None)
        rec = {
            "section": section,
            "metric": metric,
            "selection": select,
            "ratio": "" if ratio is None else format_ratio(ratio),
            "setting": setting,
            "role": role,
            "layer": layer_of(sr, setting) or "",
            "n": st.n if st else 0,
            "mean_pct": _num(st.mean if st else None),
            "std_pct": _num(st.std if st else None),
            "comparator": kw.get("comparator", ""),
            "ci95_low_pct": _num(st.low if isinstance(st, PairedDiff) else None),
            "ci95_high_pct": _num(st.high if isinstance(st, PairedDiff) else None),
            "paper_mean_pct": _num(paper[0] if paper else None),
            "paper_std_pct": _num(paper[1] if paper and len(paper) > 1 and paper[1] is not None else None),
        }
        rows.append(rec)

    for m in ("val", "test"):
        for ratio in ratios:
            for s in [*columns, *([baseline] if baseline else [])]:
                row("table1", m, ratio, s, Stat.of(list(sr.per_seed(s, ratio, m, select).values())))
        for ratio in ratios:
            best = _best_gradcam(sr, select, ratio, gradcams)
            for s in [x for x in (best, ablation) if x]:
                row("table2", m, ratio, s, Stat.of(list(sr.per_seed(s, ratio, m, select).values())))
        for ratio in ratios:
            for s in [*gradcams, *([ablation] if ablation and baseline else [])]:
                a = sr.per_seed(s, ratio, m, select)
                for comp in [x for x in (baseline, ablation) if x and x != s]:
                    d = paired_diff(a, sr.per_seed(comp, ratio, m, select))
                    row("paired_diff", m, ratio, s, d, comparator=comp,
                        paper=_paper_diff(sr, s, comp, ratio) if m == "val" else None)
    return rows


def _paper_diff(sr: SweepResults, setting: str, comparator: str, ratio: float) -> tuple[float, None] | None:
    a = _paper_cell(role_of(sr, setting), layer_of(sr, setting), ratio)
    b = _paper_cell(role_of(sr, comparator), layer_of(sr, comparator), ratio)
    if a is None or b is None:
        return None
    return (round(a[0] - b[0], 2), None)


def _md_header(sr: SweepResults, select: str, baseline: str | None, ablation: str | None, gradcam: bool) -> list[str]:
    plan = sr.plan
    n_runs, n_done = len(plan["runs"]), len(sr.results)
    any_res = next(iter(sr.results.values()), {})
    cfg = any_res.get("config", {})
    sessions = plan.get("sessions", [])
    wall = sum(s.get("wall_s", 0) for s in sessions)
    train_sum = sum(r.get("wall_time_s", 0) for r in sr.results.values())
    lines = [
        f"# Results of the sweep `{sr.dir}`",
        "",
        f"- spec: `{spec_label(plan['spec'])}`" + (f", overrides: `{' '.join(plan['overrides'])}`" if plan["overrides"] else ""),
        f"- runs: {n_done} of {n_runs} finished; seeds {', '.join(map(str, plan['seeds']))}; "
        f"ratios {', '.join(format_ratio(r) for r in plan['ratios'])}",
    ]
    if cfg:
        m, o, s = cfg.get("model", {}), cfg.get("optim", {}), cfg.get("split", {})
        lines.append(
            f"- data: {any_res.get('data')} (`{cfg.get('data', {}).get('source')}`) — {any_res.get('n_labeled')} labeled, unlabeled = ratio × labeled, "
            f"{any_res.get('n_val')} validation (val_fraction {s.get('val_fraction')}), "
            f"{any_res.get('n_test')} test images"
        )
        lines.append(
            f"- model: {m.get('name')} "
            + (f"widths {m['widths']}" if m.get("widths") else f"width {m.get('width')}")
            + f"; {o.get('epochs')} epochs of "
            f"{any_res.get('steps', 0) // max(1, any_res.get('epochs', 1))} steps, batch {o.get('batch_size')} labeled "
            f"+ {o.get('unlabeled_multiplier')}× unlabeled, lr {o.get('lr')} {o.get('schedule')}; "
            f"device {any_res.get('device')}"
        )
    if sessions:
        last = sessions[-1]
        lines.append(
            f"- machine: {last.get('machine')} (host {last.get('host')}); sweep wall time {wall / 3600:.2f} h over "
            f"{len(sessions)} session(s); sum of the runs' wall times {train_sum / 3600:.2f} h"
        )
        lines.append(f"- command: `{last.get('command')}`")
    lines += [
        f"- baseline: `{baseline or 'none'}` (supervised only, once per seed, paired with every ratio)"
        + (f"; ablation: `{ablation}` " + ("(its method without L_G, i.e. γ = 0)" if gradcam else
                                           "(the spec's `role: ablation` setting)") if ablation else ""),
        "",
        f"**Model selection:** {_RULES[select]}",
        "",
        "Cells are mean ± sample standard deviation (ddof = 1) over seeds, in %. Runs that share a seed share "
        "the split (same labeled and validation images), so differences are paired by seed.",
        "",
    ]
    if paper_grid(sr):
        lines += [
            f"**paper†** marks the paper's own number for the same cell ({PAPER}, Tables I and II: validation "
            f"accuracy). Its protocol is different: {PAPER_PROTOCOL}. It is shown for orientation, not as a "
            "like-for-like comparison.",
            "",
        ]
    return lines


def _md_table1(
    sr: SweepResults, select: str, m: _Metric, ratios: list[float], columns: list[str], baseline: str | None
) -> list[str]:
    grid = paper_grid(sr)
    if not grid:  # a sweep of other methods: every setting, then every baseline
        columns, baseline = list(sr.plan["settings"]), None
        cols = [*columns, *sr.plan["baselines"]]
        heads = [s if s in columns else f"baseline ({s})" for s in cols]
    else:
        cols = [*columns, *([baseline] if baseline else [])]
        heads = [header_label(sr, s) if s != baseline else f"baseline ({s})" for s in cols]
    lines = [f"## {'Table I' if grid else 'Accuracy'} — {m.title}, %", ""]
    if m.key == "test" and grid:
        lines += ["The paper reports no test accuracy (its official test set was never used); its validation "
                  "numbers are in the table above.", ""]
    lines += ["| ratio | " + " | ".join(heads) + " |", "|---|" + "---|" * len(cols)]
    for ratio in ratios:
        cells = []
        for s in cols:
            st = Stat.of(list(sr.per_seed(s, ratio, m.key, select).values()))
            paper = _paper_cell(role_of(sr, s), layer_of(sr, s), ratio) if m.key == "val" and grid else None
            cells.append(_ms(st, len(sr.plan["seeds"])) + _paper_ms(paper))
        lines.append(f"| {format_ratio(ratio)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _md_table2(
    sr: SweepResults, select: str, m: _Metric, ratios: list[float], gradcams: list[str], ablation: str | None
) -> list[str]:
    if not gradcams or not ablation:
        return []
    lines = [
        f"## Table II — best Grad-CAM setting vs the pseudo-label ablation (`{ablation}`), {m.title}, %",
        "",
        "The best setting per ratio is chosen on mean validation accuracy (also for the test rows, so the "
        "test set never picks it); choosing the best of several settings favours it slightly.",
        "",
    ]
    paper_cols = " | paper† Grad-CAM | paper† ablation" if m.key == "val" else ""
    lines += [
        f"| ratio | best Grad-CAM | Grad-CAM | ablation | paired Δ [95% CI]{paper_cols} |",
        "|---|---|---|---|---|" + ("---|---|" if m.key == "val" else ""),
    ]
    n = len(sr.plan["seeds"])
    for ratio in ratios:
        best = _best_gradcam(sr, select, ratio, gradcams)
        ab = sr.per_seed(ablation, ratio, m.key, select)
        cells = [format_ratio(ratio), header_label(sr, best) if best else "—"]
        if best:
            a = sr.per_seed(best, ratio, m.key, select)
            cells += [
                _ms(Stat.of(list(a.values())), n),
                _ms(Stat.of(list(ab.values())), n),
                diff_text(paired_diff(a, ab)),
            ]
        else:
            cells += ["—", _ms(Stat.of(list(ab.values())), n), "—"]
        if m.key == "val":
            key = next((k for k in PAPER_TABLE1 if abs(k - ratio) < 1e-9), None)
            if key is None:
                cells += ["—", "—"]
            else:
                layer, cell = max(PAPER_TABLE1[key].items(), key=lambda kv: kv[1][0])
                cells += [f"{cell[0]:.2f} ({layer})", f"{PAPER_ABLATION[key][0]:.2f} ± {PAPER_ABLATION[key][1]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _md_diffs(
    sr: SweepResults,
    select: str,
    m: _Metric,
    ratios: list[float],
    gradcams: list[str],
    ablation: str | None,
    baseline: str | None,
) -> list[str]:
    comps = [c for c in (baseline, ablation) if c]
    if not gradcams or not comps:
        return []
    lines = [
        f"## Paired differences — {m.title}, percentage points",
        "",
        "Mean over seeds of the per-seed difference, with a two-sided 95% Student-t confidence interval "
        "(t quantile with n − 1 degrees of freedom). **Bold** intervals exclude zero: a difference larger than "
        "the seed-to-seed noise (no correction for the number of comparisons).",
        "",
    ]
    head, rule = "| ratio | setting |", "|---|---|"
    for c in comps:
        label = "baseline" if c == baseline else "ablation"
        head += f" − {label} Δ [95% CI] |"
        rule += "---|"
        if m.key == "val":
            head += f" paper† − {label} |"
            rule += "---|"
    lines += [head, rule]
    # the ablation's own row (− baseline) says whether pseudo-labelling helps at all here
    rows = [*gradcams, *([ablation] if ablation and baseline else [])]
    for ratio in ratios:
        for s in rows:
            a = sr.per_seed(s, ratio, m.key, select)
            cells = [format_ratio(ratio), header_label(sr, s) if s != ablation else f"ablation ({s})"]
            for c in comps:
                if c == s:
                    cells += ["—", "—"] if m.key == "val" else ["—"]
                    continue
                cells.append(diff_text(paired_diff(a, sr.per_seed(c, ratio, m.key, select))))
                if m.key == "val":
                    p = _paper_diff(sr, s, c, ratio)
                    cells.append("—" if p is None else f"{p[0]:+.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    if m.key == "val":
        lines += ["", "paper† differences are differences of the paper's means (unpaired; no interval available)."]
    return [*lines, ""]


def _md_reading(
    sr: SweepResults, select: str, ratios: list[float], gradcams: list[str], ablation: str | None, baseline: str | None
) -> list[str]:
    lines = ["## Summary of the paired comparisons", ""]
    any_line = False
    comparisons = [(gradcams, baseline, "Grad-CAM − the supervised baseline", "(ratio, layer) cells"),
                   (gradcams, ablation, "Grad-CAM − the pseudo-label ablation", "(ratio, layer) cells"),
                   ([ablation] if ablation else [], baseline, "the pseudo-label ablation − the supervised baseline",
                    "ratios")]
    for m in _METRICS:
        for settings, comp, what, unit in comparisons:
            if not comp or not settings:
                continue
            diffs = [paired_diff(sr.per_seed(s, r, m.key, select), sr.per_seed(comp, r, m.key, select))
                     for r in ratios for s in settings]
            diffs = [d for d in diffs if d is not None]
            if not diffs:
                continue
            up = sum(1 for d in diffs if d.excludes_zero and d.mean > 0)
            down = sum(1 for d in diffs if d.excludes_zero and d.mean < 0)
            pos = sum(1 for d in diffs if d.mean > 0)
            lines.append(
                f"- {m.title.split(' (')[0]}, {what}: positive mean in {pos} of {len(diffs)} {unit}; "
                f"interval above zero in {up}, below zero in {down}."
            )
            any_line = True
    if not any_line:
        return []
    return [*lines, ""]


def _md_maps(sr: SweepResults, ratios: list[float], settings: list[str]) -> list[str]:
    """Final-epoch map diagnostics: do the maps of the two views agree, and how many are blank?"""
    keys = ("map_agreement", "blank_maps")
    if not any(k in rec for rec in sr.last_epoch.values() for k in keys):
        return []
    lines = [
        "## Grad-CAM map diagnostics at the final epoch",
        "",
        "From each run's last `metrics.jsonl` record (64 fixed validation images, eval mode): `map_agreement` is "
        "the mean correlation between an image's Grad-CAM map carried into its strong view and the view's own map "
        "(a blank map counts 0); `blank` is the share of images whose map is all zero. Each setting is measured "
        "at its own target layer (shown in the header; runs without Grad-CAM at `method.gradcam.layers`' first entry). "
        "Cells: agreement / blank, mean over seeds.",
        "",
    ]
    heads = [f"{'gradcam' if header_label(sr, s) == layer_of(sr, s) else s} @{sr.map_layer(s) or layer_of(sr, s) or '—'}"
             for s in settings]
    lines += ["| ratio | " + " | ".join(heads) + " |", "|---|" + "---|" * len(settings)]
    for ratio in ratios:
        cells = []
        for s in settings:
            agree, blank = (sr.diagnostic(s, ratio, k) for k in keys)
            cells.append("—" if agree is None or blank is None else f"{agree.mean:.2f} / {100 * blank.mean:.0f}%")
        lines.append(f"| {format_ratio(ratio)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _md_missing(sr: SweepResults) -> list[str]:
    missing = [r["id"] for r in sr.plan["runs"] if r["id"] not in sr.results]
    if not missing:
        return []
    shown = ", ".join(f"`{m}`" for m in missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
    return [f"## Missing runs ({len(missing)})", "", f"Not finished (left out of every statistic above): {shown}.", ""]


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = _stdio.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def write_tables(
    sweep_dir: str | Path, out: str | Path | None = None, select: str = "final", *, name: str = "results",
    compare: Sequence[str] | None = None, epochs: str | None = None, curve_keys: Sequence[str] = (),
    time_curves: bool = False,
) -> list[Path]:
    """Write NAME.md, NAME.csv, the runs' CSV, Figure 3 (and the curves' figure); returns their paths.

    ``time_curves``: validation accuracy against (scaled) wall-clock minutes, a table per setting
    and NAME-time.png (:mod:`camssl.experiments.timecurves`).
    ``name`` "results" (default) gives results.md, results.csv, runs.csv, figure3.png; another
    name X gives X.md, X.csv, X-runs.csv, X-figure3.png (several sweeps' tables in one
    docs/ folder). ``compare`` ("A:B" texts), ``epochs`` ("1,2,4") and ``curve_keys``: see
    :func:`build_tables`. A hand-written reading between the READING markers of an existing
    NAME.md in ``out`` is kept.
    """
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"--name {name!r} must be a plain file name without a suffix, e.g. --name results-camloss")
    sr = SweepResults.load(sweep_dir)
    out = Path(out) if out is not None else sr.dir
    pairs = None if not compare else parse_comparisons(sr, compare)
    md_path = out / f"{name}.md"
    md, rows, runs = build_tables(sr, select, reading=io.kept_section(md_path, READING_BEGIN, READING_END),
                                  compare=pairs, epochs=parse_epochs(epochs), curve_keys=list(curve_keys),
                                  time_curves=time_curves)
    stem = "" if name == "results" else f"{name}-"
    paths = [md_path, out / f"{name}.csv", out / f"{stem}runs.csv", out / f"{stem}figure3.png"]
    io.write_text(paths[0], md)
    io.write_text(paths[1], _csv_text(rows))
    io.write_text(paths[2], _csv_text(runs))
    io.write_bytes(paths[3], figure3(sr, select))
    png = curves_png(sr, curve_keys) if curve_keys else None
    if png is not None:
        paths.append(out / f"{stem}curves.png")
        io.write_bytes(paths[-1], png)
    if time_curves:
        from camssl.experiments.timecurves import time_curves_png

        png = time_curves_png(sr)
        if png is not None:
            paths.append(out / f"{stem}time.png")
            io.write_bytes(paths[-1], png)
    return paths
