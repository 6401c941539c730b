"""Typed run configuration: dataclasses, YAML presets and command-line overrides.

A run is described by one :class:`TrainConfig`, a tree of dataclasses. It is built from
(in order): the defaults below, a YAML preset (``--config demo`` or a path), and
``section.key=value`` overrides from the command line. Unknown keys and invalid values
raise :class:`~camssl.errors.ConfigError` naming the key and the allowed values, before
any work starts.

Presets live in ``camssl/configs/*.yaml`` (the repository's ``configs/`` folder points
there), so ``camssl train --config cpu`` works from any directory.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from camssl.augment import AugmentConfig
from camssl.data import DataConfig, SplitConfig
from camssl.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"

Schedule = Literal["cosine", "onecycle", "constant"]
ViewName = Literal["original", "weak", "strong"]


@dataclass
class ModelConfig:
    """Backbone. ``name`` is one of :data:`camssl.models.MODEL_NAMES`."""

    name: str = "resnet18"
    width: float = 1.0  # channel-width multiplier (1.0 = the standard network)
    pretrained: str | None = None  # local torchvision/timm state_dict file
    resize_to: int | None = None  # resnet50_imagenet: upsample inputs to this size (paper: 256)
    channels_last: bool = False  # memory format for the model and its inputs


@dataclass
class MethodConfig:
    """The fields every method has; each method declares a subclass with its own fields.

    The ``method:`` section of a config is parsed into the class of the method it names
    (``camssl.methods.METHODS[name].Config``), so ``method.*`` keys are checked against
    that method's fields.
    """

    name: str = "supervised"
    alpha: float = 1.0  # weight of the supervised loss L_S

    def validate(self) -> None:
        at_least("method.alpha", self.alpha, 0)

    def cam_layers(self) -> list[str]:
        """The layers whose class activation maps the method trains on (none by default)."""
        return []


def method_config_class(name: Any) -> type[MethodConfig]:
    """The config dataclass of the method called ``name``; ConfigError naming the methods if unknown."""
    from camssl.methods import METHODS

    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"method.name={name!r} is unknown; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name].Config


def method_config(name: str, **fields: Any) -> MethodConfig:
    """The config of method ``name`` with ``fields`` set, e.g. ``method_config("gradcam", layers=["layer2"])``."""
    cls = method_config_class(name)
    valid = {f.name for f in dataclasses.fields(cls)} - {"name"}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ConfigError(f"unknown config key method.{unknown[0]}; valid keys for method {name}: {', '.join(sorted(valid))}")
    return cls(**fields)


def other_methods_keys(name: str) -> set[str]:
    """Fields of other registered methods that the method ``name`` does not have."""
    from camssl.methods import METHODS

    own = {f.name for f in dataclasses.fields(method_config_class(name))}
    return {f.name for m in METHODS.values() for f in dataclasses.fields(m.Config)} - own


def drop_other_methods_keys(tree: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """``tree`` without the ``method:`` fields that belong to other methods than ``name``.

    A preset or a sweep spec describes its own method; switching the method (``--method
    supervised`` on the ``demo`` preset, a sweep setting) drops the fields that only the
    described method has. Keys that are no method's field are kept (and refused later).
    Command-line ``method.*`` overrides are never dropped: they must fit the chosen method.
    """
    section = tree.get("method")
    if not isinstance(section, dict):
        return tree
    name = name if name is not None else section.get("name", MethodConfig.name)
    try:
        foreign = other_methods_keys(name)
    except ConfigError:
        return tree  # an unknown method name is reported by from_dict
    out = dict(tree)
    out["method"] = {k: v for k, v in section.items() if k not in foreign}
    return out


@dataclass
class OptimConfig:
    """SGD with Nesterov momentum, a per-step schedule, optional EMA."""

    epochs: int = 30
    batch_size: int = 64  # labeled images per step (global, across all processes)
    unlabeled_multiplier: float = 1.0  # unlabeled images per step = multiplier x batch_size
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: Schedule = "cosine"
    warmup_epochs: float = 0.0
    ema_decay: float = 0.0  # 0 = no EMA; e.g. 0.999 evaluates an EMA of the weights
    label_smoothing: float = 0.0
    steps_per_epoch: int = 0  # 0 = labeled images // batch_size; > 0 fixes the budget (active learning)
    no_decay_bn_bias: bool = False  # no weight decay on BatchNorm and bias parameters (FixMatch/USB style)


@dataclass
class TrainConfig:
    """Everything that defines a run."""

    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    method: MethodConfig = field(default_factory=lambda: method_config_class("supervised")())
    optim: OptimConfig = field(default_factory=OptimConfig)
    labeled_view: ViewName = "weak"  # augmentation of the labeled batch (baseline and SSL alike)
    seed: int = 0  # training seed (init, batch order, augmentation); split.seed picks the split
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision (bf16/fp16 autocast) on CUDA; ignored on CPU
    amp_dtype: Literal["auto", "bf16", "fp16"] = "auto"  # auto: bf16 where the GPU has it natively, else fp16 (+ grad scaler)
    deterministic: bool = False  # torch.use_deterministic_algorithms for bit-exact reruns
    sync_bn: bool = False  # multi-process CUDA runs: synchronise BatchNorm statistics in every step
    threads: int = 0  # torch intra-op threads on CPU (0 = torch's default)
    eval_batch_size: int = 250
    eval_every: int = 1  # validate every N epochs (and always after the last)
    out_dir: str = "runs"  # parent of run directories when --out is not given
    cam_grid: bool = True  # write a CAM grid at the start and end of a run
    map_layer: str | None = None  # layer of the map diagnostics and CAM grids (None: the method's first map layer, else layer3)
    progress: bool = True  # progress bar (only on a terminal)

    def validate(self) -> None:
        """Check values that depend on other parts of the program (registries, ranges)."""
        from camssl.models import MODEL_NAMES

        self.data.validate()
        self.split.validate()
        self.augment.validate()
        if self.model.name not in MODEL_NAMES:
            raise ConfigError(
                f"model.name={self.model.name!r} is unknown; choose one of: {', '.join(MODEL_NAMES)}"
            )
        positive("model.width", self.model.width)
        if self.model.resize_to is not None:
            at_least("model.resize_to", self.model.resize_to, 8)
        self.method.validate()
        o = self.optim
        at_least("optim.epochs", o.epochs, 1)
        at_least("optim.batch_size", o.batch_size, 1)
        positive("optim.unlabeled_multiplier", o.unlabeled_multiplier)
        positive("optim.lr", o.lr)
        at_least("optim.weight_decay", o.weight_decay, 0)
        at_least("optim.warmup_epochs", o.warmup_epochs, 0)
        at_least("optim.steps_per_epoch", o.steps_per_epoch, 0)
        if not 0.0 <= o.momentum < 1.0:
            raise ConfigError(f"optim.momentum={o.momentum} is invalid: must be in [0, 1)")
        if o.nesterov and o.momentum == 0:
            raise ConfigError("optim.nesterov=true needs optim.momentum > 0")
        if not 0.0 <= o.ema_decay < 1.0:
            raise ConfigError(f"optim.ema_decay={o.ema_decay} is invalid: must be in [0, 1) (0 = off)")
        if not 0.0 <= o.label_smoothing < 1.0:
            raise ConfigError(f"optim.label_smoothing={o.label_smoothing} is invalid: must be in [0, 1)")
        at_least("eval_batch_size", self.eval_batch_size, 1)
        at_least("eval_every", self.eval_every, 1)
        at_least("threads", self.threads, 0)
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device={self.device!r} is invalid: use auto, cpu, cuda or cuda:N")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def diagnostic_layer(self) -> str:
        """The layer of the per-epoch map diagnostics and CAM grids."""
        return self.map_layer or next(iter(self.method.cam_layers()), "layer3")


def positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}={value} is invalid: must be > 0")


def at_least(key: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{key}={value} is invalid: must be >= {low}")


# ---------------------------------------------------------------- dict <-> dataclass


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML/JSON-able values (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config tree as {"section.key": value} (a non-mapping is {prefix: tree})."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def config_differences(
    a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = ()
) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for the fields of two config trees that differ, except ``ignore``.

    A field missing from ``a`` (added to the config after ``a`` was written) counts only if
    ``b`` has it at a non-default value.
    """
    fa, fb = flatten(a), flatten(b)
    defaults = flatten(TrainConfig().to_dict())
    try:
        defaults.update(flatten({"method": to_dict(method_config_class(fb.get("method.name"))())}))
    except ConfigError:
        pass
    missing = object()
    return [
        (k, fa.get(k), fb.get(k))
        for k in sorted(set(fa) | set(fb))
        if k not in ignore and fa.get(k, missing) != fb.get(k, missing)
        and not (k not in fa and fb.get(k) == defaults.get(k))
    ]


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) dict, strictly typed."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(data).__name__}: {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        scope = f" in {prefix}" if prefix else ""
        if issubclass(cls, MethodConfig):
            scope = f" for method {cls().name}"
        raise ConfigError(f"unknown config key {where}{unknown[0]}; valid keys{scope}: {', '.join(sorted(names))}")
    base = cls()
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], key, getattr(base, f.name))
        else:
            kwargs[f.name] = getattr(base, f.name)
    return cls(**kwargs)


_DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp: Any, key: str, current: Any = None) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of its fields, got {value!r}")
        if isinstance(tp, type) and issubclass(tp, MethodConfig):  # the class of the method it names
            tp = method_config_class(value.get("name", getattr(current, "name", MethodConfig.name)))
            if type(current) is not tp:
                current = None
        merged = to_dict(current) if current is not None else {}
        merged.update(value)
        return from_dict(tp, merged, key)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in get_args(tp):
                return None
        errors = []
        for a in args:
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}={value!r} is invalid: {'; '.join(errors)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is invalid; allowed values: {', '.join(map(str, choices))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} is invalid: expected true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}={value!r} is invalid: expected an integer")
        return value
    if tp is float:
        if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads exponents without a dot (1e-4, 5e+3) as strings
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} is invalid: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is invalid: expected a string")
        return str(value)
    if origin in (list, tuple):
        args = get_args(tp)
        if isinstance(value, str) and origin is list:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} is invalid: expected a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}={value!r} is invalid: expected {len(args)} values")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        item = args[0] if args else Any
        items = [_coerce(v, item, key) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported config type {tp}")  # pragma: no cover - programming error


# ---------------------------------------------------------------- presets and overrides


def preset_names() -> list[str]:
    """Names of the shipped training presets (sweep specs and active-learning configs, which have a
    ``sweep:`` or ``active:`` section, excluded)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if not {"sweep", "active"} & set(read_yaml(p)))


def resolve_preset(name_or_path: str) -> Path:
    """``demo`` → the packaged preset; anything else is a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(
                f"config file '{name_or_path}' does not exist; use a preset ({', '.join(preset_names())}) or a YAML path"
            )
        return p
    cand = PRESET_DIR / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    raise ConfigError(
        f"unknown config preset '{name_or_path}'; choose one of: {', '.join(preset_names())}, or give a YAML path"
    )


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse config '{path}': {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config '{path}' must be a mapping of sections (data:, model:, ...)")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``optim.lr=0.05`` → ("optim.lr", 0.05); values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"cannot read override '{text}': write it as section.key=value, e.g. optim.lr=0.05")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def set_path(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {key}: {p} is not a section")
        node = nxt
    node[parts[-1]] = value


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(
    preset: str | None = "demo",
    overrides: dict[str, Any] | list[str] | None = None,
    validate: bool = True,
) -> TrainConfig:
    """Defaults ← preset YAML ← overrides, strictly typed and validated.

    A YAML file may start with ``base: <preset or path>`` to inherit from another one.
    """
    tree: dict[str, Any] = {}
    if preset:
        tree = load_yaml_tree(preset)
        if "sweep" in tree:
            raise ConfigError(f"'{preset}' is a sweep spec, not a training config; run it with: camssl sweep {preset}")
        if "active" in tree:
            raise ConfigError(f"'{preset}' is an active-learning config, not a training config; "
                              f"run it with: camssl active --config {preset}")
    return config_from_tree(tree, overrides, validate)


def config_from_tree(
    tree: dict[str, Any],
    overrides: dict[str, Any] | list[str] | None = None,
    validate: bool = True,
) -> TrainConfig:
    """A :class:`TrainConfig` from a config tree (a preset's YAML, read) with ``overrides`` applied."""
    tree = copy.deepcopy(tree)
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    section = tree.get("method") if isinstance(tree.get("method"), dict) else {}
    tree = drop_other_methods_keys(tree, (overrides or {}).get("method.name", section.get("name")))
    for k, v in (overrides or {}).items():
        set_path(tree, k, v)
    cfg = from_dict(TrainConfig, tree)
    if validate:
        cfg.validate()
    return cfg


def load_yaml_tree(preset: str, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = resolve_preset(preset)
    if path.resolve() in _seen:
        raise ConfigError(f"config '{path}' inherits from itself through 'base:'")
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config '{path}': base must be a preset name or a path")
    base_path = base if (PRESET_DIR / f"{base}.yaml").is_file() else str(path.parent / base)
    if not (PRESET_DIR / f"{base}.yaml").is_file() and not Path(base_path).is_file():
        base_path = base
    return merge(load_yaml_tree(base_path, _seen + (path.resolve(),)), data)


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
