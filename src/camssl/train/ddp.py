"""What the trainer needs for several processes: the DDP wrapper, batch-sharing checks, replica sync.

The configured batch sizes are global and every rank takes its strided share of each
global batch from the same seeded streams; BatchNorm running statistics are averaged
over ranks once per epoch (or synchronised in every step with ``sync_bn=true``).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from camssl.config import TrainConfig
from camssl.distributed import Dist
from camssl.errors import ConfigError
from camssl.methods import METHODS, Method


def unlabeled_batch_size(cfg: TrainConfig) -> int:
    """Unlabeled images per step (global)."""
    return max(1, round(cfg.optim.unlabeled_multiplier * cfg.optim.batch_size))


def wrap_ddp(net: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``net`` with the settings the methods need.

    - No buffer broadcast in forward: the methods run several forwards per step (the anchor
      view, then labeled + strong), each would re-broadcast rank 0's BatchNorm statistics;
      the trainer averages them over ranks once per epoch instead (:func:`sync_buffers`).
    - ``find_unused_parameters=False``, ``static_graph=False``: every parameter gets its
      gradient from the one ``backward()`` of each step. Grad-CAM's ``autograd.grad`` calls
      (the anchor's maps; the strong view's with ``create_graph=True`` in ``full`` mode)
      differentiate only w.r.t. the tapped features and never run the parameters' gradient
      accumulators, so DDP's hooks fire once per step, after the double backward has been
      folded into the same backward pass (tests/test_distributed.py runs both grad modes).
    """
    from torch.nn.parallel import DistributedDataParallel

    kwargs: dict[str, Any] = {"find_unused_parameters": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        kwargs["forward_sync_buffers"] = False  # torch >= 2.13 (still syncs once at init: harmless)
    else:
        kwargs["broadcast_buffers"] = False
    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None, **kwargs)


def check_sync_bn(cfg: TrainConfig, net: nn.Module, method: Method | None = None) -> None:
    """SyncBatchNorm has no double backward (pytorch#61222): refuse a method that needs one through it."""
    if not cfg.sync_bn:
        return
    if method is None:
        method = METHODS[cfg.method.name](cfg.method)
    layers = method.double_backward_layers(net)
    if not layers:
        return
    closed_form = getattr(net, "cam_layer", None)
    raise ConfigError(
        f"sync_bn=true cannot train method.gradcam.grad_mode=full at {', '.join(layers)}: that needs a "
        "double backward through SyncBatchNorm, which PyTorch does not implement; use "
        f"method.gradcam.grad_mode=detach-weights, method.gradcam.layers={closed_form} (closed form) or sync_bn=false"
    )


def check_world(cfg: TrainConfig, dist: Dist, device: torch.device) -> None:
    """Refuse a multi-process run whose global batches cannot be shared evenly, or an unusable sync_bn."""
    if not dist.enabled:
        return
    w = dist.world
    batches = [("optim.batch_size", cfg.optim.batch_size)]
    if METHODS[cfg.method.name].uses_unlabeled:
        batches.append(("the unlabeled batch (optim.unlabeled_multiplier x optim.batch_size)", unlabeled_batch_size(cfg)))
    for what, size in batches:
        if size % w:
            fit = max(w, size // w * w)
            raise ConfigError(
                f"{what} = {size} cannot be shared by {w} processes: batch sizes are global, each process "
                f"takes 1/{w}; use a multiple of {w} (e.g. optim.batch_size={fit if what.startswith('optim') else '...'}) "
                "or another --nproc-per-node"
            )
    if cfg.sync_bn and device.type != "cuda":
        raise ConfigError(
            "sync_bn=true needs CUDA (PyTorch's SyncBatchNorm has no CPU kernels); set sync_bn=false for CPU runs"
        )


def sync_buffers(dist: Dist, modules: list[nn.Module]) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) of ``modules`` over ranks.

    Parameters are kept identical by DDP's gradient averaging; the running statistics are
    per rank (no buffer broadcast), from each rank's share of the batches.
    """
    if not dist.enabled:
        return
    buffers = [b for m in modules for b in m.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = dist.all_reduce_mean(torch.cat([b.detach().reshape(-1).float() for b in buffers]))
    offset = 0
    with torch.no_grad():
        for b in buffers:
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()


def check_replicas(dist: Dist, net: nn.Module, epoch: int) -> None:
    """Fail loudly if the ranks' weights ever differ (a broken gradient synchronisation)."""
    if not dist.enabled:
        return
    with torch.no_grad():
        sums = torch.stack([p.detach().double().sum() for p in net.parameters()])
    if not dist.same_on_all_ranks(sums):
        raise RuntimeError(
            f"the model replicas of the {dist.world} processes differ after epoch {epoch}: "
            "gradients were not synchronised (a bug; please report it with the config)"
        )
