"""The one training loop shared by every method.

The trainer owns everything that is not the objective: data on the device, the split,
batch streams, views, the optimiser (SGD + Nesterov), the per-step schedule, EMA, mixed
precision, validation, checkpoints, logging and the final result. A method
(:mod:`camssl.methods`) only turns a batch into a loss and metrics.

Run directory layout::

    config.yaml      the full resolved config
    split.json       the labeled/unlabeled/validation indices (reloaded on resume)
    metrics.jsonl    one record per epoch
    last.pt          checkpoint after the latest finished epoch (atomic)
    best.pt          weights at the best validation accuracy
    tb/              TensorBoard events (``tensorboard --logdir runs``)
    figures/         CAM grids (cam_epoch_0.png, cam_final.png)
    result.json      written at the end

Several processes (``torchrun --nproc-per-node N -m camssl train ...``, see
:mod:`camssl.distributed`) train one model with DistributedDataParallel: the configured
batch sizes are global and every rank takes its strided share of each global batch from
the same seeded streams, so ranks see disjoint samples and adding processes makes
training faster, not bigger. The split is made on rank 0 and broadcast; training metrics
are averaged over ranks; validation and test are sharded and their sums reduced, so the
accuracies are over the whole sets; BatchNorm running statistics are averaged over ranks
at the end of each epoch (or synchronised in every step with ``sync_bn=true``); only
rank 0 prints and writes files. Checkpoints hold every rank's RNG states, so a resumed
run continues each rank's random stream.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camssl import io
from camssl.augment import Augmenter
from camssl.config import TrainConfig, config_differences, dump_yaml, from_dict, read_yaml
from camssl.data import DataBundle, Split, load_data, make_split
from camssl.data.streams import IndexStream
from camssl.distributed import Dist
from camssl.errors import ConfigError, UserError
from camssl.methods import METHODS, Batch, Method, StepContext
from camssl.models import build_model
from camssl.viz import aligned_cams, cam_grid_figure, map_diagnostics, save_figure

CHECKPOINT_FORMAT = 1
RUN_FILES = ("config.yaml", "split.json", "metrics.jsonl", "last.pt", "best.pt", "result.json")


# Config fields that may differ between a checkpoint and the run resuming it (they do not
# change what is computed, only where and how fast; a moved data.source is still checked
# against the split's fingerprint of the training data).
RESUMABLE_CHANGES = ("device", "threads", "progress", "out_dir", "eval_batch_size", "cam_grid",
                     "record_indices", "data.cache_dir", "data.source")


class TrainingError(UserError):
    """Training diverged (NaN/inf loss)."""


# ---------------------------------------------------------------- small helpers


def pick_device(name: str, option: str = "device=") -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``option`` is how the user set it (for the error)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{option}{name} asked for but CUDA is not available; use {option}cpu or {option}auto")
    return torch.device(name)


def lr_factor(step: int, total: int, schedule: str, warmup: int) -> float:
    """Learning-rate multiplier at ``step`` of ``total`` (per-step schedule)."""
    if schedule == "onecycle":
        peak = max(1, warmup or int(0.3 * total))
        if step < peak:
            return 0.04 + 0.96 * step / peak
        t = (step - peak) / max(1, total - peak)
        return max(0.0, 1.0 - t)
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


class EMA:
    """Exponential moving average of a model's parameters (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_p = list(self.module.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - self.decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    augmenter: Augmenter,
    batch_size: int,
    num_classes: int,
    channels_last: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Any]:
    """Accuracy, mean loss and per-class accuracy of ``model`` on uint8 ``images``.

    ``reduce`` (e.g. a sum over ranks) is applied to the per-class hit and sample counts
    and the loss sum before they are turned into rates: each rank passes its shard of a
    set and gets the numbers of the whole set.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros(num_classes, device=images.device)
    count = torch.zeros(num_classes, device=images.device)
    loss_sum = torch.zeros((), device=images.device)
    for i in range(0, len(images), batch_size):
        x = augmenter.normalize(images[i : i + batch_size])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[i : i + batch_size]
        with autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        hit = (logits.argmax(1) == y).float()
        correct.index_add_(0, y, hit)
        count.index_add_(0, y, torch.ones_like(hit))
    model.train(was_training)
    if reduce is not None:
        packed = reduce(torch.cat([correct, count, loss_sum[None]]))
        correct, count, loss_sum = packed[:num_classes], packed[num_classes:-1], packed[-1]
    n = count.sum().clamp_min(1)
    per_class = (correct / count.clamp_min(1)).tolist()
    return {
        "acc": float(correct.sum() / n),
        "loss": float(loss_sum / n),
        "per_class": per_class,
        "n": int(count.sum()),
    }


def fmt_pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _error_detail(e: BaseException, limit: int = 200) -> str:
    """The informative line of an exception (load_state_dict's first line only says "Error(s) in ...")."""
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    detail = next((l for l in lines if not l.startswith("Error(s) in loading")), lines[0] if lines else repr(e))
    detail = detail.rstrip(".")
    return detail if len(detail) <= limit else detail[: limit - 3] + "..."


def _quiet(_: str) -> None:
    """The log of ranks other than 0."""


# rank r > 0 seeds its own random streams (augmentations) at seed + r * stride
RANK_SEED_STRIDE = 7919


def unlabeled_batch_size(cfg: TrainConfig) -> int:
    """Unlabeled images per step (global)."""
    return max(1, round(cfg.optim.unlabeled_multiplier * cfg.optim.batch_size))


def wrap_ddp(net: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``net`` with the settings the methods need.

    - No buffer broadcast in forward: the methods run several forwards per step (the anchor
      view, then labeled + strong), each would re-broadcast rank 0's BatchNorm statistics;
      the trainer averages them over ranks once per epoch instead (``Trainer._sync_buffers``).
    - ``find_unused_parameters=False``, ``static_graph=False``: every parameter gets its
      gradient from the one ``backward()`` of each step. Grad-CAM's ``autograd.grad`` calls
      (the anchor's maps; the strong view's with ``create_graph=True`` in ``full`` mode)
      differentiate only w.r.t. the tapped features and never run the parameters' gradient
      accumulators, so DDP's hooks fire once per step, after the double backward has been
      folded into the same backward pass (tests/test_distributed.py runs both grad modes).
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    kwargs: dict[str, Any] = {"find_unused_parameters": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        kwargs["forward_sync_buffers"] = False  # torch >= 2.13 (still syncs once at init: harmless)
    else:
        kwargs["broadcast_buffers"] = False
    return DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None, **kwargs
    )


def check_sync_bn(cfg: TrainConfig, net: nn.Module) -> None:
    """SyncBatchNorm has no double backward (pytorch#61222): refuse Grad-CAM ``full`` mode through it."""
    m = cfg.method
    if not (cfg.sync_bn and m.name == "gradcam" and m.grad_mode == "full"):
        return
    closed_form = getattr(net, "cam_layer", None)
    autograd_layers = [name for name in m.layers if name != closed_form]
    if autograd_layers:
        raise ConfigError(
            f"sync_bn=true cannot train method.grad_mode=full at {', '.join(autograd_layers)}: that needs a "
            "double backward through SyncBatchNorm, which PyTorch does not implement; use "
            f"method.grad_mode=detach-weights, method.layers={closed_form} (closed form) or sync_bn=false"
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


# ---------------------------------------------------------------- the run directory


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse an output directory that is in use (unless ``overwrite``); writes nothing."""
    holds_run = (run_dir / "config.yaml").exists()
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output path '{run_dir}' is a file, not a directory; choose another --out")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not holds_run and not overwrite:
            raise UserError(
                f"output directory '{run_dir}' is not empty and holds no camssl run; choose another --out or pass --overwrite"
            )
        if holds_run and not overwrite:
            raise UserError(
                f"output directory '{run_dir}' already holds a run; pass --resume {run_dir} to continue it, "
                "--overwrite to replace it, or choose another --out"
            )


def prepare_run_dir(run_dir: Path, cfg: TrainConfig | None, resume: bool, overwrite: bool) -> TrainConfig:
    """Create, check or reopen a run directory; returns the run's config.

    A directory that already holds a run is never touched unless ``resume`` (continue it,
    with its own saved config) or ``overwrite`` (delete that run's files first).
    """
    holds_run = (run_dir / "config.yaml").exists()
    if resume:
        if not holds_run:
            raise UserError(f"cannot resume '{run_dir}': it holds no run (no config.yaml); start a new run with --out")
        saved = from_dict(TrainConfig, read_yaml(run_dir / "config.yaml"))
        saved.validate()
        return saved
    assert cfg is not None
    check_run_dir(run_dir, overwrite)
    if run_dir.exists() and any(run_dir.iterdir()):
        for name in RUN_FILES + ("indices.json",):
            (run_dir / name).unlink(missing_ok=True)
        remove_stale_temp_files(run_dir)
        for sub in ("tb", "figures"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    io.write_text(run_dir / "config.yaml", dump_yaml(cfg))
    return cfg


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a kill interrupted (``.last.pt.*.tmp`` ...).

    They are never read: a file only becomes ``last.pt`` by a complete write and a rename.
    """
    stale = [
        p for p in run_dir.glob(".*.tmp")
        if any(p.name.startswith(f".{name}.") for name in RUN_FILES + ("indices.json",))
    ]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.out_dir) / f"{stamp}-{cfg.method.name}-s{cfg.seed}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


# ---------------------------------------------------------------- the trainer


class Trainer:
    """Train one run. ``Trainer(cfg, run_dir).fit()`` returns the result dict."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        *,
        resume: bool = False,
        log: Callable[[str], None] = print,
        bundle: DataBundle | None = None,
        dist: Dist | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.dist = dist or Dist()
        self.log = log if self.dist.main else _quiet
        self.device = device or pick_device(cfg.device)
        check_world(cfg, self.dist, self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.manual_seed(cfg.seed)

        # data → split → device (rank 0 loads first: it may write the decode cache)
        t0 = time.time()
        self.bundle = (
            bundle if bundle is not None else self.dist.main_first(lambda: load_data(cfg.data, seed=cfg.split.seed))
        )
        self.classes = self.bundle.train.classes
        self.num_classes = len(self.classes)
        self.split = self.dist.on_main(self._load_or_make_split)
        train = self.bundle.train
        self.images = train.images.to(self.device)
        self.labels = train.labels.to(self.device)
        self.test_images = self.bundle.test.images.to(self.device)
        self.test_labels = self.bundle.test.labels.to(self.device)
        self.log(
            f"data: {self.bundle.name}  {self.num_classes} classes, {len(train)} train / {len(self.bundle.test)} test "
            f"images at {tuple(train.images.shape[2:])}  ({time.time() - t0:.1f}s)"
        )
        if self.bundle.skipped:
            self.log(
                f"skipped {len(self.bundle.skipped)} unreadable image(s) (data.skip_bad=true), "
                f"e.g. {self.bundle.skipped[0]}"
            )
        self.log(
            f"split (seed {cfg.split.seed}): {len(self.split.labeled)} labeled, {len(self.split.unlabeled)} unlabeled, "
            f"{len(self.split.val)} validation; test {len(self.bundle.test)}"
            + (" (carved from the data)" if self.bundle.test_carved else "")
        )

        # model, method, optimisation; ``net`` is the bare model, ``model`` what the
        # training step calls (DistributedDataParallel around ``net`` with several processes)
        self.net = build_model(
            cfg.model.name,
            self.num_classes,
            width=cfg.model.width,
            pretrained=cfg.model.pretrained,
            resize_to=cfg.model.resize_to,
        ).to(self.device)
        if cfg.model.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._check_layers()
        self.method: Method = METHODS[cfg.method.name](cfg.method, label_smoothing=cfg.optim.label_smoothing)
        if self.method.uses_unlabeled and len(self.split.unlabeled) == 0:
            raise UserError(
                f"method {cfg.method.name} needs unlabeled data but split.ratio=0 gives none; "
                "set split.ratio > 0 (e.g. --ratio 1) or use --method supervised"
            )
        if cfg.sync_bn and self.dist.enabled:
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
        self.augmenter = Augmenter(cfg.augment, self.device)
        self.optimizer = torch.optim.SGD(
            self.net.parameters(),
            lr=cfg.optim.lr,
            momentum=cfg.optim.momentum,
            nesterov=cfg.optim.nesterov,
            weight_decay=cfg.optim.weight_decay,
        )
        self.ema = EMA(self.net, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        # streams: one global labeled batch (and one unlabeled batch) per step; every rank
        # walks the same streams and keeps its share of each batch
        o = cfg.optim
        self.steps_per_epoch = max(1, len(self.split.labeled) // o.batch_size)
        self.total_steps = self.steps_per_epoch * o.epochs
        self.warmup_steps = int(round(o.warmup_epochs * self.steps_per_epoch))
        self.labeled_stream = IndexStream(self.split.labeled, o.batch_size, seed=cfg.seed)
        self.unlabeled_stream = (
            IndexStream(self.split.unlabeled, unlabeled_batch_size(cfg), seed=cfg.seed + 1)
            if self.method.uses_unlabeled
            else None
        )
        # per-rank randomness (augmentations): rank 0 keeps the single-process seeds
        self.aug_gen = torch.Generator().manual_seed(cfg.seed + 2 + RANK_SEED_STRIDE * self.dist.rank)
        if self.dist.rank:
            torch.manual_seed(cfg.seed + RANK_SEED_STRIDE * self.dist.rank)

        self.epoch = 0  # epochs finished
        self.global_step = 0
        self.best: dict[str, Any] = {"val_acc": -1.0, "epoch": 0}
        self.history: list[dict[str, Any]] = []
        self.train_time = 0.0
        self.train_images = 0
        self.elapsed_before = 0.0
        self.segment_start = time.time()
        self.recorded: dict[str, list[list[int]]] | None = None
        if resume:
            self._load_checkpoint()
        self.model: nn.Module = self.net
        if self.dist.enabled:
            self.model = wrap_ddp(self.net, self.device)
        self.writer: Any = None  # created by fit(): nothing is written before training starts

    # ------------------------------------------------------------ setup pieces

    def _load_or_make_split(self) -> Split:
        path = self.run_dir / "split.json"
        if self.resume and path.exists():
            split = Split.load(path)
            if split.fingerprint != self.bundle.fingerprint:
                raise UserError(
                    f"the data of '{self.run_dir}' differs from the data found now (fingerprint "
                    f"{split.fingerprint} vs {self.bundle.fingerprint}); resume with the same data.source"
                )
            return split
        split = make_split(
            self.bundle.train.labels, self.num_classes, self.cfg.split, self.bundle.fingerprint, class_names=self.classes
        )
        return split

    def _write_split(self) -> None:
        path = self.run_dir / "split.json"
        if self.dist.main and not (self.resume and path.exists()):
            self.split.save(path)

    def _check_layers(self) -> None:
        for name in self.cfg.method.layers:
            try:
                self.net.get_submodule(name)
            except AttributeError:
                raise ConfigError(
                    f"method.layers: unknown layer '{name}' for {self.cfg.model.name}; valid stages: "
                    f"{', '.join(self.net.stages)} (or any module path such as {self.net.stages[-1]}.0)"
                ) from None
        if self.dist.enabled:
            check_sync_bn(self.cfg, self.net)

    def _amp_dtype(self) -> torch.dtype | None:
        if not (self.cfg.amp and self.device.type == "cuda"):
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _tensorboard(self) -> Any:
        if not self.dist.main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.run_dir / "tb"), purge_step=self.global_step if self.resume else None)

    # ------------------------------------------------------------ checkpoints

    def _rng_state(self) -> dict[str, Any]:
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "aug": self.aug_gen.get_state(),
        }

    def _set_rng_state(self, rng: dict[str, Any]) -> None:
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.aug_gen.set_state(rng["aug"])

    def _state(self, rng_ranks: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model_name": self.cfg.model.name,
            "num_classes": self.num_classes,
            "classes": self.classes,
            "config": self.cfg.to_dict(),
            "world": self.dist.world,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self.net.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_ranks[0],
            "rng_ranks": rng_ranks,  # every rank's states (one entry for a single process)
            "streams": {
                "labeled": self.labeled_stream.state_dict(),
                "unlabeled": self.unlabeled_stream.state_dict() if self.unlabeled_stream else None,
            },
            "best": self.best,
            "history": self.history,
            "train_time": self.train_time,
            "train_images": self.train_images,
            "elapsed": self.elapsed(),
        }

    def _load_checkpoint(self) -> None:
        """Restore everything from ``last.pt`` (on every rank)."""
        path = self.run_dir / "last.pt"
        if self.dist.main:
            stale = remove_stale_temp_files(self.run_dir)
            if stale:
                self.log(f"resume: removed {len(stale)} unfinished temporary file(s) of an interrupted write")
        if not path.exists():
            self.log(f"resume: no checkpoint in {self.run_dir} yet; starting from epoch 1")
            return
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a corrupt file is a user-facing problem
            raise UserError(
                f"cannot read checkpoint '{path}': {e.__class__.__name__}; it may be corrupt or not a camssl "
                "checkpoint; delete it to restart the run from epoch 1, or start a new run with --out"
            ) from None
        if not isinstance(state, dict) or "model" not in state:
            raise UserError(f"'{path}' is not a camssl training checkpoint; delete it or start a new run with --out")
        fix = "resume the run directory the checkpoint belongs to, or start a new run with --out"
        if state.get("model_name") != self.cfg.model.name or state.get("num_classes") != self.num_classes:
            raise UserError(
                f"checkpoint '{path}' is for {state.get('model_name')} with {state.get('num_classes')} classes, "
                f"but the run's config builds {self.cfg.model.name} with {self.num_classes}; {fix}"
            )
        if state.get("config") is not None:
            diff = config_differences(state["config"], self.cfg.to_dict(), ignore=RESUMABLE_CHANGES)
            if diff:
                shown = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} in config.yaml" for k, a, b in diff[:3])
                more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
                raise UserError(f"checkpoint '{path}' was written by a different config ({shown}{more}); {fix}")
        try:
            self.net.load_state_dict(state["model"])
            if self.ema and state["ema"] is not None:
                self.ema.module.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.labeled_stream.load_state_dict(state["streams"]["labeled"])
            if self.unlabeled_stream and state["streams"]["unlabeled"]:
                self.unlabeled_stream.load_state_dict(state["streams"]["unlabeled"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"checkpoint '{path}' does not fit this run: {_error_detail(e)}; {fix}") from None
        self.scaler.load_state_dict(state["scaler"])
        ranks = state.get("rng_ranks") or [state["rng"]]
        if len(ranks) == self.dist.world:
            self._set_rng_state(ranks[self.dist.rank])
        else:
            # another number of processes: rank r continues rank r's stream where it exists
            if self.dist.rank < len(ranks):
                self._set_rng_state(ranks[self.dist.rank])
            self.log(
                f"resume: the checkpoint was written by {len(ranks)} process(es), this run has {self.dist.world}; "
                "training continues, but not bit-exactly as the original run would have"
            )
        self.epoch = state["epoch"]
        self.global_step = state["global_step"]
        self.best = state["best"]
        self.history = state["history"]
        self.train_time = state["train_time"]
        self.train_images = state["train_images"]
        self.elapsed_before = state["elapsed"]
        if self.dist.main:
            self._repair_best()
        self.log(f"resumed from {path} after epoch {self.epoch} (step {self.global_step})")

    def _repair_best(self) -> None:
        """Rewrite best.pt if a kill fell between writing last.pt and best.pt (best = the checkpoint's epoch)."""
        best_path = self.run_dir / "best.pt"
        if self.best["epoch"] < 1:
            return
        try:
            saved_epoch = torch.load(best_path, map_location="cpu", weights_only=True)["epoch"]
        except Exception:  # noqa: BLE001 - missing or unreadable: rewrite it if we can
            saved_epoch = None
        if saved_epoch == self.best["epoch"]:
            return
        if self.best["epoch"] == self.epoch:
            self._save_best()
            self.log(f"resume: rewrote {best_path} (epoch {self.epoch}), whose write the kill interrupted")
        else:
            self.log(f"warning: {best_path} is from epoch {saved_epoch}, not the best epoch {self.best['epoch']}")

    def _save_best(self) -> None:
        weights = self.eval_model().state_dict()
        io.torch_save(self.run_dir / "best.pt", {"epoch": self.epoch, "classes": self.classes, "model": weights})

    def _save_checkpoint(self, improved: bool) -> None:
        """last.pt (then best.pt and metrics.jsonl) by rank 0, holding every rank's RNG states."""
        rng_ranks = self.dist.all_gather_object(self._rng_state())
        if self.dist.main:
            io.torch_save(self.run_dir / "last.pt", self._state(rng_ranks))
            if improved:
                self._save_best()
            io.write_text(
                self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history)
            )
        self.dist.barrier()  # the other ranks may read best.pt later (finish)

    # ------------------------------------------------------------ the loop

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema else self.net

    def next_batch(self) -> Batch:
        idx_l = self.labeled_stream.next(self.dist.rank, self.dist.world)
        on_device = idx_l.to(self.device)  # one transfer of the indices per stream and step
        batch = Batch(self.images[on_device], self.labels[on_device])
        idx_u = None
        if self.unlabeled_stream is not None:
            idx_u = self.unlabeled_stream.next(self.dist.rank, self.dist.world)
            on_device = idx_u.to(self.device)
            batch.x_u, batch.y_u = self.images[on_device], self.labels[on_device]
        if self.recorded is not None:
            self.recorded["labeled"].append(idx_l.tolist())
            if idx_u is not None:
                self.recorded["unlabeled"].append(idx_u.tolist())
        return batch

    def train_epoch(self) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        sums: dict[str, Tensor] = {}
        loss_sum = torch.zeros((), device=self.device)
        n_images = 0
        t0 = time.time()
        bar = self._progress_bar()
        record = cfg.record_indices and self.epoch == 0
        self.recorded = {"labeled": [], "unlabeled": []} if record else None
        for i in range(self.steps_per_epoch):
            lr = cfg.optim.lr * lr_factor(self.global_step, self.total_steps, cfg.optim.schedule, self.warmup_steps)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            batch = self.next_batch()
            ctx = StepContext(
                model=self.model,
                augmenter=self.augmenter,
                generator=self.aug_gen,
                epoch=self.epoch + i / self.steps_per_epoch,
                labeled_view=cfg.labeled_view,
                channels_last=cfg.model.channels_last,
            )
            with self.autocast():
                out = self.method.step(ctx, batch)
            self._check_finite(out.loss, out.metrics, i)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out.loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema:
                self.ema.update(self.net)
            self.global_step += 1
            loss_sum += out.loss.detach().float()
            for k, v in out.metrics.items():
                sums[k] = sums.get(k, 0) + v.detach().float().to(self.device)
            n_images += len(batch.x_l) + (len(batch.x_u) if batch.x_u is not None else 0)
            if bar is not None:
                bar.update(1)
                if i % 10 == 0:
                    bar.set_postfix(loss=f"{float(out.loss):.3f}", lr=f"{lr:.4f}")
        if bar is not None:
            bar.close()
        if self.recorded is not None:
            self._write_indices()
        # per-rank means of equal-sized shards, averaged over ranks: the global batch means
        keys = sorted(sums)
        packed = self.dist.all_reduce_mean(torch.stack([loss_sum, *(sums[k] for k in keys)]))
        loss_sum, sums = packed[0], dict(zip(keys, packed[1:]))
        dt = time.time() - t0
        self.train_time += dt
        self.train_images += n_images * self.dist.world
        stats = {"loss": float(loss_sum) / self.steps_per_epoch}
        stats.update({k: float(v) / self.steps_per_epoch for k, v in sums.items()})
        stats["lr"] = lr
        stats["epoch_time_s"] = dt
        stats["images_per_s"] = n_images * self.dist.world / max(dt, 1e-9)
        return stats

    def _write_indices(self) -> None:
        """indices.json: the sample indices each rank consumed in the first epoch (record_indices=true)."""
        assert self.recorded is not None
        gathered = self.dist.all_gather_object(self.recorded)
        if self.dist.main:
            io.write_json(
                self.run_dir / "indices.json",
                {
                    "world": self.dist.world,
                    "epoch": self.epoch + 1,
                    "labeled": [g["labeled"] for g in gathered],  # [rank][step] -> indices
                    "unlabeled": [g["unlabeled"] for g in gathered],
                },
            )
        self.recorded = None

    def _sync_buffers(self) -> None:
        """Average the BatchNorm running statistics over ranks (model and EMA), so all replicas agree.

        Parameters are kept identical by DDP's gradient averaging; the running statistics are
        per rank (broadcast_buffers=False), from each rank's share of the batches.
        """
        if not self.dist.enabled:
            return
        modules = [self.net] + ([self.ema.module] if self.ema else [])
        buffers = [b for m in modules for b in m.buffers() if b.is_floating_point()]
        if not buffers:
            return
        flat = self.dist.all_reduce_mean(torch.cat([b.detach().reshape(-1).float() for b in buffers]))
        offset = 0
        with torch.no_grad():
            for b in buffers:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()

    def _check_replicas(self) -> None:
        """Fail loudly if the ranks' weights ever differ (a broken gradient synchronisation)."""
        if not self.dist.enabled:
            return
        with torch.no_grad():
            sums = torch.stack([p.detach().double().sum() for p in self.net.parameters()])
        if not self.dist.same_on_all_ranks(sums):
            raise RuntimeError(
                f"the model replicas of the {self.dist.world} processes differ after epoch {self.epoch}: "
                "gradients were not synchronised (a bug; please report it with the config)"
            )

    def _check_finite(self, loss: Tensor, metrics: dict[str, Tensor], i: int) -> None:
        """Stop on a NaN/inf loss, naming the step and the loss term(s); all ranks stop together."""
        terms = sorted(k for k in metrics if k.startswith("loss"))
        if self.dist.enabled:
            # one small collective per step: a rank whose loss is not finite makes the sum not finite
            vec = torch.stack([loss.detach().float(), *(metrics[k].detach().float().to(self.device) for k in terms)])
            vec = self.dist.all_reduce_sum(vec)
            value, term_values = vec[0], dict(zip(terms, vec[1:]))
        else:
            value, term_values = loss.detach(), {k: metrics[k] for k in terms}
        if bool(torch.isfinite(value)):
            return
        bad = [k for k, v in term_values.items() if not bool(torch.isfinite(v).all())]
        kept = (
            f"the last good checkpoint (epoch {self.epoch}) is kept in {self.run_dir}"
            if self.epoch > 0
            else "no checkpoint was written yet (it diverged in the first epoch)"
        )
        raise TrainingError(
            f"the loss became {float(value)} at epoch {self.epoch + 1}, step {i + 1} (global step {self.global_step + 1}; "
            f"term: {', '.join(bad) or 'total'}); lower optim.lr or the loss weights; {kept}"
        )

    def _check_weights(self) -> None:
        """Never checkpoint non-finite weights (a finite loss can still give an infinite update)."""
        bad = [n for n, p in self.net.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise TrainingError(
                f"the weights became NaN/inf in epoch {self.epoch} (first: {bad[0]}); lower optim.lr; "
                f"the last good checkpoint (epoch {self.epoch - 1}) is kept in {self.run_dir}"
            )

    def _progress_bar(self) -> Any:
        if not (self.cfg.progress and self.dist.main and sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {self.epoch + 1}/{self.cfg.optim.epochs}",
            leave=False,
            dynamic_ncols=True,
        )

    def _evaluate(self, model: nn.Module, images: Tensor, labels: Tensor) -> dict[str, Any]:
        """Evaluate on a whole set; with several processes each takes every W-th image and the sums are reduced."""
        if self.dist.enabled:
            images, labels = images[self.dist.rank :: self.dist.world], labels[self.dist.rank :: self.dist.world]
        return evaluate(
            model,
            images,
            labels,
            self.augmenter,
            self.cfg.eval_batch_size,
            self.num_classes,
            self.cfg.model.channels_last,
            self.autocast,
            reduce=self.dist.all_reduce_sum if self.dist.enabled else None,
        )

    def validate(self) -> dict[str, Any]:
        idx = self.split.val.to(self.device)
        return self._evaluate(self.eval_model(), self.images[idx], self.labels[idx])

    def test(self, model: nn.Module) -> dict[str, Any]:
        return self._evaluate(model, self.test_images, self.test_labels)

    def diagnostic_batch(self, n: int) -> tuple[Tensor, Tensor]:
        """A fixed batch of validation images (the same every epoch) for map diagnostics.

        Evenly spaced over the validation indices, so a class-ordered data set (an image
        folder) still gives a batch of many classes.
        """
        val = self.split.val
        picks = torch.linspace(0, len(val) - 1, min(n, len(val))).round().long()
        idx = val[picks].to(self.device)
        return self.images[idx], self.labels[idx]

    def map_diagnostics(self) -> dict[str, float]:
        x, _ = self.diagnostic_batch(64)
        return map_diagnostics(self.eval_model(), x, self.augmenter, self.cfg.method.layers[0], seed=self.cfg.seed)

    def write_cam_grid(self, tag: str) -> None:
        if not (self.cfg.cam_grid and self.dist.main):
            return
        x, y = self.diagnostic_batch(8)
        layer = self.cfg.method.layers[0]
        aligned = aligned_cams(self.eval_model(), x, self.augmenter, layer, torch.Generator().manual_seed(self.cfg.seed))
        fig = cam_grid_figure(
            aligned, self.augmenter, self.classes, y, f"{self.cfg.method.name}, Grad-CAM at {layer}, {tag}"
        )
        if self.writer is not None:
            self.writer.add_figure(f"cam/{layer}", fig, self.epoch, close=False)
        save_figure(fig, self.run_dir / "figures" / f"cam_{tag.replace(' ', '_')}.png")

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self._write_split()
        self.writer = self._tensorboard()
        n_params = sum(p.numel() for p in self.net.parameters())
        procs = (
            f" x {self.dist.world} processes ({self.dist.backend}{', SyncBatchNorm' if cfg.sync_bn else ''})"
            if self.dist.enabled
            else ""
        )
        self.log(
            f"model: {cfg.model.name} (width {cfg.model.width}, {n_params / 1e6:.2f}M parameters) on {self.device}"
            f"{procs}; method: {cfg.method.name}; {cfg.optim.epochs} epochs x {self.steps_per_epoch} steps"
        )
        if self.epoch == 0:
            self.write_cam_grid("epoch 0")
        while self.epoch < cfg.optim.epochs:
            stats = self.train_epoch()
            self.epoch += 1
            self._sync_buffers()
            self._check_replicas()
            self._check_weights()
            record: dict[str, Any] = {"epoch": self.epoch, "step": self.global_step, **stats}
            if self.dist.main:  # a diagnostic on 64 fixed images; the replicas are identical
                record.update(self.map_diagnostics())
            improved = False
            if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.optim.epochs:
                val = self.validate()
                record["val_acc"] = val["acc"]
                record["val_loss"] = val["loss"]
                if val["acc"] > self.best["val_acc"]:
                    self.best = {"val_acc": val["acc"], "epoch": self.epoch}
                    improved = True
            self.history.append(record)
            self._save_checkpoint(improved)
            self._log_epoch(record)
        self.write_cam_grid("final")
        result = self.finish()
        if self.writer is not None:
            self.writer.add_scalar("test/test_acc", result["test_acc"], self.epoch)
            self.writer.close()
        if self.dist.main:
            io.write_json(self.run_dir / "result.json", result)
        return result

    def _log_epoch(self, r: dict[str, Any]) -> None:
        if self.writer is not None:
            for k, v in r.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)):
                    self.writer.add_scalar(f"{'val' if k.startswith('val') else 'train'}/{k}", v, self.epoch)
            self.writer.flush()
        if not self.dist.main:
            return
        terms = "  ".join(
            f"{k} {r[k]:.3f}"
            for k in ("loss_s", "loss_p", "loss_g", "mask_rate", "pl_acc", "map_agreement", "blank_maps")
            if k in r
        )
        val = f"val {fmt_pct(r.get('val_acc'))} (best {fmt_pct(self.best['val_acc'])} @{self.best['epoch']})"
        self.log(
            f"epoch {r['epoch']:>3}/{self.cfg.optim.epochs}  loss {r['loss']:.3f}  {terms}  {val}  "
            f"{r['epoch_time_s']:.1f}s  {r['images_per_s']:.0f} img/s"
        )

    def elapsed(self) -> float:
        """Wall time of the run so far, summed over resumed segments."""
        return self.elapsed_before + time.time() - self.segment_start

    def finish(self) -> dict[str, Any]:
        final_val = next((r["val_acc"] for r in reversed(self.history) if "val_acc" in r), None)
        test = self.test(self.eval_model())
        best_test = test
        best_path = self.run_dir / "best.pt"
        if best_path.exists() and self.best["epoch"] != self.epoch:
            best_model = copy.deepcopy(self.eval_model())
            best_model.load_state_dict(torch.load(best_path, map_location=self.device, weights_only=True)["model"])
            best_test = self.test(best_model)
        result = {
            "test_acc": test["acc"],
            "val_acc": final_val,
            "best_val_acc": self.best["val_acc"],
            "best_val_epoch": self.best["epoch"],
            "test_acc_at_best_val": best_test["acc"],
            "per_class_test_acc": dict(zip(self.classes, test["per_class"])),
            "test_loss": test["loss"],
            "epochs": self.epoch,
            "steps": self.global_step,
            "train_time_s": self.train_time,
            "wall_time_s": self.elapsed(),
            "images_per_s": self.train_images / max(self.train_time, 1e-9),
            "n_labeled": len(self.split.labeled),
            "n_unlabeled": len(self.split.unlabeled),
            "n_val": len(self.split.val),
            "n_test": test["n"],
            "data": self.bundle.name,
            "method": self.cfg.method.name,
            "model": self.cfg.model.name,
            "device": str(self.device),
            "world_size": self.dist.world,
            "skipped_images": len(self.bundle.skipped),
            "torch": torch.__version__,
            "config": self.cfg.to_dict(),
        }
        return result


def train(
    cfg: TrainConfig | None,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train a run end to end (or resume one) and return its result dict.

    ``cfg`` may be None when resuming (the run's saved config is used). Started by
    ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), every process calls this and
    they train together; rank 0 prepares the run directory and writes its files.
    """
    from camssl import distributed

    if resume:
        if run_dir is None:
            raise UserError("nothing to resume: give the run directory (--resume RUN_DIR)")
        cfg = prepare_run_dir(Path(run_dir), None, True, False)  # read-only: safe on every rank
    if cfg is None:
        raise UserError("nothing to train: give a config or a run directory to resume")
    dist, device = distributed.setup(cfg.device)
    try:
        result = _train(cfg, run_dir, resume, overwrite, log, dist, device)
    except UserError:
        distributed.teardown(dist)  # every rank meets a user error at the same point: leave together
        raise
    except BaseException:
        distributed.teardown(dist, clean=False)  # a failure of this rank alone: do not wait for the others
        raise
    distributed.teardown(dist)
    return result


def _train(
    cfg: TrainConfig,
    run_dir: str | Path | None,
    resume: bool,
    overwrite: bool,
    log: Callable[[str], None],
    dist: Dist,
    device: torch.device | None,
) -> dict[str, Any]:
    main_log = log if dist.main else _quiet
    if run_dir is None:
        run_dir = dist.on_main(lambda: default_run_dir(cfg))
    run_dir = Path(run_dir)
    if not resume:
        dist.on_main(lambda: check_run_dir(run_dir, overwrite))
    elif (run_dir / "result.json").exists():
        main_log(f"run {run_dir} has already finished; its result.json is kept")
        return json.loads((run_dir / "result.json").read_text())
    # everything that can fail on the user's input (data, split, model, layers, a checkpoint)
    # fails here, before a new run directory is written
    trainer = Trainer(cfg, run_dir, resume=resume, log=log, dist=dist, device=device)
    if not resume:
        dist.on_main(lambda: prepare_run_dir(run_dir, cfg, False, overwrite))
    result = trainer.fit()
    main_log(
        f"test accuracy {fmt_pct(result['test_acc'])} (final epoch); "
        f"best validation {fmt_pct(result['best_val_acc'])} at epoch {result['best_val_epoch']}, "
        f"test there {fmt_pct(result['test_acc_at_best_val'])}; "
        f"{result['wall_time_s'] / 60:.1f} min, {result['images_per_s']:.0f} img/s"
    )
    main_log(f"run directory: {run_dir}")
    return result
