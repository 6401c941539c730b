"""What ``camssl bench`` writes: the Markdown report and its measurements as JSON beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from camssl import io
from camssl.bench.measure import StepProfile
from camssl.bench.options import E2E_BEGIN, E2E_END
from camssl.bench.report import render, targets
from camssl.bench.results import BenchResult


def as_json(res: BenchResult) -> dict[str, Any]:
    """The measurements of a benchmark run as plain data (``bench.json`` beside the Markdown report)."""
    widths = []
    for wr in res.widths:
        pl = wr.timings.get("pseudo_label")
        pl_mem = wr.profiles.get("pseudo_label", StepProfile()).peak_bytes if wr.profiles else None
        steps = []
        for st in wr.types:
            tm = wr.timings.get(st.key)
            if tm is None or not tm.wall:
                continue
            mem = wr.profiles.get(st.key, StepProfile()).peak_bytes if wr.profiles else None
            steps.append({
                "key": st.key, "label": st.label, "kind": st.kind, "layer": st.layer, "mode": st.mode,
                "images": st.images, "median_s": tm.median, "iqr_s": tm.iqr, "cpu_median_s": tm.cpu_median,
                "images_per_s": st.images / tm.median if st.images else None,
                "x_pseudo_label": tm.median / pl.median if pl is not None and pl.wall else None,
                "peak_bytes": mem, "memory_x_pseudo_label": mem / pl_mem if mem and pl_mem else None,
            })
        widths.append({"width": wr.width, "channels_last": wr.channels_last, "steps": steps})
    checks = [{"kind": c.kind, "what": c.what, "limit": c.limit, "at_most": c.at_most, "measured": c.measured,
               "met": c.ok}
              for c in targets(res)] if any(w.width == res.target_width for w in res.widths) else []
    experiments = [{"title": e.title, "header": list(e.header), "rows": [list(r) for r in e.rows],
                    "verdict": e.verdict, "note": e.note} for e in res.experiments]
    return {"format": "camssl-bench", "version": 1, "command": res.options.command, "device": str(res.device),
            "machine": res.machine, "data": res.data, "seconds": res.seconds, "pending": res.pending,
            "target_width": res.target_width, "widths": widths, "checks": checks, "experiments": experiments}


def write_report(res: BenchResult) -> Path:
    """The Markdown report (``--out``) and its measurements as JSON beside it (same name, ``.json``)."""
    path = Path(res.options.out)
    io.write_text(path, render(res, keep=io.kept_section(path, E2E_BEGIN, E2E_END)))
    io.write_json(path.with_suffix(".json"), as_json(res))
    return path
