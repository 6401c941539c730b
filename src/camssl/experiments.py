"""Sweeps and result tables: ``camssl sweep SPEC --out DIR`` and ``camssl table DIR``.

A **sweep spec** is a config file (``base:`` plus any config sections, applied to every
run) with one extra section, ``sweep:``, that spans the grid::

    base: cpu                       # preset or YAML path (relative to this file)
    model: {width: 0.25}            # config changes for every run
    optim: {epochs: 8}
    sweep:
      seeds: [0, 1, 2]              # or a count: 3 means [0, 1, 2]
      ratios: [0.5, 1.0, 2.0]       # split.ratio of every grid setting
      settings:                     # name: config changes; each runs at every ratio and seed
        gradcam-layer3: {method.name: gradcam, method.layers: [layer3]}
        pseudo_label: {method.name: pseudo_label}
      baseline:                     # name: config changes; runs once per seed (no ratio)
        supervised: {method.name: supervised, split.ratio: 0}

A run's config is: the spec's base ← the spec's sections ← command-line overrides ←
the setting's changes ← the grid (``split.ratio``, and ``seed`` = ``split.seed`` = the
seed). Runs that share a seed therefore share the split: the labeled and validation sets
are drawn before the unlabeled set (:mod:`camssl.data.splits`), so they do not depend on
the ratio, and every comparison in the tables is paired by seed.

Each run has its own directory (``r0.5/gradcam-layer3/s0``, ``baseline/supervised/s0``)
and runs in its own ``python -m camssl train --resume RUN_DIR`` subprocess (the runner
writes the run's config.yaml first), so a crash or a kill stays isolated and a later
sweep continues it from its last checkpoint; runs with a result.json are skipped. The
plan is written to ``sweep.json``; each run's output to ``RUN_DIR/train.log``.

``camssl table DIR`` reads the plan and the runs' result.json files and writes
``results.md``, ``results.csv``, ``runs.csv`` and ``figure3.png``: the paper's Table I,
Table II and Figure 3 with mean ± std over seeds, paired differences with 95% Student-t
confidence intervals, validation and test accuracy, and the paper's own numbers beside
ours (labelled as the paper's: a different protocol).
"""

from __future__ import annotations

import argparse
import copy
import csv
import fcntl
import fnmatch
import io as _stdio
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camssl import io
from camssl.config import (
    PRESET_DIR,
    TrainConfig,
    dump_yaml,
    from_dict,
    load_yaml_tree,
    parse_override,
    read_yaml,
    set_path,
    to_dict,
)
from camssl.errors import ConfigError, DataError, UserError

SWEEP_FORMAT = "camssl-sweep"
SWEEP_VERSION = 1
SWEEP_KEYS = ("seeds", "ratios", "settings", "baseline")
GRID_KEYS = ("seed", "split.seed", "split.ratio")  # set by the grid, not by settings
# fields that do not change what a run computes: a run dir may differ from the plan in these
IGNORED_KEYS = ("threads", "progress", "out_dir")
SELECTIONS = ("final", "best-val")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

# ---------------------------------------------------------------- the paper's numbers

PAPER = "Lee & Cho 2021 (arXiv 2108.13673)"
# Table I, validation accuracy % (mean, std): ratio -> layer -> cell
PAPER_TABLE1: dict[float, dict[str, tuple[float, float]]] = {
    0.5: {"layer1": (88.87, 0.88), "layer2": (89.46, 1.58), "layer3": (89.89, 0.41), "layer4": (89.63, 0.15)},
    1.0: {"layer1": (89.33, 1.47), "layer2": (89.59, 1.24), "layer3": (90.41, 0.12), "layer4": (90.10, 0.03)},
    2.0: {"layer1": (90.48, 0.88), "layer2": (89.98, 0.88), "layer3": (90.99, 0.88), "layer4": (90.43, 0.88)},
}
PAPER_BASELINE = (89.61, 0.84)  # supervised only; the paper lists it once (it does not depend on the ratio)
PAPER_ABLATION = {0.5: (89.19, 1.16), 1.0: (89.64, 1.57), 2.0: (90.56, 1.44)}  # Table II, L_S + L_P
PAPER_PROTOCOL = (
    "ResNet-50 fine-tuned from ImageNet weights on CIFAR-10 upsampled to 256 px, batches of 4 + 4, "
    "the best validation accuracy seen during training, unseeded splits, number of runs not stated"
)

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


# ---------------------------------------------------------------- the spec and the plan


