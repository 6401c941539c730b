"""Batch streams: endless, seeded, resumable streams of index batches.

A stream walks over a fixed set of indices in passes; each pass is a fresh permutation
drawn from a generator seeded by ``(seed, pass number)``, so the stream's whole state
is two integers and a resumed run draws exactly the batches an uninterrupted run would.
A batch that runs past the end of a pass continues into the next one (nothing is
dropped, every index is seen once per pass).

In a multi-process run every rank builds the same stream and keeps its own slice of each
global batch (:meth:`IndexStream.next` with ``rank``/``world``), so ranks see disjoint
samples and the global batch size does not depend on the number of processes.
"""

from __future__ import annotations

import torch
from torch import Tensor


class IndexStream:
    """Endless stream of index batches over ``indices``."""

    def __init__(self, indices: Tensor, batch_size: int, seed: int) -> None:
        if len(indices) == 0:
            raise ValueError("IndexStream needs at least one index")
        self.indices = indices.to(torch.int64).cpu()
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.pass_no = 0
        self.pos = 0
        self._perm = self._permutation(0)

    def _permutation(self, pass_no: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_no)
        return self.indices[torch.randperm(len(self.indices), generator=g)]

    def next(self, rank: int = 0, world: int = 1) -> Tensor:
        """The next global batch, or this rank's strided share of it."""
        parts = []
        need = self.batch_size
        while need > 0:
            take = self._perm[self.pos : self.pos + need]
            parts.append(take)
            need -= len(take)
            self.pos += len(take)
            if self.pos >= len(self._perm):
                self.pass_no += 1
                self.pos = 0
                self._perm = self._permutation(self.pass_no)
        batch = torch.cat(parts)
        return batch[rank::world]

    def state_dict(self) -> dict[str, int]:
        return {"pass_no": self.pass_no, "pos": self.pos, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed or state["batch_size"] != self.batch_size:
            raise ValueError("stream state belongs to a different seed or batch size")
        self.pass_no = int(state["pass_no"])
        self.pos = int(state["pos"])
        self._perm = self._permutation(self.pass_no)
