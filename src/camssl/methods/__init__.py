"""Training objectives, each a small registered component built from shared parts.

A method owns its losses (built from :mod:`camssl.losses`) and any state it needs; the
trainer owns optimisers, devices, checkpoints and logging (:mod:`camssl.methods.base` has
the contract). Every module of this package is imported here, so a method registers itself
(:func:`~camssl.methods.base.register`) by being a file in it; the registry
:data:`METHODS` is what the trainer, ``camssl bench``, the CLI help, the GPU check and the
README's method table read. Methods in your own modules: list them in the environment
variable ``CAMSSL_METHODS`` (comma-separated module names, e.g. ``CAMSSL_METHODS=mylab.methods
camssl train --method mine``); they are imported with the built-in ones, also in every
torchrun process.

The shared parts: :mod:`~camssl.methods.parts` (the ramp, pseudo-labels and their mask),
:mod:`~camssl.methods.ssl` (the semi-supervised step and its terms),
:mod:`~camssl.methods.gradcam_term` (L_G), :mod:`~camssl.methods.cam_term` (L_cam) and
:mod:`~camssl.methods.vat_term` (L_VAT). ``docs/methods.md`` has each formulation.
"""

import importlib
import os
import pkgutil

from camssl.errors import ConfigError
from camssl.methods.base import Batch, Method, MethodConfig, RunInfo, StepContext, StepOutput, register
from camssl.methods.base import METHODS


def _import_builtin() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def import_plugins(env: str | None = None) -> list[str]:
    """Import the modules named in ``CAMSSL_METHODS`` (or ``env``); their methods register on import."""
    text = os.environ.get("CAMSSL_METHODS", "") if env is None else env
    modules = [m.strip() for m in text.split(",") if m.strip()]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            if "partially initialized module 'camssl." in str(e):
                # the plugin imports a camssl module that is itself importing camssl.methods (camssl.config)
                raise ConfigError(f"CAMSSL_METHODS module {module!r} imports from a camssl module that imports the "
                                  f"plugins ({e}); import the method API from camssl.methods instead (from "
                                  "camssl.methods import Method, MethodConfig, StepOutput, register)") from None
            raise ConfigError(f"CAMSSL_METHODS names module {module!r}, which cannot be imported ({e}); "
                              "fix the name or PYTHONPATH, or unset CAMSSL_METHODS") from None
    return modules


_import_builtin()
import_plugins()

__all__ = ["METHODS", "Batch", "Method", "MethodConfig", "RunInfo", "StepContext", "StepOutput", "import_plugins",
           "register"]
