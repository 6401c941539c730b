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
    tb/              TensorBoard events
    result.json      written at the end
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camssl import io
from camssl.augment import Augmenter
from camssl.config import TrainConfig, dump_yaml, from_dict, read_yaml
from camssl.data import DataBundle, Split, load_data, make_split
from camssl.data.streams import IndexStream
from camssl.errors import ConfigError, UserError
from camssl.methods import METHODS, Batch, Method, StepContext
from camssl.models import build_model
from camssl.viz import aligned_cams, cam_grid_figure, map_agreement, save_figure

CHECKPOINT_FORMAT = 1
RUN_FILES = ("config.yaml", "split.json", "metrics.jsonl", "last.pt", "best.pt", "result.json")


class TrainingError(UserError):
    """Training diverged (NaN/inf loss)."""


# ---------------------------------------------------------------- small helpers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} asked for but CUDA is not available; use device=cpu or device=auto")
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
) -> dict[str, Any]:
    """Accuracy, mean loss and per-class accuracy of ``model`` on uint8 ``images``."""
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


# ---------------------------------------------------------------- the run directory


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
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        for sub in ("tb", "figures"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    io.write_text(run_dir / "config.yaml", dump_yaml(cfg))
    return cfg


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.out_dir) / f"{stamp}-{cfg.method.name}-s{cfg.seed}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


# ---------------------------------------------------------------- the trainer