@dataclass
class Run:
    """One planned training run."""

    id: str  # also its directory under the sweep dir, e.g. "r0.5/gradcam-layer3/s0"
    setting: str
    group: str  # "grid" | "baseline"
    role: str  # "gradcam" | "ablation" | "baseline" | "other"
    layer: str | None  # Grad-CAM target layer(s) of a gradcam run, comma-joined
    ratio: float | None  # None for a baseline run
    seed: int
    config: TrainConfig = field(repr=False)

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "setting": self.setting,
            "group": self.group,
            "role": self.role,
            "layer": self.layer,
            "ratio": self.ratio,
            "seed": self.seed,
            "method": self.config.method.name,
        }


@dataclass
class Plan:
    """A sweep expanded into runs (in execution order: seed-major, baseline first)."""

    spec: Path
    seeds: list[int]
    ratios: list[float]
    settings: list[str]
    baselines: list[str]
    overrides: list[str]
    runs: list[Run]

    def record(self) -> dict[str, Any]:
        return {
            "format": SWEEP_FORMAT,
            "version": SWEEP_VERSION,
            "spec": str(self.spec),
            "overrides": self.overrides,
            "seeds": self.seeds,
            "ratios": self.ratios,
            "settings": self.settings,
            "baselines": self.baselines,
            "runs": [r.record() for r in self.runs],
        }


def format_ratio(ratio: float) -> str:
    """0.5 → "0.5", 1 → "1.0", 0.25 → "0.25" (used in run directory names and tables)."""
    return f"{ratio:.1f}" if abs(ratio * 10 - round(ratio * 10)) < 1e-9 else f"{ratio:g}"


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _seeds(value: Any, where: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"{where}.seeds={value} is invalid: give a count >= 1 or a list of seeds")
        return list(range(value))
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}.seeds must be a count or a non-empty list of seeds, e.g. [0, 1, 2]; got {value!r}")
    for s in value:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"{where}.seeds: {s!r} is not a non-negative integer")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}.seeds lists a seed twice: {value}")
    return list(value)


def _ratios(value: Any, where: str) -> list[float]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where}.ratios must be a list of numbers, e.g. [0.5, 1.0, 2.0]; got {value!r}")
    out = []
    for r in value:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < math.inf:
            raise ConfigError(f"{where}.ratios: {r!r} is not a number >= 0")
        out.append(float(r))
    if len({format_ratio(r) for r in out}) != len(out):
        raise ConfigError(f"{where}.ratios lists a ratio twice: {value}")
    return out


def _named_changes(value: Any, where: str, forbidden: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must map names to config changes, e.g. pseudo_label: {{method.name: pseudo_label}}")
    out = {}
    for name, changes in value.items():
        name = str(name)
        if not _NAME.match(name):
            raise ConfigError(
                f"{where}: '{name}' is not a valid name (letters, digits, '.', '_', '+', '-'; it names a directory)"
            )
        if changes is not None and not isinstance(changes, dict):
            raise ConfigError(
                f"{where}.{name} must be a mapping of config changes (section.key: value); got {changes!r}"
            )
        flat = _flatten(changes or {})
        for key in flat:
            if key in forbidden:
                raise ConfigError(
                    f"{where}.{name} sets {key}, which the sweep's grid sets (sweep.seeds / sweep.ratios)"
                )
        out[name] = flat
    return out


def spec_path(spec: str | Path) -> Path:
    """A spec file, or the name of a packaged one (``table1-cpu`` → camssl/configs/table1-cpu.yaml)."""
    path = Path(spec)
    if path.is_file():
        return path
    packaged = PRESET_DIR / f"{spec}.yaml"
    if path.suffix not in (".yaml", ".yml") and packaged.is_file():
        return packaged
    shipped = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if "sweep" in read_yaml(p)))
    raise ConfigError(f"sweep spec '{spec}' does not exist; give a YAML file or a shipped spec ({shipped or 'none'})")


