"""Typed config trees: dataclasses to and from plain dicts, YAML files and ``key=value`` overrides.

The machinery behind every camssl config (training, methods, active learning), strict by
design: an unknown key or a value of the wrong type raises
:class:`~camssl.errors.ConfigError` naming the key and what is allowed. Two hooks on a
dataclass let it take part without this module knowing it:

- ``RENAMED`` (class attribute, ``{old key: new key}``): an old spelling gets a one-line
  error naming its new one;
- ``resolve_config_class(value, current)`` (classmethod): the concrete class of a
  polymorphic section (the ``method:`` section is parsed into the class of the method it
  names), and ``config_scope()``: how the unknown-key error names the section.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from camssl.errors import ConfigError


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


def _unknown_key(cls: type, key: str, prefix: str, names: set[str]) -> ConfigError:
    where = f"{prefix}." if prefix else ""
    new = getattr(cls, "RENAMED", {}).get(key)
    if new is not None and re.split(r"[. ]", new)[0] in names:
        return ConfigError(f"config key {where}{key} was renamed: write {where}{new} instead")
    scope = cls.config_scope() if hasattr(cls, "config_scope") else (f" in {prefix}" if prefix else "")
    return ConfigError(f"unknown config key {where}{key}; valid keys{scope}: {', '.join(sorted(names))}")


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (possibly partial) dict, strictly typed; missing fields keep their defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(data).__name__}: {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise _unknown_key(cls, unknown[0], prefix, names)
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


def _coerce_dataclass(value: Any, tp: Any, key: str, current: Any) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping of its fields, got {value!r}")
    if hasattr(tp, "resolve_config_class"):  # a polymorphic section: the class its value names
        tp = tp.resolve_config_class(value, current)
        if type(current) is not tp:
            current = None
    merged = to_dict(current) if current is not None else {}
    merged.update(value)
    return from_dict(tp, merged, key)


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
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


def _coerce_sequence(value: Any, tp: Any, key: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
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


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
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
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported config type {tp}")  # pragma: no cover - programming error


def _coerce(value: Any, tp: Any, key: str, current: Any = None) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _coerce_dataclass(value, tp, key, current)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is invalid; allowed values: {', '.join(map(str, choices))}")
        return value
    if origin in (list, tuple):
        return _coerce_sequence(value, tp, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} is invalid: expected a mapping, e.g. {{name: value}}")
        return {str(k): v for k, v in value.items()}
    return _coerce_scalar(value, tp, key)


# ---------------------------------------------------------------- YAML files and overrides


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file that holds a mapping (safe_load); ConfigError naming the file otherwise."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
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
    """Set ``tree["a"]["b"] = value`` for ``key = "a.b"``, creating sections on the way."""
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {key}: {p} is not a section")
        node = nxt
    node[parts[-1]] = value


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, section by section."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out
