"""Stopping a run that diverged: a NaN/inf loss or weights, named in one line, with the last good checkpoint kept."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from camssl.distributed import Dist
from camssl.errors import UserError
from camssl.methods import StepOutput


class TrainingError(UserError):
    """Training diverged (NaN/inf loss)."""


def check_finite(out: StepOutput, dist: Dist, *, epoch: int, step: int, i: int, run_dir: Path,
                 device: torch.device) -> None:
    """Stop on a NaN/inf loss, naming the step and the loss term(s); all ranks stop together.

    ``epoch``: epochs finished; ``step``: global steps taken; ``i``: the step within the epoch.
    """
    terms = sorted(k for k in out.metrics if k.startswith("loss"))
    if dist.enabled:
        # one small collective per step: a rank whose loss is not finite makes the sum not finite
        vec = torch.stack([out.loss.detach().float(), *(out.metrics[k].detach().float().to(device) for k in terms)])
        vec = dist.all_reduce_sum(vec)
        value, term_values = vec[0], dict(zip(terms, vec[1:]))
    else:
        value, term_values = out.loss.detach(), {k: out.metrics[k] for k in terms}
    if bool(torch.isfinite(value)):
        return
    bad = [k for k, v in term_values.items() if not bool(torch.isfinite(v).all())]
    kept = (f"the last good checkpoint (epoch {epoch}) is kept in {run_dir}" if epoch > 0
            else "no checkpoint was written yet (it diverged in the first epoch)")
    raise TrainingError(
        f"the loss became {float(value)} at epoch {epoch + 1}, step {i + 1} (global step {step + 1}; "
        f"term: {', '.join(bad) or 'total'}); lower optim.lr or the loss weights; {kept}"
    )


def check_weights(net: nn.Module, epoch: int, run_dir: Path) -> None:
    """Never checkpoint non-finite weights (a finite loss can still give an infinite update)."""
    bad = [n for n, p in net.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise TrainingError(f"the weights became NaN/inf in epoch {epoch} (first: {bad[0]}); lower optim.lr; "
                            f"the last good checkpoint (epoch {epoch - 1}) is kept in {run_dir}")