def load_spec(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config tree of the spec, its ``sweep:`` section); ConfigError on a malformed spec."""
    path = spec_path(path)
    tree = load_yaml_tree(str(path))
    sweep = tree.pop("sweep", None)
    if not isinstance(sweep, dict):
        raise ConfigError(
            f"sweep spec '{path}' has no 'sweep:' section (with seeds, ratios, settings, baseline); "
            "see configs/table1-cpu.yaml"
        )
    unknown = sorted(set(sweep) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"unknown key sweep.{unknown[0]} in '{path}'; valid keys in sweep: {', '.join(SWEEP_KEYS)}")
    from_dict(TrainConfig, tree)  # unknown config keys fail here, before anything runs
    return tree, sweep


def _role(group: str, cfg: TrainConfig) -> tuple[str, str | None]:
    if group == "baseline":
        return "baseline", None
    if cfg.method.name == "gradcam":
        return "gradcam", ",".join(cfg.method.layers)
    if cfg.method.name == "pseudo_label":
        return "ablation", None
    return "other", None


def _build(tree: dict[str, Any], changes: Iterable[tuple[str, Any]], where: str) -> TrainConfig:
    t = copy.deepcopy(tree)
    try:
        for k, v in changes:
            set_path(t, k, v)
        cfg = from_dict(TrainConfig, t)
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return cfg


def plan_sweep(spec: str | Path, overrides: Sequence[str] = ()) -> Plan:
    """Read a sweep spec and expand it into runs, each with its full, validated config."""
    spec = spec_path(spec)
    tree, sweep = load_spec(spec)
    where = f"sweep spec '{spec}'"
    seeds = _seeds(sweep.get("seeds"), "sweep")
    ratios = _ratios(sweep.get("ratios"), "sweep")
    settings = _named_changes(sweep.get("settings"), "sweep.settings", GRID_KEYS)
    baselines = _named_changes(sweep.get("baseline"), "sweep.baseline", GRID_KEYS[:2])
    if not settings and not baselines:
        raise ConfigError(f"{where} has no runs: list sweep.settings and/or sweep.baseline")
    if settings and not ratios:
        raise ConfigError(f"{where}: sweep.settings need sweep.ratios (e.g. [0.5, 1.0, 2.0])")
    both = sorted(set(settings) & set(baselines))
    if both:
        raise ConfigError(f"{where}: '{both[0]}' names both a setting and a baseline; give them different names")
    cli = [parse_override(o) for o in overrides]
    for k, _ in cli:
        if k in GRID_KEYS:
            raise ConfigError(
                f"override {k}=... is set by the sweep's grid; change sweep.seeds or sweep.ratios in the spec"
            )

    runs: list[Run] = []
    for seed in seeds:
        grid = [(k, seed) for k in ("seed", "split.seed")]
        for name, changes in baselines.items():
            cfg = _build(tree, [*cli, *changes.items(), *grid], f"{where}, baseline {name}")
            runs.append(Run(f"baseline/{name}/s{seed}", name, "baseline", "baseline", None, None, seed, cfg))
        for ratio in ratios:
            for name, changes in settings.items():
                cfg = _build(tree, [*cli, *changes.items(), ("split.ratio", ratio), *grid], f"{where}, setting {name}")
                role, layer = _role("grid", cfg)
                runs.append(Run(f"r{format_ratio(ratio)}/{name}/s{seed}", name, "grid", role, layer, ratio, seed, cfg))
    return Plan(spec, seeds, ratios, list(settings), list(baselines), list(overrides), runs)


# ---------------------------------------------------------------- run directories


def _config_difference(saved: TrainConfig, planned: TrainConfig) -> str | None:
    a, b = _flatten(to_dict(saved)), _flatten(to_dict(planned))
    for key in sorted(set(a) | set(b)):
        if key in IGNORED_KEYS:
            continue
        if a.get(key) != b.get(key):
            return f"{key}={a.get(key)!r} there, {b.get(key)!r} in the plan"
    return None


def run_state(run_dir: Path, cfg: TrainConfig) -> tuple[str, str]:
    """("done" | "resume" | "new" | "conflict", detail) of a planned run's directory."""
    if not (run_dir / "config.yaml").exists():
        if run_dir.exists() and any(run_dir.iterdir()):
            return "conflict", f"'{run_dir}' holds files but no run (no config.yaml); move them away"
        return "new", ""
    try:
        saved = from_dict(TrainConfig, read_yaml(run_dir / "config.yaml"))
    except ConfigError as e:
        return "conflict", f"its config.yaml is unreadable ({e})"
    diff = _config_difference(saved, cfg)
    if diff:
        return "conflict", (
            f"'{run_dir}' holds a run with another config ({diff}); give the same spec and overrides "
            "as when it started, or use another --out"
        )
    if (run_dir / "result.json").exists():
        return "done", ""
    epochs = len(io.read_jsonl(run_dir / "metrics.jsonl")) if (run_dir / "last.pt").exists() else 0
    return "resume", f"after epoch {epochs}" if epochs else "from the start"


