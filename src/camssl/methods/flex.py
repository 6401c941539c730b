"""FlexMatch's curriculum pseudo-labelling: a per-class threshold that follows each class's learning status.

Zhang et al., "FlexMatch" (NeurIPS 2021): FixMatch's fixed τ masks most unlabeled images early
in training and treats every class alike. Curriculum pseudo-labelling (CPL) keeps, for every
unlabeled image, the class it was last predicted with confidence ≥ τ (or none), counts
σ_c = the images last predicted as c, and scales the threshold of class c by

    β_c = σ_c / max(max_k σ_k, N_unused)   (with the threshold warm-up; without: σ_c / max_k σ_k)
    T_c = τ · β_c / (2 − β_c)               (the convex mapping M(x) = x / (2 − x))

N_unused = the unlabeled images never predicted above τ. An anchor prediction of class ĉ passes
when its confidence reaches T_ĉ. As in the published algorithm the table is updated with the
fixed τ and read at the start of each step; β is 0 until any image has passed (every
threshold 0). In camssl this is ``method.pseudo.flex=true`` on any thresholded pseudo-label
method (*camssl's option*, used in the fast regime's pilots, not Sohn et al.'s FixMatch).
With several processes each rank writes its own rows and the tables are merged at the end of
each epoch (:class:`~camssl.methods.state.SampleTable`), so within an epoch a rank's
thresholds see its own rows only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from camssl.distributed import Dist
from camssl.methods.state import SampleTable


def flex_thresholds(counts: Tensor, unused: int, tau: float, warmup: bool = True) -> Tensor:
    """(C,) per-class thresholds τ·M(β_c) from the per-class counts σ_c and the unused count."""
    counts = counts.float()
    top = counts.max()
    denom = torch.maximum(top, counts.new_tensor(float(unused))) if warmup else top
    beta = counts / denom.clamp_min(1.0)
    return tau * beta / (2.0 - beta)


class FlexState:
    """The per-image table of FlexMatch's curriculum and the thresholds it gives."""

    def __init__(self, n_train: int, unlabeled: Tensor, num_classes: int, device: torch.device | str,
                 warmup: bool = True) -> None:
        self.table = SampleTable(n_train, device=device, dtype=torch.long, fill=-1)  # last class above τ, or -1
        self.unlabeled = unlabeled.to(device)
        self.num_classes, self.warmup = num_classes, warmup

    def thresholds(self, tau: float) -> Tensor:
        """(C,) the current per-class thresholds."""
        counts = torch.bincount(self.table.values[self.unlabeled] + 1, minlength=self.num_classes + 1)
        return flex_thresholds(counts[1:], int(counts[0]), tau, self.warmup)  # counts[0]: never above τ

    def update(self, idx: Tensor, probs: Tensor, tau: float, step: int) -> None:
        """Record the class of each image of ``idx`` whose confidence reaches the fixed τ."""
        conf, cls = probs.max(1)
        passed = conf >= tau
        self.table.write(idx[passed], cls[passed], step)

    def merge(self, dist: Dist) -> None:
        self.table.merge(dist)

    def state_dict(self) -> dict[str, Any]:
        return self.table.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.table.load_state_dict(state)
