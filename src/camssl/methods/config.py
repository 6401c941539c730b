"""The ``method:`` section of a run's config: the base every method's config derives from, and the registry.

A method's config is a dataclass deriving from :class:`MethodConfig`: its own fields, plus
one field per loss component it combines, each a section with its own settings
(``method.pseudo.threshold``, ``method.gradcam.layers``, ``method.cam.weight``,
``method.vat.eps``; see :mod:`camssl.methods.parts`). The ``method:`` section of a YAML
file or of ``key=value`` overrides is parsed into the class of the method it names, so
every ``method.*`` key is checked against that method's fields.

:data:`METHODS` maps each registered method's name to its class
(:func:`camssl.methods.base.register` fills it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from camssl.checks import at_least
from camssl.errors import ConfigError
from camssl.typed import from_dict, to_dict

if TYPE_CHECKING:
    from camssl.methods.base import Method

METHODS: dict[str, type[Method]] = {}

# keys of the single-level method configs before each loss component got its own section
RENAMED = {
    "beta": "pseudo.weight", "threshold": "pseudo.threshold", "anchor": "pseudo.anchor",
    "gamma": "gradcam.weight", "layers": "gradcam.layers", "grad_mode": "gradcam.grad_mode",
    "norm": "gradcam.norm", "distance": "gradcam.distance", "gamma_rampup_epochs": "gradcam.ramp_epochs",
    "skip_blank_targets": "gradcam.skip_blank_targets",
    "cam_weight": "cam.weight", "cam_warmup_epochs": "cam.ramp_epochs", "cam_warmup": "cam.ramp",
    "cam_norm": "cam.norm", "cam_target": "cam.target", "cam_threshold": "cam.threshold",
    "cam_unlabeled": "cam.unlabeled",
    "vat_weight": "vat.weight", "vat_eps": "vat.eps", "vat_xi": "vat.xi", "vat_power_iters": "vat.power_iters",
    "entmin_weight": "vat.entmin_weight", "rampup_epochs": "vat.ramp_epochs",
}


@dataclass
class MethodConfig:
    """The fields every method has; each method declares a subclass with its own fields and sections."""

    name: str = "supervised"
    alpha: float = 1.0  # weight of the supervised loss L_S

    RENAMED: ClassVar[dict[str, str]] = RENAMED

    def validate(self) -> None:
        """Check the values (ConfigError naming the key); sections check their own fields."""
        at_least("method.alpha", self.alpha, 0)
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section) and hasattr(section, "validate"):
                section.validate(f"method.{f.name}")

    def cam_layers(self) -> list[str]:
        """The layers whose class activation maps the method trains on (its sections' ``map_layers()``)."""
        sections = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return list(dict.fromkeys(name for s in sections if hasattr(s, "map_layers") for name in s.map_layers()))

    @classmethod
    def resolve_config_class(cls, value: dict[str, Any], current: Any) -> type[MethodConfig]:
        """The config class of the method a ``method:`` section names (its ``name``, else the current one's)."""
        return method_config_class(value.get("name", getattr(current, "name", MethodConfig.name)))

    @classmethod
    def config_scope(cls) -> str:
        return f" for method {cls().name}"


def method_config_class(name: Any) -> type[MethodConfig]:
    """The config dataclass of the method called ``name``; ConfigError naming the methods if unknown."""
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"method.name={name!r} is unknown; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name].Config


def method_config(name: str, **fields: Any) -> MethodConfig:
    """The config of method ``name`` with ``fields`` set, checked like a config file's ``method:`` section.

    A section is given as a dict of its fields (or as its dataclass), e.g.
    ``method_config("gradcam", gradcam={"layers": ["layer2"]}, pseudo={"threshold": 0.95})``.
    """
    cls = method_config_class(name)
    values = {k: to_dict(v) for k, v in fields.items()}
    return from_dict(cls, {**values, "name": name}, "method")


def other_methods_keys(name: str) -> set[str]:
    """Fields of other registered methods that the method ``name`` does not have."""
    own = {f.name for f in dataclasses.fields(method_config_class(name))}
    return {f.name for m in METHODS.values() for f in dataclasses.fields(m.Config)} - own


def drop_other_methods_keys(tree: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """``tree`` without the ``method:`` fields that belong to other methods than ``name``.

    A preset or a sweep spec describes its own method; switching the method (``--method
    supervised`` on the ``demo`` preset, a sweep setting) drops the fields (and sections) that
    only the described method has. Keys that are no method's field are kept (and refused
    later). Command-line ``method.*`` overrides are never dropped: they must fit the chosen method.
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
