"""Multi-process training: the process group, and the few collectives the trainer needs.

A run started by ``torchrun`` (or any launcher that sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` plus ``MASTER_ADDR``/``MASTER_PORT``) trains with W processes::

    torchrun --nproc-per-node 4 -m camssl train --config cpu --data ./cifar-10
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m camssl train ...

Each process uses ``cuda:LOCAL_RANK`` with NCCL when CUDA is used, else the CPU with gloo.
Without those variables (or with ``WORLD_SIZE=1``) nothing here does anything: a
one-process run never creates a process group.

Errors a user can cause must reach every rank, or the others wait in a collective:
:meth:`Dist.on_main` / :meth:`Dist.main_first` run a step on rank 0 first and hand its
:class:`~camssl.errors.UserError` (if any) to all ranks, which then raise the same error.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor

from camssl.errors import UserError

T = TypeVar("T")

# How long a rank waits for the others in a collective before failing (a stuck or dead rank).
TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("CAMSSL_DIST_TIMEOUT_MIN", "30")))


class SharedError(UserError):
    """A user error raised on rank 0 and re-raised on the other ranks (printed once, by rank 0)."""


@dataclass
class Dist:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: no process group (one process)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    # ------------------------------------------------------------ rank-0-first steps

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give its result (pickled) or its UserError to every rank."""
        if not self.enabled:
            return fn()
        payload: list[Any] = [None]
        if self.main:
            try:
                payload[0] = ("ok", fn())
            except UserError as e:
                payload[0] = ("error", str(e))
                self._broadcast(payload)
                raise
        self._broadcast(payload)
        status, value = payload[0]
        if status == "error":
            raise SharedError(value)
        return value

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0, then (if it succeeded) on the other ranks; each keeps its own result.

        For steps that may write shared files (a data cache): rank 0 writes, the others then read.
        """
        if not self.enabled:
            return fn()
        # unlike on_main, only the outcome travels (rank 0's result may be large: a data set)
        out: Any = None
        ok: list[Any] = [None]
        if self.main:
            try:
                out = fn()
                ok[0] = ("ok", None)
            except UserError as e:
                ok[0] = ("error", str(e))
                self._broadcast(ok)
                raise
        self._broadcast(ok)
        if ok[0][0] == "error":
            raise SharedError(ok[0][1])
        if not self.main:
            out = fn()
        return out  # type: ignore[return-value]

    def _broadcast(self, objs: list[Any]) -> None:
        tdist.broadcast_object_list(objs, src=0)

    # ------------------------------------------------------------ collectives (no-ops for one process)

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """Sum of ``t`` over ranks (in place and returned)."""
        if self.enabled:
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t

    def all_reduce_mean(self, t: Tensor) -> Tensor:
        if self.enabled:
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
            t /= self.world
        return t

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def same_on_all_ranks(self, t: Tensor) -> bool:
        """True when ``t`` is bitwise identical on every rank."""
        if not self.enabled:
            return True
        hi, lo = t.clone(), t.clone()
        tdist.all_reduce(hi, op=tdist.ReduceOp.MAX)
        tdist.all_reduce(lo, op=tdist.ReduceOp.MIN)
        return bool(torch.equal(hi, lo))


def env_ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; (0, 1, 0) without one."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UserError(
            "WORLD_SIZE/RANK/LOCAL_RANK must be integers; launch multi-process runs with torchrun"
        ) from None
    return rank, world, local


def is_main_process() -> bool:
    """Rank 0 of a launched run, or a plain process (usable before any process group exists)."""
    return env_ranks()[0] == 0


def setup(device: str) -> tuple[Dist, torch.device | None]:
    """Join the process group of a launched run; returns (dist, the device this rank must use).

    ``device`` is the config's ``device`` (auto | cpu | cuda | cuda:N). With several processes,
    CUDA means ``cuda:LOCAL_RANK`` and NCCL; the CPU means gloo. The returned device is None
    for a single process (the trainer picks it as usual).
    """
    rank, world, local = env_ranks()
    if world <= 1:
        return Dist(), None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device} asked for but CUDA is not available; use device=cpu or device=auto")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        # checked against the node's process count so that every rank fails alike (rank 0 reports it)
        per_node = max(int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0), local + 1)
        if per_node > torch.cuda.device_count():
            raise UserError(
                f"{per_node} processes on this node but it has {torch.cuda.device_count()} GPU(s); "
                "start at most one process per GPU (torchrun --nproc-per-node), or use device=cpu"
            )
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not tdist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": TIMEOUT}
        if use_cuda:
            kwargs["device_id"] = dev
        tdist.init_process_group(**kwargs)
    return Dist(rank=tdist.get_rank(), world=tdist.get_world_size(), local_rank=local, backend=backend), dev


def teardown(dist: Dist, clean: bool = True) -> None:
    """Leave the process group; ``clean``: all ranks got here normally (wait for each other first)."""
    if dist.enabled and tdist.is_initialized():
        if clean:
            tdist.barrier()
        tdist.destroy_process_group()
