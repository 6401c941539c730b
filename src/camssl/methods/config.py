"""The ``method:`` section of a config tree: a method's config by name, and the fields of other methods.

A method's config is a dataclass deriving from :class:`MethodConfig`: its own fields, plus
one field per loss component it combines, each a section with its own settings
(``method.pseudo.threshold``, ``method.gradcam.layers``, ``method.cam.weight``,
``method.vat.eps``; see :mod:`camssl.methods.parts`). The ``method:`` section of a YAML
file or of ``key=value`` overrides is parsed into the class of the method it names, so
every ``method.*`` key is checked against that method's fields.

:class:`~camssl.methods.base.MethodConfig` (the base) and the registry
:data:`~camssl.methods.base.METHODS` are in :mod:`camssl.methods.base`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from camssl.errors import ConfigError
from camssl.methods.base import METHODS, MethodConfig, method_config_class
from camssl.typed import from_dict, to_dict

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
