"""Training objectives, each a small registered component.

A method turns one batch into ``(loss, metrics)``; it never owns optimisers, devices,
checkpoints or logging (the trainer does). Register a new one with
:func:`camssl.methods.base.register` and it is available as ``method.name=<name>``.

=============  ===============================================================
name           objective
=============  ===============================================================
supervised     alpha*L_S on the labeled batch (the paper's baseline)
pseudo_label   alpha*L_S + beta*L_P (the paper's ablation, Table II)
gradcam        alpha*L_S + beta*L_P + gamma*L_G (Grad-CAM consistency, the paper)
=============  ===============================================================
"""

from camssl.methods.base import METHODS, Batch, Method, StepContext, StepOutput, register
from camssl.methods import supervised as _supervised  # noqa: F401  (registers)
from camssl.methods import pseudo_label as _pseudo_label  # noqa: F401  (registers)
from camssl.methods import gradcam as _gradcam  # noqa: F401  (registers)

__all__ = ["METHODS", "Batch", "Method", "StepContext", "StepOutput", "register"]
