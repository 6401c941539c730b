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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from camssl.augment import AugmentConfig
from camssl.checks import at_least, fraction, in_range, integer_at_least, one_of, positive
from camssl.data import DataConfig, SplitConfig
from camssl.errors import ConfigError
from camssl.methods.base import MethodConfig, method_config_class
from camssl.methods.config import drop_other_methods_keys, method_config
from camssl.typed import flatten, from_dict, merge, parse_override, read_yaml, set_path, to_dict

__all__ = ["PRESET_DIR", "RESULT_NEUTRAL_KEYS", "MethodConfig", "ModelConfig", "OptimConfig", "TrainConfig",
           "config_differences", "config_from_tree", "drop_other_methods_keys", "dump_yaml", "flatten", "from_dict",
           "load_config", "load_yaml_tree", "merge", "method_config", "method_config_class", "parse_override",
           "preset_names", "read_yaml", "resolve_preset", "set_path", "to_dict"]

PRESET_DIR = Path(__file__).parent / "configs"

Schedule = Literal["cosine", "onecycle", "constant"]
ViewName = Literal["original", "weak", "strong"]


@dataclass
class ModelConfig:
    """Backbone. ``name`` is one of :data:`camssl.models.MODEL_NAMES`."""

    name: str = "resnet18"  # a camssl model (camssl.models.MODEL_NAMES) or your own: package.module:factory
    width: float = 1.0  # channel-width multiplier of camssl's models (1.0 = the standard network)
    pretrained: str | None = None  # a state_dict: PATH, URL, hf://repo/file or torchvision:resnet50 (camssl.models.pretrained)
    pretrained_sha256: str | None = None  # expected SHA-256 (or its first 8+ hex digits) of downloaded weights
    args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of your own factory
    resize_to: int | None = None  # resnet50_imagenet: upsample inputs to this size (paper: 256)
    channels_last: bool = False  # memory format for the model and its inputs
    widths: list[int] | None = None  # airnet: the three conv-group widths (default: width x 64/256/256)
    pool: str | None = None  # airnet: "max" (airbench's global max-pool) or "avg" (exact closed-form CAM at layer3)
    data_init: bool = True  # a model with data-dependent init (airnet's whitening) is set from the training images
    whiten_bias_epochs: int = 3  # airnet: the whitening bias trains for the first N epochs, then is frozen (airbench)

    def build_args(self, num_classes: int) -> dict[str, Any]:
        """The arguments of :func:`camssl.models.build_model` for this model (the checkpoint's ``model_spec``)."""
        args = {"name": self.name, "num_classes": num_classes, "width": self.width, "resize_to": self.resize_to}
        args.update({k: v for k, v in (("widths", self.widths), ("pool", self.pool)) if v is not None})
        if self.args:
            args["args"] = dict(self.args)
        return args


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
    ema_every: int = 1  # update the EMA every N steps (airbench's Lookahead: 5)
    ema_ramp: Literal["none", "cubic"] = "none"  # cubic: decay x (step / total steps)^3 (airbench's Lookahead)
    lookahead: bool = False  # after each EMA update the model continues from the EMA weights (airbench)
    label_smoothing: float = 0.0
    steps_per_epoch: int = 0  # 0 = labeled images // batch_size; > 0 fixes the budget (active learning)
    no_decay_bn_bias: bool = False  # no weight decay on BatchNorm and bias parameters (FixMatch/USB style)
    decoupled: bool = False  # lr and weight_decay per 1,024 examples, independent of momentum (airbench's form)
    bias_lr_scale: float = 1.0  # learning-rate factor of BatchNorm biases, weight decay per step unchanged (airbench: 64)


