"""A sweep directory's results, read once: per run, per setting and ratio, per seed (for ``camssl table``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camssl import io
from camssl.errors import UserError
from camssl.experiments.runner import read_result
from camssl.experiments.spec import SWEEP_FORMAT, format_ratio
from camssl.experiments.stats import Stat


@dataclass
class _Metric:
    key: str  # "val" | "test"
    title: str


# final-epoch training diagnostics: runs.csv columns, and the table of those any run logged (in this order)
DIAGNOSTIC_KEYS = ("caam_cam_agreement", "caam_outside_share", "loss_cam", "teacher_acc", "loss_g", "map_agreement",
                   "blank_maps", "mask_rate", "pl_acc", "imputed_acc", "imputed_rows_pl_acc", "d_before",
                   "d_after", "seen_unlabeled", "loss_vat")

_METRICS = (_Metric("val", "validation accuracy (the paper's metric)"), _Metric("test", "test accuracy"))
_RULES = {
    "final": (
        "**final epoch**: every number is from the weights after the last epoch — its validation "
        "accuracy (the paper's metric) and its test accuracy (`camssl table --select best-val` gives the "
        "other rule)."
    ),
    "best-val": (
        "**best validation epoch**: validation accuracy is the best seen during training (what the authors' "
        "code reports; the maximum over epochs biases it upward) and test accuracy is that of the weights at "
        "that epoch (model selection on validation data; the test set is never used to choose)."
    ),
}


def _values(result: dict[str, Any], select: str) -> dict[str, float | None]:
    if select == "final":
        v, t = result.get("val_acc"), result.get("test_acc")
    else:
        v, t = result.get("best_val_acc"), result.get("test_acc_at_best_val")
    return {"val": None if v is None else 100 * float(v), "test": None if t is None else 100 * float(t)}


@dataclass
class SweepResults:
    """The plan of a sweep directory and the results of its finished runs."""

    dir: Path
    plan: dict[str, Any]
    results: dict[str, dict[str, Any]]  # run id -> result.json
    last_epoch: dict[str, dict[str, Any]] = field(default_factory=dict)  # run id -> its last metrics.jsonl record
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # run id -> all its metrics.jsonl records

    @classmethod
    def load(cls, sweep_dir: str | Path) -> SweepResults:
        d = Path(sweep_dir)
        path = d / "sweep.json"
        if not path.is_file():
            raise UserError(f"'{d}' holds no sweep.json; give the --out directory of a camssl sweep")
        try:
            plan = json.loads(path.read_text())
        except ValueError as e:
            raise UserError(f"'{path}' is not valid JSON ({e}); run the sweep again to rewrite it") from None
        if not isinstance(plan, dict) or plan.get("format") != SWEEP_FORMAT:
            raise UserError(f"'{path}' is not a camssl sweep plan")
        results, last_epoch, all_records = {}, {}, {}
        for r in plan["runs"]:
            res = read_result(d / r["id"])
            if res is not None:
                results[r["id"]] = res
                records = io.read_jsonl(d / r["id"] / "metrics.jsonl")
                if records:
                    last_epoch[r["id"]] = records[-1]
                    all_records[r["id"]] = records
        return cls(d, plan, results, last_epoch, all_records)

    def runs(self, **match: Any) -> list[dict[str, Any]]:
        return [r for r in self.plan["runs"] if all(r.get(k) == v for k, v in match.items())]

    def cell_runs(self, setting: str, ratio: float | None) -> list[dict[str, Any]]:
        """The finished runs of one cell (ratio None, or a baseline setting: every seed's baseline run)."""
        return [
            r for r in self.plan["runs"]
            if r["setting"] == setting and r["id"] in self.results
            and (ratio is None or r["group"] != "grid" or r["ratio"] == ratio)
        ]

    def per_seed(self, setting: str, ratio: float | None, metric: str, select: str) -> dict[int, float]:
        """seed -> value (%) of one cell's finished runs (ratio None: a baseline)."""
        out = {}
        for r in self.cell_runs(setting, ratio):
            v = _values(self.results[r["id"]], select)[metric]
            if v is not None:
                out[int(r["seed"])] = v
        return out

    def per_seed_result(self, setting: str, ratio: float | None, key: str) -> dict[int, float]:
        """seed -> 100 × ``key`` of result.json, for the cell's finished runs that recorded it."""
        found = ((r["seed"], self.results[r["id"]].get(key)) for r in self.cell_runs(setting, ratio))
        return {int(seed): 100 * float(v) for seed, v in found if isinstance(v, (int, float))}

    def per_seed_epoch(self, setting: str, ratio: float | None, key: str, epoch: int) -> dict[int, float]:
        """seed -> the value of ``key`` in the metrics.jsonl record of ``epoch`` (finished runs only)."""
        out = {}
        for r in self.cell_runs(setting, ratio):
            rec = next((x for x in self.records.get(r["id"], []) if x.get("epoch") == epoch), {})
            if isinstance(rec.get(key), (int, float)):
                out[int(r["seed"])] = float(rec[key])
        return out

    def diagnostic(self, setting: str, ratio: float | None, key: str) -> Stat | None:
        """Mean ± std over seeds of a final-epoch training diagnostic (``map_agreement``, ``blank_maps``...)."""
        values = [self.last_epoch.get(r["id"], {}).get(key) for r in self.cell_runs(setting, ratio)]
        return Stat.of([float(v) for v in values if isinstance(v, (int, float))])

    def map_layer(self, setting: str) -> str | None:
        """The layer a setting's map diagnostics were measured at (``TrainConfig.diagnostic_layer``)."""
        from camssl.config import TrainConfig, drop_other_methods_keys, from_dict
        from camssl.errors import ConfigError

        for r in self.plan["runs"]:
            res = self.results.get(r["id"])
            if r["setting"] == setting and res:
                try:
                    return from_dict(TrainConfig, drop_other_methods_keys(res.get("config", {}))).diagnostic_layer()
                except ConfigError:
                    return None
        return None


def settings_by_role(sr: SweepResults) -> tuple[list[str], list[str], list[str]]:
    """(Table I columns from the grid, ablation settings, baseline settings), in spec order."""
    roles = {r["setting"]: r["role"] for r in sr.plan["runs"]}
    columns = [s for s in sr.plan["settings"] if roles.get(s) != "ablation"]
    ablations = [s for s in sr.plan["settings"] if roles.get(s) == "ablation"]
    return columns, ablations, list(sr.plan["baselines"])


def layer_of(sr: SweepResults, setting: str) -> str | None:
    for r in sr.plan["runs"]:
        if r["setting"] == setting and r["role"] == "method":
            return r["layer"]
    return None


def header_label(sr: SweepResults, setting: str) -> str:
    layer = layer_of(sr, setting)
    gradcam_layers = [layer_of(sr, s) for s in sr.plan["settings"] if layer_of(sr, s)]
    return layer if layer and gradcam_layers.count(layer) == 1 else setting


def role_of(sr: SweepResults, setting: str) -> str:
    return next((r["role"] for r in sr.plan["runs"] if r["setting"] == setting), "other")


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def run_rows(sr: SweepResults) -> list[dict[str, Any]]:
    """One runs.csv row per planned run: its cell, accuracies, time and final-epoch diagnostics."""
    rows = []
    for r in sr.plan["runs"]:
        res = sr.results.get(r["id"], {})
        rows.append(
            {
                "id": r["id"],
                "setting": r["setting"],
                "role": r["role"],
                "layer": r["layer"] or "",
                "ratio": "" if r["ratio"] is None else format_ratio(r["ratio"]),
                "seed": r["seed"],
                "finished": bool(res),
                "val_final_pct": _num(_values(res, "final")["val"]) if res else "",
                "test_final_pct": _num(_values(res, "final")["test"]) if res else "",
                "val_best_pct": _num(_values(res, "best-val")["val"]) if res else "",
                "test_at_best_val_pct": _num(_values(res, "best-val")["test"]) if res else "",
                "best_val_epoch": res.get("best_val_epoch", ""),
                "epochs": res.get("epochs", ""),
                "wall_time_s": _num(res.get("wall_time_s")) if res else "",
                "images_per_s": _num(res.get("images_per_s")) if res else "",
                **{f"final_{k}": _num(sr.last_epoch.get(r["id"], {}).get(k)) for k in DIAGNOSTIC_KEYS},
            }
        )
    return rows