@dataclass
class Dist:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


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
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.log = log
        self.dist = Dist()
        self.device = pick_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.manual_seed(cfg.seed)

        # data → split → device
        t0 = time.time()
        self.bundle = bundle if bundle is not None else load_data(cfg.data, seed=cfg.split.seed)
        self.classes = self.bundle.train.classes
        self.num_classes = len(self.classes)
        self.split = self._load_or_make_split()
        train = self.bundle.train
        self.images = train.images.to(self.device)
        self.labels = train.labels.to(self.device)
        self.test_images = self.bundle.test.images.to(self.device)
        self.test_labels = self.bundle.test.labels.to(self.device)
        self.log(
            f"data: {self.bundle.name}  {self.num_classes} classes, {len(train)} train / {len(self.bundle.test)} test "
            f"images at {tuple(train.images.shape[2:])}  ({time.time() - t0:.1f}s)"
        )
        self.log(
            f"split (seed {cfg.split.seed}): {len(self.split.labeled)} labeled, {len(self.split.unlabeled)} unlabeled, "
            f"{len(self.split.val)} validation; test {len(self.bundle.test)}"
            + (" (carved from the data)" if self.bundle.test_carved else "")
        )

        # model, method, optimisation
        self.model = build_model(
            cfg.model.name,
            self.num_classes,
            width=cfg.model.width,
            pretrained=cfg.model.pretrained,
            resize_to=cfg.model.resize_to,
        ).to(self.device)
        if cfg.model.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._check_layers()
        self.method: Method = METHODS[cfg.method.name](cfg.method, label_smoothing=cfg.optim.label_smoothing)
        if self.method.uses_unlabeled and len(self.split.unlabeled) == 0:
            raise UserError(
                f"method {cfg.method.name} needs unlabeled data but split.ratio=0 gives none; "
                "set split.ratio > 0 (e.g. --ratio 1) or use --method supervised"
            )
        self.augmenter = Augmenter(cfg.augment, self.device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=cfg.optim.lr,
            momentum=cfg.optim.momentum,
            nesterov=cfg.optim.nesterov,
            weight_decay=cfg.optim.weight_decay,
        )
        self.ema = EMA(self.model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        # streams: one labeled batch (and one unlabeled batch) per step
        o = cfg.optim
        self.steps_per_epoch = max(1, len(self.split.labeled) // o.batch_size)
        self.total_steps = self.steps_per_epoch * o.epochs
        self.warmup_steps = int(round(o.warmup_epochs * self.steps_per_epoch))
        self.labeled_stream = IndexStream(self.split.labeled, o.batch_size, seed=cfg.seed)
        self.unlabeled_stream = (
            IndexStream(self.split.unlabeled, max(1, round(o.unlabeled_multiplier * o.batch_size)), seed=cfg.seed + 1)
            if self.method.uses_unlabeled
            else None
        )
        self.aug_gen = torch.Generator().manual_seed(cfg.seed + 2)

        self.epoch = 0  # epochs finished
        self.global_step = 0
        self.best: dict[str, Any] = {"val_acc": -1.0, "epoch": 0}
        self.history: list[dict[str, Any]] = []
        self.train_time = 0.0
        self.train_images = 0
        self.elapsed_before = 0.0
        self.segment_start = time.time()
        if resume:
            self._load_checkpoint()
        self.writer = self._tensorboard()

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
        if self.dist.main:
            split.save(path)
        return split

    def _check_layers(self) -> None:
        for name in self.cfg.method.layers:
            try:
                self.model.get_submodule(name)
            except AttributeError:
                raise ConfigError(
                    f"method.layers: unknown layer '{name}' for {self.cfg.model.name}; valid stages: "
                    f"{', '.join(self.model.stages)} (or any module path such as {self.model.stages[-1]}.0)"
                ) from None

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

    def _state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model_name": self.cfg.model.name,
            "num_classes": self.num_classes,
            "classes": self.classes,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "aug": self.aug_gen.get_state(),
            },
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
        path = self.run_dir / "last.pt"
        if not path.exists():
            self.log(f"resume: no checkpoint in {self.run_dir} yet; starting from epoch 1")
            return
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a corrupt file is a user-facing problem
            raise UserError(f"cannot read checkpoint '{path}': {e.__class__.__name__}; it may be corrupt") from None
        if state.get("model_name") != self.cfg.model.name or state.get("num_classes") != self.num_classes:
            raise UserError(
                f"checkpoint '{path}' is for {state.get('model_name')} with {state.get('num_classes')} classes, "
                f"but the run's config builds {self.cfg.model.name} with {self.num_classes}; resume with its own config"
            )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise UserError(f"checkpoint '{path}' does not fit the model: {str(e).splitlines()[0]}") from None
        if self.ema and state["ema"] is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.aug_gen.set_state(state["rng"]["aug"])
        self.labeled_stream.load_state_dict(state["streams"]["labeled"])
        if self.unlabeled_stream and state["streams"]["unlabeled"]:
            self.unlabeled_stream.load_state_dict(state["streams"]["unlabeled"])
        self.epoch = state["epoch"]
        self.global_step = state["global_step"]
        self.best = state["best"]
        self.history = state["history"]
        self.train_time = state["train_time"]
        self.train_images = state["train_images"]
        self.elapsed_before = state["elapsed"]
        self.log(f"resumed from {path} after epoch {self.epoch} (step {self.global_step})")

    def _save_checkpoint(self, improved: bool) -> None:
        if not self.dist.main:
            return
        io.torch_save(self.run_dir / "last.pt", self._state())
        if improved:
            weights = self.eval_model().state_dict()
            io.torch_save(self.run_dir / "best.pt", {"epoch": self.epoch, "classes": self.classes, "model": weights})
        io.write_text(
            self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history)
        )

    # ------------------------------------------------------------ the loop

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema else self.model

    def next_batch(self) -> Batch:
        idx_l = self.labeled_stream.next(self.dist.rank, self.dist.world).to(self.device)
        batch = Batch(self.images[idx_l], self.labels[idx_l])
        if self.unlabeled_stream is not None:
            idx_u = self.unlabeled_stream.next(self.dist.rank, self.dist.world).to(self.device)
            batch.x_u, batch.y_u = self.images[idx_u], self.labels[idx_u]
        return batch

    def train_epoch(self) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        sums: dict[str, Tensor] = {}
        loss_sum = torch.zeros((), device=self.device)
        n_images = 0
        t0 = time.time()
        bar = self._progress_bar()
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
                self.ema.update(self.model)
            self.global_step += 1
            loss_sum += out.loss.detach().float()
            for k, v in out.metrics.items():
                sums[k] = sums.get(k, 0) + v.detach().float()
            n_images += len(batch.x_l) + (len(batch.x_u) if batch.x_u is not None else 0)
            if bar is not None:
                bar.update(1)
                if i % 10 == 0:
                    bar.set_postfix(loss=f"{float(out.loss):.3f}", lr=f"{lr:.4f}")
        if bar is not None:
            bar.close()
        dt = time.time() - t0
        self.train_time += dt
        self.train_images += n_images * self.dist.world
        stats = {"loss": float(loss_sum) / self.steps_per_epoch}
        stats.update({k: float(v) / self.steps_per_epoch for k, v in sums.items()})
        stats["lr"] = lr
        stats["epoch_time_s"] = dt
        stats["images_per_s"] = n_images * self.dist.world / max(dt, 1e-9)
        return stats

    def _check_finite(self, loss: Tensor, metrics: dict[str, Tensor], i: int) -> None:
        if bool(torch.isfinite(loss.detach())):
            return
        bad = [k for k, v in metrics.items() if k.startswith("loss") and not bool(torch.isfinite(v).all())]
        raise TrainingError(
            f"the loss became {float(loss)} at epoch {self.epoch + 1}, step {i + 1} "
            f"(term: {', '.join(bad) or 'total'}); lower optim.lr or the loss weights. "
            f"The last good checkpoint is kept in {self.run_dir}"
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

    def validate(self) -> dict[str, Any]:
        return evaluate(
            self.eval_model(),
            self.images[self.split.val.to(self.device)],
            self.labels[self.split.val.to(self.device)],
            self.augmenter,
            self.cfg.eval_batch_size,
            self.num_classes,
            self.cfg.model.channels_last,
            self.autocast,
        )

    def test(self, model: nn.Module) -> dict[str, Any]:
        return evaluate(
            model,
            self.test_images,
            self.test_labels,
            self.augmenter,
            self.cfg.eval_batch_size,
            self.num_classes,
            self.cfg.model.channels_last,
            self.autocast,
        )

    def diagnostic_batch(self, n: int) -> tuple[Tensor, Tensor]:
        """A fixed batch of validation images (the same every epoch) for map diagnostics."""
        idx = self.split.val[:n].to(self.device)
        return self.images[idx], self.labels[idx]

    def map_agreement(self) -> float:
        x, _ = self.diagnostic_batch(64)
        return map_agreement(self.eval_model(), x, self.augmenter, self.cfg.method.layers[0], seed=self.cfg.seed)

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
        n_params = sum(p.numel() for p in self.model.parameters())
        self.log(
            f"model: {cfg.model.name} (width {cfg.model.width}, {n_params / 1e6:.2f}M parameters) on {self.device}; "
            f"method: {cfg.method.name}; {cfg.optim.epochs} epochs x {self.steps_per_epoch} steps"
        )
        if self.epoch == 0:
            self.write_cam_grid("epoch 0")
        while self.epoch < cfg.optim.epochs:
            stats = self.train_epoch()
            self.epoch += 1
            record: dict[str, Any] = {"epoch": self.epoch, "step": self.global_step, **stats}
            record["map_agreement"] = self.map_agreement()
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
            for k in ("loss_s", "loss_p", "loss_g", "mask_rate", "pl_acc", "map_agreement")
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

    ``cfg`` may be None when resuming (the run's saved config is used).
    """
    if run_dir is None:
        if cfg is None:
            raise UserError("nothing to train: give a config or a run directory to resume")
        run_dir = default_run_dir(cfg)
    run_dir = Path(run_dir)
    cfg = prepare_run_dir(run_dir, cfg, resume, overwrite)
    if resume and (run_dir / "result.json").exists():
        log(f"run {run_dir} has already finished; its result.json is kept")
        return json.loads((run_dir / "result.json").read_text())
    trainer = Trainer(cfg, run_dir, resume=resume, log=log)
    result = trainer.fit()
    log(
        f"test accuracy {fmt_pct(result['test_acc'])} (final epoch); "
        f"best validation {fmt_pct(result['best_val_acc'])} at epoch {result['best_val_epoch']}, "
        f"test there {fmt_pct(result['test_acc_at_best_val'])}; "
        f"{result['wall_time_s'] / 60:.1f} min, {result['images_per_s']:.0f} img/s"
    )
    log(f"run directory: {run_dir}")
    return result
