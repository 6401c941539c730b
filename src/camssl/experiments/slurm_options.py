"""Options of the Slurm launcher: a spec's ``launcher:`` section, overridden by the command line.

::

    launcher:                      # used by camssl sweep ... --launcher slurm
      partition: gpu               # --partition
      time: 240                    # --time: minutes per job, or H:MM:SS / D-HH:MM:SS
      gpus_per_run: 1              # --gpus-per-run (more than 1: torchrun inside the job)
      cpus_per_run: 8              # --cpus-per-run
      mem: 32G                     # --mem (with a unit: K, M, G, T)
      array_parallelism: 16        # --array-parallelism: runs at once (%N of the array)
      sbatch: {account: proj, qos: high}   # --sbatch account=proj (any other sbatch flag)
      setup: ["module load cuda"]  # --setup: shell lines before the job's command

Bad values are one-line :class:`~camssl.errors.ConfigError` messages naming the key and a fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from camssl.config import load_yaml_tree
from camssl.errors import ConfigError
from camssl.experiments.spec import Plan, plan_sweep, spec_path

LAUNCHER_KEYS = ("partition", "time", "gpus_per_run", "cpus_per_run", "mem", "array_parallelism", "sbatch", "setup")
# sbatch flags the launcher writes itself: the option to use instead
MANAGED_FLAGS = {
    "partition": "--partition", "time": "--time", "gpus-per-node": "--gpus-per-run", "gpus": "--gpus-per-run",
    "cpus-per-task": "--cpus-per-run", "mem": "--mem", "array": "--array-parallelism", "ntasks-per-node": "",
    "output": "", "error": "", "signal": "", "open-mode": "", "job-name": "", "wckey": "",
}
_FLAG = re.compile(r"^[a-z][a-z0-9_-]*$")
_MEM = re.compile(r"^\d+(\.\d+)?[KMGT]B?$", re.I)
_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d\d):(\d\d)$")


@dataclass
class SlurmOptions:
    """Resources of each run's job and of the array."""

    partition: str | None = None
    time: int = 240  # minutes per job; a run that needs longer is requeued at the limit and continues
    gpus_per_run: int = 0
    cpus_per_run: int | None = None
    mem: str | None = None
    array_parallelism: int | None = None  # None: as many at once as Slurm allows
    sbatch: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return asdict(self)


def _bad(name: str, raw: Any, fix: str) -> ConfigError:
    """``launcher.time='4:00' is invalid: ...`` (spec) or ``--time 4:00 is invalid: ...`` (command line)."""
    shown = f"{name}={raw!r}" if name.startswith("launcher.") else f"{name} {raw}"
    return ConfigError(f"{shown} is invalid: {fix}")


def _int(raw: Any, name: str, low: int) -> int:
    value = int(raw) if isinstance(raw, str) and raw.strip().isdigit() else raw
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad(name, raw, f"give a whole number >= {low}")
    return value


def _minutes(raw: Any, name: str) -> int:
    value = raw
    if isinstance(raw, str) and (m := _TIME.match(raw.strip())):
        days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
        value = days * 1440 + hours * 60 + minutes + (seconds > 0)
    elif isinstance(raw, str) and raw.strip().isdigit():
        value = int(raw)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(name, raw, "give minutes (240) or hours:minutes:seconds (4:00:00, 1-00:00:00)")
    return value


def _text(raw: Any, name: str, example: str) -> str:
    if not isinstance(raw, str) or not raw.strip() or any(c.isspace() for c in raw.strip()):
        raise _bad(name, raw, f"give one word, e.g. {example}")
    return raw.strip()


def _mem(raw: Any, name: str) -> str:
    if not isinstance(raw, str) or not _MEM.match(raw.strip()):
        raise _bad(name, raw, "give an amount with a unit, e.g. 32G or 16000M")
    return raw.strip().upper()


def sbatch_flags(value: Any, name: str) -> dict[str, Any]:
    """``{account: proj}`` or ``["account=proj", "--exclusive"]`` → sbatch flags (a bare flag is True)."""
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, Sequence) and not isinstance(value, str):
        items = []
        for text in value:
            key, has, raw = str(text).partition("=")
            items.append((key, raw if has else True))
    else:
        raise ConfigError(f"{name} must map sbatch flags to values, e.g. {{account: proj}}; got {value!r}")
    flags: dict[str, Any] = {}
    for key, v in items:
        flag = key.strip().lstrip("-").replace("_", "-")
        if not _FLAG.match(flag):
            raise ConfigError(f"{name}: '{key}' is not an sbatch flag; write it as account=proj or --exclusive")
        if flag in MANAGED_FLAGS:
            instead = MANAGED_FLAGS[flag]
            raise ConfigError(f"{name}: --{flag} is set by camssl" + (f"; use {instead} instead" if instead else ""))
        if v is None or v is False or (isinstance(v, str) and not v.strip()):
            raise ConfigError(f"{name}: --{flag} needs a value (or true for a flag without one)")
        flags[flag] = v if v is True else str(v).strip()
    return flags


_CHECKS = {
    "partition": lambda v, n: _text(v, n, "gpu"),
    "time": _minutes,
    "gpus_per_run": lambda v, n: _int(v, n, 0),
    "cpus_per_run": lambda v, n: _int(v, n, 1),
    "mem": _mem,
    "array_parallelism": lambda v, n: _int(v, n, 1),
    "sbatch": sbatch_flags,
}


def _setup(value: Any, name: str) -> list[str]:
    lines = [value] if isinstance(value, str) else value
    if not isinstance(lines, list) or not all(isinstance(x, str) and x.strip() for x in lines):
        raise ConfigError(f"{name} must be shell lines, e.g. ['module load cuda']; got {value!r}")
    return [x.strip() for x in lines]


def slurm_options(section: Any, cli: Mapping[str, Any], where: str = "the spec") -> SlurmOptions:
    """Defaults ← the spec's ``launcher:`` section ← the command line (``cli``: key → value, None = not given)."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(f"launcher in {where} must be a mapping of options, e.g. {{partition: gpu, time: 240}}")
    unknown = sorted(set(section) - set(LAUNCHER_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown key launcher.{unknown[0]} in {where}; valid keys in launcher: {', '.join(LAUNCHER_KEYS)}"
        )
    opts = SlurmOptions()
    for source, prefix in ((section, "launcher."), (cli, "--")):
        for key, value in source.items():
            if value is None:
                continue
            name = prefix + (key if prefix == "launcher." else key.replace("_", "-"))
            checked = _setup(value, name) if key == "setup" else _CHECKS[key](value, name)
            if key == "sbatch":
                checked = {**opts.sbatch, **checked}  # per flag: the command line wins
            setattr(opts, key, checked)
    return opts


def plan_with_launcher(spec: str | Path, overrides: Sequence[str] = ()) -> tuple[Plan, Any]:
    """The plan of a sweep spec and its ``launcher:`` section (None without one)."""
    path = spec_path(spec)
    return plan_sweep(path, overrides), load_yaml_tree(str(path)).get("launcher")
