"""Training objectives, each a small registered component.

A method owns its losses (built from :mod:`camssl.losses`) and any state it needs; the
trainer owns optimisers, devices, checkpoints and logging (see
:mod:`camssl.methods.base` for the lifecycle). Register a new one with
:func:`camssl.methods.base.register` and it is available as ``method.name=<name>``.
Methods in your own modules: list them in the environment variable ``CAMSSL_METHODS``
(comma-separated module names, e.g. ``CAMSSL_METHODS=mylab.methods camssl train --method
mine``); they are imported with the built-in ones, also in every torchrun process.

=============  ===============================================================
name           objective
=============  ===============================================================
supervised     alpha*L_S on the labeled batch (the paper's baseline)
pseudo_label   alpha*L_S + beta*L_P (the paper's ablation, Table II)
gradcam        alpha*L_S + beta*L_P + gamma*L_G (Grad-CAM consistency, the paper)
vat            alpha*L_S + vat_weight*L_VAT (+ entmin_weight*L_ent) (Miyato et al.)
lga            alpha*L_S + lambda_u*CE(view, imputed labels) (+ vat_weight*L_VAT):
               label gradient alignment (Jackson & Schulman), camssl's formulation
cam_loss       alpha*L_S + lambda*L_cam (CAM-loss, Wang et al. 2021)
cam_kd         alpha*L_S + CAAM-CAM matching and/or logit KD from a frozen teacher
=============  ===============================================================

``pseudo_label`` and ``gradcam`` add lambda*L_cam with ``method.cam_weight > 0``
(:mod:`camssl.methods.cam_term`).
"""

import importlib
import os

from camssl.errors import ConfigError
from camssl.methods.base import METHODS, Batch, Method, RunInfo, StepContext, StepOutput, register
from camssl.methods import supervised as _supervised  # noqa: F401  (registers)
from camssl.methods import pseudo_label as _pseudo_label  # noqa: F401  (registers)
from camssl.methods import gradcam as _gradcam  # noqa: F401  (registers)
from camssl.methods import vat as _vat  # noqa: F401  (registers)
from camssl.methods import lga as _lga  # noqa: F401  (registers)
# CAM-loss and CAAM-CAM distillation (issue 12)
from camssl.methods import cam_loss as _cam_loss  # noqa: F401  (registers)
from camssl.methods import cam_kd as _cam_kd  # noqa: F401  (registers)


def _import_plugins() -> None:
    for module in filter(None, (m.strip() for m in os.environ.get("CAMSSL_METHODS", "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"CAMSSL_METHODS names module {module!r}, which cannot be imported ({e}); "
                              "fix the name or PYTHONPATH, or unset CAMSSL_METHODS") from None


_import_plugins()

__all__ = ["METHODS", "Batch", "Method", "RunInfo", "StepContext", "StepOutput", "register"]
