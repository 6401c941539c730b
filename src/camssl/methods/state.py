"""Per-sample method state that survives resume and is merged across ranks.

:class:`SampleTable` holds one row per training image (indexed like ``Batch.idx_u``),
e.g. imputed labels or running statistics of each unlabeled sample. Each rank writes
the rows of its own share of a batch; :meth:`SampleTable.merge` (call it in
``Method.end_epoch``) makes every rank's table identical: for each row the most recent
write wins (ties between ranks go to the lowest rank).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from camssl.distributed import Dist


class SampleTable:
    """``values`` (N, *shape) with, per row, the global step of its last write (``-1``: never written)."""

    def __init__(self, n: int, shape: tuple[int, ...] = (), *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, fill: float = 0.0) -> None:
        if n < 0:
            raise ValueError(f"SampleTable needs n >= 0 rows, got {n}")
        self.values = torch.full((n, *shape), fill, dtype=dtype, device=device)
        self.stamp = torch.full((n,), -1, dtype=torch.long, device=device)

    def __len__(self) -> int:
        return self.values.shape[0]

    def written(self, idx: Tensor | None = None) -> Tensor:
        """Bool mask of rows written so far (of ``idx``, or of the whole table)."""
        stamp = self.stamp if idx is None else self.stamp[idx]
        return stamp >= 0

    def write(self, idx: Tensor, rows: Tensor, step: int) -> None:
        """Set rows ``idx`` to ``rows`` (detached) at global step ``step``."""
        self.values[idx] = rows.detach().to(self.values.dtype)
        self.stamp[idx] = int(step)

    def merge(self, dist: Dist) -> None:
        """Make the table identical on every rank: per row, the latest write of any rank."""
        if not dist.enabled:
            return
        import torch.distributed as tdist

        latest = self.stamp.clone()
        tdist.all_reduce(latest, op=tdist.ReduceOp.MAX)
        mine = (self.stamp == latest) & (latest >= 0)
        owner = torch.where(mine, torch.full_like(latest, dist.rank), torch.full_like(latest, dist.world))
        tdist.all_reduce(owner, op=tdist.ReduceOp.MIN)
        keep = owner == dist.rank
        shape = (-1,) + (1,) * (self.values.ndim - 1)
        summed = torch.where(keep.view(shape), self.values, torch.zeros_like(self.values))
        tdist.all_reduce(summed, op=tdist.ReduceOp.SUM)
        written = latest >= 0
        self.values = torch.where(written.view(shape), summed, self.values)
        self.stamp = latest

    def state_dict(self) -> dict[str, Any]:
        return {"values": self.values.cpu(), "stamp": self.stamp.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        values, stamp = state["values"], state["stamp"]
        if tuple(values.shape) != tuple(self.values.shape):
            raise ValueError(f"table state has shape {tuple(values.shape)}, this run needs {tuple(self.values.shape)}")
        self.values = values.to(self.values.device, self.values.dtype)
        self.stamp = stamp.to(self.stamp.device)
