"""Sweep specs: read a spec file and expand its grid into runs with full, validated configs."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camssl.config import (
    PRESET_DIR,
    TrainConfig,
    drop_other_methods_keys,
    flatten,
    from_dict,
    load_yaml_tree,
    parse_override,
    read_yaml,
    set_path,
)
from camssl.errors import ConfigError

SWEEP_FORMAT = "camssl-sweep"
SWEEP_VERSION = 1
SWEEP_KEYS = ("seeds", "ratios", "settings", "baseline")
GRID_KEYS = ("seed", "split.seed", "split.ratio")  # set by the grid, not by settings
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# a setting's part in the tables, said in the spec (``role: method``): the paper's method (its
# columns in Table I), the ablation it is compared with (Table II), a teacher of later runs,
# or anything else; baselines (``sweep.baseline``) have the role "baseline"
ROLES = ("method", "ablation", "teacher", "other")


@dataclass
class Run:
    """One planned training run."""

    id: str  # also its directory under the sweep dir, e.g. "r0.5/gradcam-layer3/s0"
    setting: str
    group: str  # "grid" | "baseline"
    role: str  # one of ROLES: the run's part in the tables (said by the spec)
    layer: str | None  # map layer(s) of a "method" run, comma-joined
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


def _role_of(changes: dict[str, Any] | None, where: str) -> str:
    role = (changes or {}).pop("role", "other")
    if role not in ROLES:
        raise ConfigError(f"{where}: role {role!r} is unknown; choose one of: {', '.join(ROLES)}")
    return str(role)


def _named_changes(value: Any, where: str, forbidden: tuple[str, ...]) -> dict[str, tuple[dict[str, Any], str]]:
    """{name: (config changes, role)} of the ``settings:`` or ``baseline:`` mapping of a spec."""
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
        changes = dict(changes or {})
        role = _role_of(changes, f"{where}.{name}")
        flat = flatten(changes)
        for key in flat:
            if key in forbidden:
                raise ConfigError(
                    f"{where}.{name} sets {key}, which the sweep's grid sets (sweep.seeds / sweep.ratios)"
                )
        out[name] = (flat, role)
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


def spec_label(spec: str | Path) -> str:
    """How a table names a recorded spec path: a shipped spec by the name ``camssl sweep`` takes
    (``fast-gradcam-sweep``, on any machine), a file under the working directory relative to it."""
    path = Path(spec)
    if path.parts[-3:-1] == ("camssl", "configs") and (PRESET_DIR / path.name).is_file():
        return f"{path.stem} (shipped)"
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(spec)


def load_spec(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config tree of the spec, its ``sweep:`` section); ConfigError on a malformed spec."""
    path = spec_path(path)
    tree = load_yaml_tree(str(path))
    tree.pop("launcher", None)  # how to run the sweep (experiments.slurm_options), not a run's config
    sweep = tree.pop("sweep", None)
    if not isinstance(sweep, dict):
        raise ConfigError(
            f"sweep spec '{path}' has no 'sweep:' section (with seeds, ratios, settings, baseline); "
            "see configs/table1-cpu.yaml"
        )
    unknown = sorted(set(sweep) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"unknown key sweep.{unknown[0]} in '{path}'; valid keys in sweep: {', '.join(SWEEP_KEYS)}")
    from_dict(TrainConfig, drop_other_methods_keys(tree))  # unknown config keys fail here, before anything runs
    return tree, sweep


def _layer(role: str, cfg: TrainConfig) -> str | None:
    return (",".join(cfg.method.cam_layers()) or None) if role == "method" else None


def _with_seed(value: Any, seed: Any) -> Any:
    """``{seed}`` in the string values of a config tree becomes the run's seed (e.g. a teacher per seed)."""
    if isinstance(value, dict):
        return {k: _with_seed(v, seed) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_seed(v, seed) for v in value]
    return value.replace("{seed}", str(seed)) if isinstance(value, str) else value


def _build(tree: dict[str, Any], changes: Iterable[tuple[str, Any]], where: str) -> TrainConfig:
    """A run's config: the spec's tree (without other methods' fields) with ``changes`` applied.

    The text ``{seed}`` in a string value is replaced by the run's seed, so a run can name
    a file of its own seed, e.g. ``method.teacher: sweeps/teachers/baseline/teacher/s{seed}``.
    """
    changes = list(changes)
    name = next((v for k, v in reversed(changes) if k == "method.name"), None)
    seed = next((v for k, v in reversed(changes) if k == "seed"), None)
    t = copy.deepcopy(drop_other_methods_keys(tree, name))
    try:
        for k, v in changes:
            set_path(t, k, v)
        cfg = from_dict(TrainConfig, _with_seed(t, seed) if seed is not None else t)
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
        for name, (changes, _) in baselines.items():
            cfg = _build(tree, [*cli, *changes.items(), *grid], f"{where}, baseline {name}")
            runs.append(Run(f"baseline/{name}/s{seed}", name, "baseline", "baseline", None, None, seed, cfg))
        for ratio in ratios:
            for name, (changes, role) in settings.items():
                cfg = _build(tree, [*cli, *changes.items(), ("split.ratio", ratio), *grid], f"{where}, setting {name}")
                runs.append(Run(f"r{format_ratio(ratio)}/{name}/s{seed}", name, "grid", role, _layer(role, cfg), ratio,
                                seed, cfg))
    return Plan(spec, seeds, ratios, list(settings), list(baselines), list(overrides), runs)