@dataclass
class TrainConfig:
    """Everything that defines a run."""

    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    method: MethodConfig = field(default_factory=lambda: method_config_class("supervised")())  # the class of method.name
    optim: OptimConfig = field(default_factory=OptimConfig)
    labeled_view: ViewName = "weak"  # augmentation of the labeled batch (baseline and SSL alike)
    seed: int = 0  # training seed (init, batch order, augmentation); split.seed picks the split
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision: bf16/fp16 autocast on CUDA, bf16 on a CPU with native bf16 (else fp32)
    amp_dtype: Literal["auto", "bf16", "fp16"] = "auto"  # auto: bf16 where the device has it natively, else fp16 on CUDA
    deterministic: bool = False  # torch.use_deterministic_algorithms for bit-exact reruns
    sync_bn: bool = False  # multi-process CUDA runs: synchronise BatchNorm statistics in every step
    threads: int = 0  # torch intra-op threads on CPU (0 = torch's default)
    eval_batch_size: int = 250
    eval_every: int = 1  # validate every N epochs (and always after the last)
    eval_tta: int = 0  # test-time augmentation of the test (and of validation unless val_tta is set): 0 none, 1 mirror, 2 mirror + 1-px translate (airbench)
    val_tta: int | None = None  # test-time augmentation of validation alone (model selection); None: eval_tta
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
        if self.model.name not in MODEL_NAMES and ":" not in self.model.name:
            raise ConfigError(f"model.name={self.model.name!r} is unknown; choose one of: {', '.join(MODEL_NAMES)}, "
                              "or your own model as package.module:factory")
        self._validate_model()
        self.method.validate()
        o = self.optim
        at_least("optim.epochs", o.epochs, 1)
        at_least("optim.batch_size", o.batch_size, 1)
        positive("optim.unlabeled_multiplier", o.unlabeled_multiplier)
        positive("optim.lr", o.lr)
        at_least("optim.weight_decay", o.weight_decay, 0)
        at_least("optim.warmup_epochs", o.warmup_epochs, 0)
        at_least("optim.steps_per_epoch", o.steps_per_epoch, 0)
        fraction("optim.momentum", o.momentum)
        if o.nesterov and o.momentum == 0:
            raise ConfigError("optim.nesterov=true needs optim.momentum > 0")
        fraction("optim.ema_decay", o.ema_decay)
        integer_at_least("optim.ema_every", o.ema_every, 1)
        if o.lookahead and o.ema_decay == 0:
            raise ConfigError("optim.lookahead=true needs an EMA: set optim.ema_decay (airbench: 0.95 ** 5 with "
                              "optim.ema_every=5 optim.ema_ramp=cubic)")
        fraction("optim.label_smoothing", o.label_smoothing)
        positive("optim.bias_lr_scale", o.bias_lr_scale)
        in_range("eval_tta", self.eval_tta, 0, 2)
        if self.val_tta is not None:
            in_range("val_tta", self.val_tta, 0, 2)
        at_least("eval_batch_size", self.eval_batch_size, 1)
        at_least("eval_every", self.eval_every, 1)
        at_least("threads", self.threads, 0)
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device={self.device!r} is invalid: use auto, cpu, cuda or cuda:N")

    def _validate_model(self) -> None:
        m = self.model
        positive("model.width", m.width)
        if m.resize_to is not None:
            at_least("model.resize_to", m.resize_to, 8)
        integer_at_least("model.whiten_bias_epochs", m.whiten_bias_epochs, 0)
        for key in ("widths", "pool"):
            if getattr(m, key) is not None and m.name != "airnet":
                raise ConfigError(f"model.{key} is for model.name=airnet only; drop it for {m.name}")
        if m.widths is not None and (len(m.widths) != 3 or min(m.widths) < 1):
            raise ConfigError(f"model.widths={m.widths} is invalid: give three group widths >= 1, e.g. [64, 256, 256]")
        if m.pool is not None:
            one_of("model.pool", m.pool, ("max", "avg"))

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def validation_tta(self) -> int:
        """The test-time augmentation level of validation: ``val_tta``, else ``eval_tta``."""
        return self.eval_tta if self.val_tta is None else self.val_tta

    def diagnostic_layer(self) -> str:
        """The layer of the per-epoch map diagnostics and CAM grids."""
        return self.map_layer or next(iter(self.method.cam_layers()), "layer3")  # "auto": resolved by the trainer


# ---------------------------------------------------------------- comparing configs

# Config fields that do not change what a run computes, only where and how fast (a moved
# data.source is still checked against the split's fingerprint of the training data). A
# resumed run and a sweep's finished run may differ from the config in these alone.
RESULT_NEUTRAL_KEYS = ("device", "threads", "progress", "out_dir", "eval_batch_size", "cam_grid",
                       "data.cache_dir", "data.source")


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
