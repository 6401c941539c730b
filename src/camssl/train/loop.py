"""The one training loop shared by every method.

The trainer owns everything that is not the objective: data on the device, the split,
batch streams, views, the optimiser (SGD + Nesterov), the per-step schedule, EMA, mixed
precision, validation, checkpoints, logging and the final result. A method
(:mod:`camssl.methods`) turns a batch into a loss and metrics and may keep state.

``Trainer(cfg, run_dir, split=..., init=...)`` builds a run without process-wide side
effects (threads, determinism and global seeds are the entry point's:
:func:`camssl.train.run.process_settings`); ``fit()`` trains it and returns the result;
``trainer.net`` is the fitted model afterwards.

Several processes (``torchrun --nproc-per-node N -m camssl train ...``) train one model
with DistributedDataParallel: batch sizes are global, every rank takes its strided share
of each global batch from the same seeded streams; the split is made on rank 0 and
broadcast; training metrics are averaged over ranks; validation and test are sharded and
their sums reduced; BatchNorm statistics are averaged each epoch; only rank 0 writes.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from camssl import io
from camssl.augment import Augmenter
from camssl.config import TrainConfig, dump_yaml
from camssl.data import DataBundle, Split, load_data
from camssl.data.streams import IndexStream
from camssl.distributed import Dist
from camssl.errors import UserError
from camssl.methods import METHODS, Batch, Method, RunInfo, StepOutput
from camssl.train import build, checkpoint, ddp, diagnostics, report
from camssl.train.evaluate import evaluate
from camssl.train.schedule import EMA, lr_factor, param_groups
from camssl.train.step import Stepper


class TrainingError(UserError):
    """Training diverged (NaN/inf loss)."""


def _quiet(_: str) -> None:
    """The log of ranks other than 0."""


def pick_device(name: str, option: str = "device=") -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``option`` is how the user set it (for the error)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{option}{name} asked for but CUDA is not available; use {option}cpu or {option}auto")
    return torch.device(name)


# rank r > 0 seeds its own random streams (augmentations) at seed + r * stride
RANK_SEED_STRIDE = 7919


class Trainer:
    """Train one run. ``Trainer(cfg, run_dir).fit()`` returns the result dict.

    ``data``: the loaded data (default: ``load_data(cfg.data)``); ``split``: the split to
    train on (default: a new seeded split; on resume the run's split.json is the truth);
    ``init``: initial weights (a state_dict, run directory or checkpoint file).
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path, *, data: DataBundle | None = None, split: Split | None = None,
                 init: Any = None, resume: bool = False, log: Callable[[str], None] = print,
                 dist: Dist | None = None, device: torch.device | None = None) -> None:
        self.cfg, self.run_dir, self.resume = cfg, Path(run_dir), resume
        self.dist = dist or Dist()
        self.log = log if self.dist.main else _quiet
        self.device = device or pick_device(cfg.device)
        ddp.check_world(cfg, self.dist, self.device)

        # data → split → device (rank 0 loads first: it may write the decode cache)
        t0 = time.time()
        self.bundle = data if data is not None else self.dist.main_first(lambda: load_data(cfg.data, seed=cfg.split.seed))
        self.classes = self.bundle.train.classes
        self.num_classes = len(self.classes)
        self.split = self.dist.on_main(lambda: build.resolve_split(cfg, self.bundle, self.run_dir, resume, split))
        train = self.bundle.train
        self.images, self.labels = train.images.to(self.device), train.labels.to(self.device)
        self.test_images = self.bundle.test.images.to(self.device)
        self.test_labels = self.bundle.test.labels.to(self.device)
        self._log_data(time.time() - t0)

        # model, method, optimisation; ``net`` is the bare model, ``model`` what the
        # training step calls (DistributedDataParallel around ``net`` with several processes)
        self.net = build.new_model(cfg, self.num_classes, self.device, init)
        self.method: Method = METHODS[cfg.method.name](cfg.method, label_smoothing=cfg.optim.label_smoothing)
        build.check_layers(cfg, self.net)
        if self.dist.enabled:
            ddp.check_sync_bn(cfg, self.net, self.method)
        if self.method.uses_unlabeled and len(self.split.unlabeled) == 0:
            raise UserError(
                f"method {cfg.method.name} needs unlabeled data but split.ratio=0 gives none; "
                "set split.ratio > 0 (e.g. --ratio 1) or use --method supervised"
            )
        if cfg.sync_bn and self.dist.enabled:
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
        self.augmenter = Augmenter(cfg.augment, self.device)
        o = cfg.optim
        self.optimizer = torch.optim.SGD(param_groups(self.net, o.weight_decay, o.no_decay_bn_bias), lr=o.lr,
                                         momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)
        self.ema = EMA(self.net, o.ema_decay) if o.ema_decay > 0 else None

        # streams: one global labeled batch (and one unlabeled batch) per step; every rank
        # walks the same streams and keeps its share of each batch
        self.steps_per_epoch = o.steps_per_epoch or max(1, len(self.split.labeled) // o.batch_size)
        self.total_steps = self.steps_per_epoch * o.epochs
        self.warmup_steps = int(round(o.warmup_epochs * self.steps_per_epoch))
        self.labeled_stream = IndexStream(self.split.labeled, o.batch_size, seed=cfg.seed)
        self.unlabeled_stream = (IndexStream(self.split.unlabeled, ddp.unlabeled_batch_size(cfg), seed=cfg.seed + 1)
                                 if self.method.uses_unlabeled else None)
        # per-rank randomness (augmentations): rank 0 keeps the single-process seeds
        self.aug_gen = torch.Generator().manual_seed(cfg.seed + 2 + RANK_SEED_STRIDE * self.dist.rank)
        self.model: nn.Module = ddp.wrap_ddp(self.net, self.device) if self.dist.enabled else self.net
        amp = self._amp_dtype()
        self.stepper = Stepper(self.model, self.method, self.optimizer, self.augmenter, self.aug_gen, net=self.net,
                               scaler=torch.amp.GradScaler("cuda", enabled=amp == torch.float16), ema=self.ema,
                               amp_dtype=amp, labeled_view=cfg.labeled_view, channels_last=cfg.model.channels_last)
        self.method.setup(RunInfo(
            num_classes=self.num_classes, classes=self.classes, n_train=len(train), split=self.split,
            device=self.device, dist=self.dist, net=self.net, run_dir=self.run_dir, labels=self.labels,
            load_frozen=lambda path: checkpoint.load_frozen(path, self.device),
        ))

        self.epoch = 0  # epochs finished
        self.global_step = 0
        self.best: dict[str, Any] = {"val_acc": -1.0, "epoch": 0}
        self.history: list[dict[str, Any]] = []
        self.train_time, self.train_images = 0.0, 0
        self.elapsed_before, self.segment_start, self.segment_epochs = 0.0, time.time(), 0
        if resume:
            checkpoint.load_checkpoint(self)
        self.writer: Any = None  # created by fit(): nothing is written before training starts

    def _log_data(self, seconds: float) -> None:
        train, b = self.bundle.train, self.bundle
        self.log(f"data: {b.name}  {self.num_classes} classes, {len(train)} train / {len(b.test)} test "
                 f"images at {tuple(train.images.shape[2:])}  ({seconds:.1f}s)")
        if b.skipped:
            self.log(f"skipped {len(b.skipped)} unreadable image(s) (data.skip_bad=true), e.g. {b.skipped[0]}")
        self.log(f"split (seed {self.cfg.split.seed}): {len(self.split.labeled)} labeled, {len(self.split.unlabeled)} "
                 f"unlabeled, {len(self.split.val)} validation; test {len(b.test)}"
                 + (" (carved from the data)" if b.test_carved else ""))

    def _amp_dtype(self) -> torch.dtype | None:
        if not (self.cfg.amp and self.device.type == "cuda"):
            return None
        if self.cfg.amp_dtype != "auto":
            return torch.bfloat16 if self.cfg.amp_dtype == "bf16" else torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16

    def _tensorboard(self) -> Any:
        if not self.dist.main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.run_dir / "tb"), purge_step=self.global_step if self.resume else None)

    # ------------------------------------------------------------ the loop

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema else self.net

    def next_batch(self) -> Batch:
        idx_l = self.labeled_stream.next(self.dist.rank, self.dist.world).to(self.device)
        batch = Batch(self.images[idx_l], self.labels[idx_l], idx_l=idx_l)
        if self.unlabeled_stream is not None:
            idx_u = self.unlabeled_stream.next(self.dist.rank, self.dist.world).to(self.device)
            batch.x_u, batch.y_u, batch.idx_u = self.images[idx_u], self.labels[idx_u], idx_u
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
            out = self.stepper(batch, epoch=self.epoch + i / self.steps_per_epoch, step=self.global_step,
                               check=lambda o, i=i: self._check_finite(o, i))
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
        # per-rank means of equal-sized shards, averaged over ranks: the global batch means
        keys = sorted(sums)
        packed = self.dist.all_reduce_mean(torch.stack([loss_sum, *(sums[k] for k in keys)]))
        loss_sum, sums = packed[0], dict(zip(keys, packed[1:]))
        dt = time.time() - t0
        self.train_time += dt
        self.train_images += n_images * self.dist.world
        stats = {"loss": float(loss_sum) / self.steps_per_epoch}
        stats.update({k: float(v) / self.steps_per_epoch for k, v in sums.items()})
        stats.update(self.method.end_epoch())
        stats["lr"] = lr
        stats["epoch_time_s"] = dt
        stats["images_per_s"] = n_images * self.dist.world / max(dt, 1e-9)
        return stats

    def _check_finite(self, out: StepOutput, i: int) -> None:
        """Stop on a NaN/inf loss, naming the step and the loss term(s); all ranks stop together."""
        terms = sorted(k for k in out.metrics if k.startswith("loss"))
        if self.dist.enabled:
            # one small collective per step: a rank whose loss is not finite makes the sum not finite
            vec = torch.stack([out.loss.detach().float(), *(out.metrics[k].detach().float().to(self.device) for k in terms)])
            vec = self.dist.all_reduce_sum(vec)
            value, term_values = vec[0], dict(zip(terms, vec[1:]))
        else:
            value, term_values = out.loss.detach(), {k: out.metrics[k] for k in terms}
        if bool(torch.isfinite(value)):
            return
        bad = [k for k, v in term_values.items() if not bool(torch.isfinite(v).all())]
        kept = (f"the last good checkpoint (epoch {self.epoch}) is kept in {self.run_dir}" if self.epoch > 0
                else "no checkpoint was written yet (it diverged in the first epoch)")
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

        return tqdm(total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{self.cfg.optim.epochs}", leave=False,
                    dynamic_ncols=True)

    # ------------------------------------------------------------ evaluation and diagnostics

    def _evaluate(self, model: nn.Module, images: Tensor, labels: Tensor) -> dict[str, Any]:
        """Evaluate on a whole set; with several processes each takes every W-th image and the sums are reduced."""
        if self.dist.enabled:
            images, labels = images[self.dist.rank :: self.dist.world], labels[self.dist.rank :: self.dist.world]
        return evaluate(model, images, labels, self.augmenter, self.cfg.eval_batch_size, self.num_classes,
                        self.cfg.model.channels_last, self.stepper.autocast,
                        reduce=self.dist.all_reduce_sum if self.dist.enabled else None)

    def validate(self) -> dict[str, Any]:
        idx = self.split.val.to(self.device)
        return self._evaluate(self.eval_model(), self.images[idx], self.labels[idx])

    def test(self, model: nn.Module) -> dict[str, Any]:
        return self._evaluate(model, self.test_images, self.test_labels)

    # ------------------------------------------------------------ a whole run

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.dist.main and not (self.run_dir / "config.yaml").exists():  # driven from outside: no run dir yet
            self.run_dir.mkdir(parents=True, exist_ok=True)
            io.write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
        if self.dist.main and not (self.resume and (self.run_dir / "split.json").exists()):
            self.split.save(self.run_dir / "split.json")
        self.writer = self._tensorboard()
        n_params = sum(p.numel() for p in self.net.parameters())
        procs = (f" x {self.dist.world} processes ({self.dist.backend}{', SyncBatchNorm' if cfg.sync_bn else ''})"
                 if self.dist.enabled else "")
        self.log(f"model: {cfg.model.name} (width {cfg.model.width}, {n_params / 1e6:.2f}M parameters) on {self.device}"
                 f"{procs}; method: {cfg.method.name}; {cfg.optim.epochs} epochs x {self.steps_per_epoch} steps")
        if self.dist.main and self.epoch < cfg.optim.epochs:
            self.log(report.machine_line(self))
        if self.epoch == 0:
            diagnostics.write_cam_grid(self, "epoch 0")
        while self.epoch < cfg.optim.epochs:
            stats = self.train_epoch()
            self.epoch += 1
            ddp.sync_buffers(self.dist, [self.net] + ([self.ema.module] if self.ema else []))
            ddp.check_replicas(self.dist, self.net, self.epoch)
            self._check_weights()
            record: dict[str, Any] = {"epoch": self.epoch, "step": self.global_step, **stats}
            if self.dist.main:  # a diagnostic on 64 fixed images; the replicas are identical
                record.update(diagnostics.map_diagnostics(self))
            improved = False
            if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.optim.epochs:
                val = self.validate()
                record["val_acc"], record["val_loss"] = val["acc"], val["loss"]
                if val["acc"] > self.best["val_acc"]:
                    self.best = {"val_acc": val["acc"], "epoch": self.epoch}
                    improved = True
            self.history.append(record)
            checkpoint.save_checkpoint(self, improved)
            self.segment_epochs += 1
            self._log_epoch(record)
        diagnostics.write_cam_grid(self, "final")
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
        self.log(report.epoch_line(self, r))

    def elapsed(self) -> float:
        """Wall time of the run so far, summed over resumed segments."""
        return self.elapsed_before + time.time() - self.segment_start

    def seconds_per_epoch(self) -> float:
        """Mean wall time of this segment's epochs (evaluation and checkpoints included)."""
        return (time.time() - self.segment_start) / max(1, self.segment_epochs)

    def finish(self) -> dict[str, Any]:
        test = self.test(self.eval_model())
        best_test = test
        best_path = self.run_dir / "best.pt"
        if best_path.exists() and self.best["epoch"] != self.epoch:
            best_model = copy.deepcopy(self.eval_model())
            best_model.load_state_dict(torch.load(best_path, map_location=self.device, weights_only=True)["model"])
            best_test = self.test(best_model)
        return report.result_record(self, test, best_test)