def _result(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None


def _pct(x: Any) -> str:
    return "—" if not isinstance(x, (int, float)) else f"{100 * x:.1f}%"


def _brief(result: dict[str, Any] | None) -> str:
    if not result:
        return "no result"
    return f"val {_pct(result.get('val_acc'))} test {_pct(result.get('test_acc'))}"


def _failure_reason(log_path: Path, offset: int, rc: int) -> str:
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        text = ""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    msg = next((l for l in reversed(lines) if l.startswith("error:")), None)
    if msg is None:
        msg = next((l for l in reversed(lines) if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b", l)), None)
    if msg is None:
        msg = lines[-1] if lines else "no output"
    if rc < 0:
        try:
            how = f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            how = f"killed by signal {-rc}"
    else:
        how = f"exit {rc}"
    msg = msg if len(msg) <= 400 else msg[:397] + "..."
    return f"{how}: {msg}"


@dataclass
class _Active:
    run: Run
    proc: subprocess.Popen[bytes]
    log_offset: int
    started: float
    resumed: str


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def run_sweep(
    plan: Plan,
    out: str | Path,
    *,
    jobs: int = 1,
    only: Sequence[str] = (),
    dry_run: bool = False,
    command: str = "",
    log: Callable[[str], None] = print,
) -> int:
    """Run (or continue) a planned sweep; returns the number of failed runs.

    Finished runs (result.json) are skipped, unfinished ones resumed from their last
    checkpoint, new ones started; at most ``jobs`` subprocesses at once, each with
    ``max(1, cores // jobs)`` threads. A failing run does not stop the others.
    """
    out = Path(out)
    if jobs < 1:
        raise UserError(f"--jobs {jobs} is invalid: run at least 1 at a time")
    runs = [r for r in plan.runs if not only or any(fnmatch.fnmatch(r.id, p) for p in only)]
    if not runs:
        raise UserError(
            f"--only {' '.join(only)} matches none of the {len(plan.runs)} runs (ids look like r0.5/pseudo_label/s0)"
        )
    _check_sources(runs)
    threads = max(1, _cores() // jobs)
    states = {r.id: run_state(out / r.id, r.config) for r in runs}
    counts = {k: sum(1 for s, _ in states.values() if s == k) for k in ("done", "resume", "new", "conflict")}
    total = len(runs)
    log(
        f"sweep {out}: {total} runs ({counts['done']} finished, {counts['resume']} to resume, {counts['new']} new"
        + (f", {counts['conflict']} in conflict" if counts["conflict"] else "")
        + f"); {jobs} at a time, {threads} thread{'s' if threads > 1 else ''} each"
    )
    if dry_run:
        for r in runs:
            state, detail = states[r.id]
            log(f"  {r.id:<34} {state}{' ' + detail if detail else ''}")
        log("dry run: nothing was started or written")
        return 0

    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / ".sweep.lock", "w")  # noqa: SIM115 - held (and inherited by the runs) until the sweep ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UserError(
            f"another camssl sweep is working in '{out}' (or runs it started are still finishing); "
            "wait for it or stop it first"
        ) from None
    try:
        return _execute(plan, out, runs, states, jobs, threads, lock.fileno(), command, log)
    finally:
        lock.close()


def _check_sources(runs: Sequence[Run]) -> None:
    """Fail before anything starts when a run's data is missing (else every run would fail)."""
    for key in ("source", "test_source"):
        for src in sorted({getattr(r.config.data, key) for r in runs} - {None, "mini"}):
            if not Path(src).expanduser().exists():
                raise DataError(
                    f"data.{key} '{src}' does not exist; point the sweep at the data, e.g. "
                    f"camssl sweep SPEC --out DIR data.{key}=/path/to/cifar10"
                )


def _session_record(out: Path, plan: Plan, command: str, jobs: int, threads: int) -> dict[str, Any]:
    previous = []
    try:
        previous = json.loads((out / "sweep.json").read_text()).get("sessions", [])
    except (OSError, ValueError, AttributeError):
        pass
    session = {
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "jobs": jobs,
        "threads_per_run": threads,
        "host": platform.node(),
        "machine": f"{_cpu_name()}, {_cores()} cores available, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    return {**plan.record(), "sessions": [*previous, session]}


def _execute(
    plan: Plan,
    out: Path,
    runs: list[Run],
    states: dict[str, tuple[str, str]],
    jobs: int,
    threads: int,
    lock_fd: int,
    command: str,
    log: Callable[[str], None],
) -> int:
    record = _session_record(out, plan, command, jobs, threads)
    io.write_json(out / "sweep.json", record)
    t_start = time.time()
    total = len(runs)
    done = 0
    failures: list[tuple[str, str]] = []
    ran = finished = skipped = 0
    queue: list[Run] = []
    for r in runs:
        state, detail = states[r.id]
        if state == "done":
            done += 1
            skipped += 1
            log(f"[{done}/{total}] {r.id} already finished ({_brief(_result(out / r.id))}), skipped")
        elif state == "conflict":
            done += 1
            failures.append((r.id, detail))
            log(f"[{done}/{total}] {r.id} FAILED: {detail}")
        else:
            queue.append(r)

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    active: list[_Active] = []

    def launch(r: Run) -> None:
        run_dir = out / r.id
        state, detail = states[r.id]
        if state == "new":
            run_dir.mkdir(parents=True, exist_ok=True)
            io.write_text(run_dir / "config.yaml", dump_yaml(r.config))
        cmd = [sys.executable, "-m", "camssl", "train", "--resume", str(run_dir)]
        logf = open(run_dir / "train.log", "ab")  # noqa: SIM115 - closed when the run ends
        offset = logf.tell()
        how = "new run" if state == "new" else f"resuming {detail}"
        logf.write(f"=== camssl sweep {time.strftime('%Y-%m-%d %H:%M:%S')}: {how}: {shlex.join(cmd)}\n".encode())
        logf.flush()
        try:
            proc = subprocess.Popen(
                cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, pass_fds=(lock_fd,)
            )
        finally:
            logf.close()
        active.append(_Active(r, proc, offset, time.time(), "" if state == "new" else detail))

    def finish(a: _Active, rc: int) -> None:
        nonlocal done, ran, finished
        done += 1
        ran += 1
        run_dir = out / a.run.id
        minutes = (time.time() - a.started) / 60
        result = _result(run_dir) if rc == 0 else None
        note = f" (resumed {a.resumed})" if a.resumed else ""
        if rc == 0 and result is not None:
            finished += 1
            log(f"[{done}/{total}] {a.run.id} done in {minutes:.1f} min: {_brief(result)}{note}")
            return
        reason = _failure_reason(run_dir / "train.log", a.log_offset, rc) if rc != 0 else "finished without result.json"
        failures.append((a.run.id, f"{reason} (log: {run_dir / 'train.log'})"))
        log(f"[{done}/{total}] {a.run.id} FAILED after {minutes:.1f} min: {reason}")

    previous_term = signal.getsignal(signal.SIGTERM)
    in_main = _in_main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while queue or active:
            while queue and len(active) < jobs:
                launch(queue.pop(0))
            time.sleep(0.2)
            for a in list(active):
                rc = a.proc.poll()
                if rc is not None:
                    active.remove(a)
                    finish(a, rc)
    except KeyboardInterrupt:
        for a in active:
            if a.proc.poll() is None:
                a.proc.terminate()
        for a in active:
            try:
                a.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                a.proc.kill()
                a.proc.wait()
        log(
            f"interrupted: stopped {len(active)} running run(s) at their last checkpoint; "
            "run the same command again to continue the sweep"
        )
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous_term)
        wall = time.time() - t_start
        record["sessions"][-1].update(
            finished=time.strftime("%Y-%m-%d %H:%M:%S"), wall_s=round(wall, 1), ran=ran, done=finished, skipped=skipped,
            failed=len(failures),
        )
        io.write_json(out / "sweep.json", record)

    log(
        f"sweep finished in {wall / 60:.1f} min: {finished} run{'' if finished == 1 else 's'} done, "
        f"{skipped} skipped (already finished), {len(failures)} failed"
    )
    if failures:
        log(f"failed runs ({len(failures)}); run the same command again to retry them:")
        for rid, why in failures:
            log(f"  {rid}: {why}")
    log(f"tables: camssl table {out}")
    return len(failures)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# ---------------------------------------------------------------- the tables


@dataclass
class _Metric:
    key: str  # "val" | "test"
    title: str


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
        results = {}
        for r in plan["runs"]:
            res = _result(d / r["id"])
            if res is not None:
                results[r["id"]] = res
        return cls(d, plan, results)

    def runs(self, **match: Any) -> list[dict[str, Any]]:
        return [r for r in self.plan["runs"] if all(r.get(k) == v for k, v in match.items())]

    def per_seed(self, setting: str, ratio: float | None, metric: str, select: str) -> dict[int, float]:
        """seed -> value (%) of one cell's finished runs (ratio None: a baseline)."""
        out = {}
        for r in self.plan["runs"]:
            if r["setting"] != setting or (ratio is not None and r["group"] == "grid" and r["ratio"] != ratio):
                continue
            res = self.results.get(r["id"])
            if res is None:
                continue
            v = _values(res, select)[metric]
            if v is not None:
                out[int(r["seed"])] = v
        return out


def _settings_by_role(sr: SweepResults) -> tuple[list[str], list[str], list[str]]:
    """(Table I columns from the grid, ablation settings, baseline settings), in spec order."""
    roles = {r["setting"]: r["role"] for r in sr.plan["runs"]}
    columns = [s for s in sr.plan["settings"] if roles.get(s) != "ablation"]
    ablations = [s for s in sr.plan["settings"] if roles.get(s) == "ablation"]
    return columns, ablations, list(sr.plan["baselines"])


def _layer_of(sr: SweepResults, setting: str) -> str | None:
    for r in sr.plan["runs"]:
        if r["setting"] == setting and r["role"] == "gradcam":
            return r["layer"]
    return None


def _paper_cell(role: str, layer: str | None, ratio: float | None) -> tuple[float, float] | None:
    if role == "baseline":
        return PAPER_BASELINE
    key = next((k for k in PAPER_TABLE1 if ratio is not None and abs(k - ratio) < 1e-9), None)
    if key is None:
        return None
    if role == "gradcam" and layer is not None:
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


def _paper_ms(cell: tuple[float, float] | None) -> str:
    return "" if cell is None else f" (paper† {cell[0]:.2f} ± {cell[1]:.2f})"


def _diff_text(d: PairedDiff | None) -> str:
    if d is None:
        return "—"
    if d.low is None:
        return f"{d.mean:+.2f} (n=1, no CI)"
    ci = f"[{d.low:+.2f}, {d.high:+.2f}]"
    return f"{d.mean:+.2f} {'**' + ci + '**' if d.excludes_zero else ci} (n={d.n})"


def _header_label(sr: SweepResults, setting: str) -> str:
    layer = _layer_of(sr, setting)
    gradcam_layers = [_layer_of(sr, s) for s in sr.plan["settings"] if _layer_of(sr, s)]
    return layer if layer and gradcam_layers.count(layer) == 1 else setting


def _role_of(sr: SweepResults, setting: str) -> str:
    return next((r["role"] for r in sr.plan["runs"] if r["setting"] == setting), "other")


def build_tables(sr: SweepResults, select: str = "final") -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """(results.md text, results.csv rows, runs.csv rows) of a sweep."""
    if select not in SELECTIONS:
        raise UserError(f"--select {select} is invalid; choose one of: {', '.join(SELECTIONS)}")
    plan = sr.plan
    ratios = [float(r) for r in plan["ratios"]]
    columns, ablations, baselines = _settings_by_role(sr)
    ablation = ablations[0] if ablations else None
    baseline = baselines[0] if baselines else None
    gradcams = [s for s in columns if _role_of(sr, s) == "gradcam"]

    csv_rows: list[dict[str, Any]] = []
    for rule in SELECTIONS:  # the CSV holds both selection rules; the markdown the chosen one
        csv_rows += _csv_rows(sr, rule, ratios, columns, gradcams, ablation, baseline)

    md: list[str] = []
    md += _md_header(sr, select, baseline, ablation)
    for m in _METRICS:
        md += _md_table1(sr, select, m, ratios, columns, baseline)
    for m in _METRICS:
        md += _md_table2(sr, select, m, ratios, gradcams, ablation)
    for m in _METRICS:
        md += _md_diffs(sr, select, m, ratios, gradcams, ablation, baseline)
    md += _md_reading(sr, select, ratios, gradcams, ablation, baseline)
    md += _md_missing(sr)
    runs_rows = _runs_rows(sr)
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

    def row(
        section: str, metric: str, ratio: float | None, setting: str, st: Stat | PairedDiff | None, **kw: Any
    ) -> None:
        role = _role_of(sr, setting)
        paper = kw.pop("paper", _paper_cell(role, _layer_of(sr, setting), ratio) if metric == "val" else None)
        rec = {
            "section": section,
            "metric": metric,
            "selection": select,
            "ratio": "" if ratio is None else format_ratio(ratio),
            "setting": setting,
            "role": role,
            "layer": _layer_of(sr, setting) or "",
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
            for s in gradcams:
                a = sr.per_seed(s, ratio, m, select)
                for comp in [x for x in (baseline, ablation) if x]:
                    d = paired_diff(a, sr.per_seed(comp, ratio, m, select))
                    row("paired_diff", m, ratio, s, d, comparator=comp,
                        paper=_paper_diff(sr, s, comp, ratio) if m == "val" else None)
    return rows


def _paper_diff(sr: SweepResults, setting: str, comparator: str, ratio: float) -> tuple[float, None] | None:
    a = _paper_cell(_role_of(sr, setting), _layer_of(sr, setting), ratio)
    b = _paper_cell(_role_of(sr, comparator), _layer_of(sr, comparator), ratio)
    if a is None or b is None:
        return None
    return (round(a[0] - b[0], 2), None)


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _runs_rows(sr: SweepResults) -> list[dict[str, Any]]:
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
            }
        )
    return rows


def _md_header(sr: SweepResults, select: str, baseline: str | None, ablation: str | None) -> list[str]:
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
        f"- spec: `{plan['spec']}`" + (f", overrides: `{' '.join(plan['overrides'])}`" if plan["overrides"] else ""),
        f"- runs: {n_done} of {n_runs} finished; seeds {', '.join(map(str, plan['seeds']))}; "
        f"ratios {', '.join(format_ratio(r) for r in plan['ratios'])}",
    ]
    if cfg:
        m, o, s = cfg.get("model", {}), cfg.get("optim", {}), cfg.get("split", {})
        lines.append(
            f"- data: {any_res.get('data')} — {any_res.get('n_labeled')} labeled, unlabeled = ratio × labeled, "
            f"{any_res.get('n_val')} validation (val_fraction {s.get('val_fraction')}), "
            f"{any_res.get('n_test')} test images"
        )
        lines.append(
            f"- model: {m.get('name')} width {m.get('width')}; {o.get('epochs')} epochs of "
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
        f"- baseline: `{baseline or 'none'}` (supervised only, once per seed, paired with every ratio); "
        f"ablation: `{ablation or 'none'}` (L_S + L_P, i.e. γ = 0)",
        "",
        f"**Model selection:** {_RULES[select]}",
        "",
        "Cells are mean ± sample standard deviation (ddof = 1) over seeds, in %. Runs that share a seed share "
        "the split (same labeled and validation images), so differences are paired by seed.",
        "",
        f"**paper†** marks the paper's own number for the same cell ({PAPER}, Tables I and II: validation "
        f"accuracy). Its protocol is different: {PAPER_PROTOCOL}. It is shown for orientation, not as a like-for-like "
        "comparison.",
        "",
    ]
    return lines


