"""Figure 3 of the paper for a sweep: accuracy against the unlabeled/labeled ratio."""

from __future__ import annotations


from camssl.experiments.results import _METRICS, SweepResults, header_label, settings_by_role
from camssl.experiments.spec import format_ratio
from camssl.experiments.stats import Stat
from camssl.viz import figure_png


def figure3(sr: SweepResults, select: str = "final") -> bytes:
    """PNG bytes: accuracy vs ratio, one line per Grad-CAM layer plus baseline and ablation, ±1 std bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [float(r) for r in sr.plan["ratios"]]
    columns, ablations, baselines = settings_by_role(sr)
    lines_spec = [(s, header_label(sr, s), "-", "o") for s in columns]
    lines_spec += [(s, f"ablation ({s})", "--", "s") for s in ablations[:1]]
    lines_spec += [(s, f"baseline ({s})", ":", "^") for s in baselines[:1]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    n = max(1, len(lines_spec))
    span = (max(ratios) - min(ratios)) if len(ratios) > 1 else 1.0
    for ax, m in zip(axes, _METRICS, strict=True):
        for i, (s, label, ls, marker) in enumerate(lines_spec):
            xs, ys, es = [], [], []
            for r in ratios:
                st = Stat.of(list(sr.per_seed(s, r, m.key, select).values()))
                if st is None:
                    continue
                xs.append(r + (i - (n - 1) / 2) * 0.012 * span)  # small offsets keep the bars apart
                ys.append(st.mean)
                es.append(st.std or 0.0)
            if xs:
                ax.errorbar(xs, ys, yerr=es, label=label, linestyle=ls, marker=marker, capsize=3, linewidth=1.4)
        ax.set_xticks(ratios, [format_ratio(r) for r in ratios])
        ax.set_xlabel("unlabeled / labeled ratio")
        ax.set_ylabel("accuracy, %")
        ax.set_title(m.title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    rule = "final epoch" if select == "final" else "best validation epoch"
    fig.suptitle(f"Figure 3: accuracy vs ratio (mean ± std over {len(sr.plan['seeds'])} seeds; {rule})", fontsize=11)
    return figure_png(fig)