def _md_table1(
    sr: SweepResults, select: str, m: _Metric, ratios: list[float], columns: list[str], baseline: str | None
) -> list[str]:
    cols = [*columns, *([baseline] if baseline else [])]
    heads = [_header_label(sr, s) if s != baseline else f"baseline ({s})" for s in cols]
    lines = [f"## Table I — {m.title}, %", ""]
    if m.key == "test":
        lines += ["The paper reports no test accuracy (its official test set was never used); its validation "
                  "numbers are in the table above.", ""]
    lines += ["| ratio | " + " | ".join(heads) + " |", "|---|" + "---|" * len(cols)]
    for ratio in ratios:
        cells = []
        for s in cols:
            st = Stat.of(list(sr.per_seed(s, ratio, m.key, select).values()))
            paper = _paper_cell(_role_of(sr, s), _layer_of(sr, s), ratio) if m.key == "val" else None
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
        cells = [format_ratio(ratio), _header_label(sr, best) if best else "—"]
        if best:
            a = sr.per_seed(best, ratio, m.key, select)
            cells += [
                _ms(Stat.of(list(a.values())), n),
                _ms(Stat.of(list(ab.values())), n),
                _diff_text(paired_diff(a, ab)),
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
    head, rule = "| ratio | Grad-CAM |", "|---|---|"
    for c in comps:
        label = "baseline" if c == baseline else "ablation"
        head += f" − {label} Δ [95% CI] |"
        rule += "---|"
        if m.key == "val":
            head += f" paper† − {label} |"
            rule += "---|"
    lines += [head, rule]
    for ratio in ratios:
        for s in gradcams:
            a = sr.per_seed(s, ratio, m.key, select)
            cells = [format_ratio(ratio), _header_label(sr, s)]
            for c in comps:
                cells.append(_diff_text(paired_diff(a, sr.per_seed(c, ratio, m.key, select))))
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
    for m in _METRICS:
        for comp, label in ((baseline, "the supervised baseline"), (ablation, "the pseudo-label ablation")):
            if not comp or not gradcams:
                continue
            diffs = [paired_diff(sr.per_seed(s, r, m.key, select), sr.per_seed(comp, r, m.key, select))
                     for r in ratios for s in gradcams]
            diffs = [d for d in diffs if d is not None]
            if not diffs:
                continue
            up = sum(1 for d in diffs if d.excludes_zero and d.mean > 0)
            down = sum(1 for d in diffs if d.excludes_zero and d.mean < 0)
            pos = sum(1 for d in diffs if d.mean > 0)
            lines.append(
                f"- {m.title.split(' (')[0]}, Grad-CAM − {label}: positive mean in {pos} of {len(diffs)} "
                f"(ratio, layer) cells; interval above zero in {up}, below zero in {down}."
            )
            any_line = True
    if not any_line:
        return []
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


def figure3(sr: SweepResults, select: str = "final") -> bytes:
    """PNG bytes: accuracy vs ratio, one line per Grad-CAM layer plus baseline and ablation, ±1 std bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [float(r) for r in sr.plan["ratios"]]
    columns, ablations, baselines = _settings_by_role(sr)
    lines_spec = [(s, _header_label(sr, s), "-", "o") for s in columns]
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
    buf = _stdio.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_tables(sweep_dir: str | Path, out: str | Path | None = None, select: str = "final") -> list[Path]:
    """Write results.md, results.csv, runs.csv and figure3.png; returns their paths."""
    sr = SweepResults.load(sweep_dir)
    out = Path(out) if out is not None else sr.dir
    md, rows, runs = build_tables(sr, select)
    paths = [out / "results.md", out / "results.csv", out / "runs.csv", out / "figure3.png"]
    io.write_text(paths[0], md)
    io.write_text(paths[1], _csv_text(rows))
    io.write_text(paths[2], _csv_text(runs))
    io.write_bytes(paths[3], figure3(sr, select))
    return paths


# ---------------------------------------------------------------- command-line glue


class _IntermixedParser(argparse.ArgumentParser):
    """Lets ``section.key=value`` overrides come after options: ``sweep SPEC --out DIR data.source=X``.

    (A plain parser stops filling positionals at the first option after SPEC.)
    """

    _busy = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        if self._busy:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._busy = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._busy = False


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``camssl sweep SPEC --out DIR [--jobs N] [--dry-run] [section.key=value ...]``."""
    if type(p) is argparse.ArgumentParser:
        p.__class__ = _IntermixedParser
    p.add_argument("spec", help="sweep spec YAML (e.g. configs/table1-cpu.yaml)")
    p.add_argument("--out", required=True, help="sweep directory (one sub-directory per run); rerun to continue")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each with max(1, cores // jobs) threads [1]")
    p.add_argument("--only", action="append", default=[], metavar="GLOB",
                   help="run only the runs whose id matches, e.g. 'r0.5/*' or '*/s0' (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and each run's state; start nothing")
    p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value",
                   help="config changes for every run, e.g. data.source=/tmp/cifar")


def cmd_sweep(args: argparse.Namespace) -> int:
    """``camssl sweep``: 0 when every run finished, 1 when some failed (listed at the end)."""
    plan = plan_sweep(args.spec, args.overrides)
    command = shlex.join(
        ["camssl", "sweep", str(args.spec), "--out", str(args.out), "--jobs", str(args.jobs)]
        + [f"--only={o}" for o in args.only] + list(args.overrides)
    )
    try:
        failed = run_sweep(plan, args.out, jobs=args.jobs, only=args.only, dry_run=args.dry_run, command=command)
    except KeyboardInterrupt:
        return 130
    return 1 if failed else 0


def add_table_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``camssl table SWEEP_DIR [--select final|best-val] [--out DIR]``."""
    p.add_argument("sweep_dir", help="the --out directory of a camssl sweep")
    p.add_argument("--select", choices=SELECTIONS, default="final",
                   help="model-selection rule: final epoch, or the best-validation epoch [final]")
    p.add_argument("--out", default=None, help="where to write results.md/.csv and figure3.png [SWEEP_DIR]")


def cmd_table(args: argparse.Namespace) -> int:
    """``camssl table``: write the tables and the figure of a sweep."""
    paths = write_tables(args.sweep_dir, args.out, args.select)
    sr_note = SweepResults.load(args.sweep_dir)
    print(f"{len(sr_note.results)} of {len(sr_note.plan['runs'])} runs finished")
    for p in paths:
        print(f"wrote {p}")
    return 0
