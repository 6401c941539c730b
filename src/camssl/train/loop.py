"""The one training loop shared by every method.

The trainer owns everything that is not the objective: data on the device, the split,
batch streams, views, the optimiser (SGD + Nesterov), the per-step schedule, EMA, mixed
precision, validation, checkpoints, logging and the final result. A method
(:mod:`camssl.methods`) turns a batch into a loss and metrics and may keep state.

``Trainer(cfg, run_dir, split=..., init=...)`` builds a run without process-wide side
effects (threads, determinism and global seeds are the entry point's:
:func:`camssl.train.run.process_settings`); ``fit()`` trains it and returns the result;
``trainer.net`` is the fitted model afterwards. Everything a resume needs is
:meth:`Trainer.state_dict` (saved as ``last.pt``); the progress is one
:class:`~camssl.train.state.TrainState`.

Several processes (``torchrun --nproc-per-node N -m camssl train ...``) train one model
with DistributedDataParallel: batch sizes are global, every rank takes its strided share
of each global batch from the same seeded streams; the split is made on rank 0 and
broadcast; training metrics are averaged over ranks; validation and test are sharded and
their sums reduced; BatchNorm statistics are averaged each epoch; only rank 0 writes.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import camssl.train.build as build
import camssl.train.checkpoint as checkpoint
import camssl.train.ddp as ddp
import camssl.train.diagnostics as diagnostics
import camssl.train.report as report
from camssl import io
from camssl.augment import Augmenter
from camssl.config import TrainConfig
from camssl.data import DataBundle, Split, load_data
from camssl.data.streams import IndexStream
from camssl.distributed import Dist
from camssl.errors import UserError
from camssl.methods import METHODS, Batch, Method, RunInfo
from camssl.models.saved import load_frozen, preprocess_spec
from camssl.train.evaluate import evaluate
from camssl.train.guards import check_finite, check_weights
from camssl.train.precision import amp_dtype, describe
from camssl.train.rundir import write_start_files
from camssl.train.schedule import EMA, lr_factor, param_groups
from camssl.train.state import TrainState
from camssl.train.step import Stepper


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
        self._load_data(data, split)
        self._build_model(init)
        self._build_optimisation()
        self._build_streams()
        self.method.setup(self._run_info())
        self.state = TrainState()
        self.writer: Any = None  # created by fit(): nothing is written before training starts
        if resume:
            self._resume()

    # ------------------------------------------------------------ building a run

    def _load_data(self, data: DataBundle | None, split: Split | None) -> None:
        """data → split → device (rank 0 loads first: it may write the decode cache)."""
        cfg, t0 = self.cfg, time.time()
        self.bundle = data if data is not None else self.dist.main_first(lambda: load_data(cfg.data, seed=cfg.split.seed))
        self.classes = self.bundle.train.classes
        self.num_classes = len(self.classes)
        self.split = self.dist.on_main(lambda: build.resolve_split(cfg, self.bundle, self.run_dir, self.resume, split))
        train = self.bundle.train
        self.images, self.labels = train.images.to(self.device), train.labels.to(self.device)
        self.test_images = self.bundle.test.images.to(self.device)
        self.test_labels = self.bundle.test.labels.to(self.device)
        for line in report.data_lines(self.bundle, self.split, cfg.split.seed, time.time() - t0):
            self.log(line)

    def _build_model(self, init: Any) -> None:
        """``net`` is the bare model, ``model`` what the step calls (DDP around ``net`` with several processes)."""
        cfg = self.cfg
        fresh = init is None and not self.resume
        self.net = build.new_model(cfg, self.num_classes, self.device, init,
                                   fit_images=build.fit_images(self.images, self.split) if fresh else None)
        build.check_layers(cfg, self.net)
        self.method: Method = METHODS[cfg.method.name](cfg.method, label_smoothing=cfg.optim.label_smoothing)
        if self.dist.enabled:
            ddp.check_sync_bn(cfg, self.net, self.method)
        if self.method.uses_unlabeled and len(self.split.unlabeled) == 0:
            raise UserError(f"method {cfg.method.name} needs unlabeled data but split.ratio=0 gives none; "
                            "set split.ratio > 0 (e.g. --ratio 1) or use --method supervised")
        if cfg.sync_bn and self.dist.enabled:
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
        self.model: nn.Module = ddp.wrap_ddp(self.net, self.device) if self.dist.enabled else self.net

    def _build_optimisation(self) -> None:
        cfg, o = self.cfg, self.cfg.optim
        self.augmenter = Augmenter(cfg.augment, self.device, method_policy=self.method.strong_policy)
        self.optimizer = torch.optim.SGD(param_groups(self.net, o), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                         weight_decay=o.weight_decay)
        self.steps_per_epoch = o.steps_per_epoch or max(1, len(self.split.labeled) // o.batch_size)
        self.total_steps = self.steps_per_epoch * o.epochs
        self.ema = (EMA(self.net, o.ema_decay, every=o.ema_every, ramp=o.ema_ramp, lookahead=o.lookahead,
                        total_steps=self.total_steps) if o.ema_decay > 0 else None)
        self.warmup_steps = int(round(o.warmup_epochs * self.steps_per_epoch))

    def _build_streams(self) -> None:
        """One global labeled batch (and one unlabeled batch) per step; every rank walks the same
        streams and keeps its share of each batch; per-rank augmentation (rank 0 keeps the
        single-process seeds)."""
        cfg = self.cfg
        self.labeled_stream = IndexStream(self.split.labeled, cfg.optim.batch_size, seed=cfg.seed)
        self.unlabeled_stream = (IndexStream(self.split.unlabeled, ddp.unlabeled_batch_size(cfg), seed=cfg.seed + 1)
                                 if self.method.uses_unlabeled else None)
        self.aug_gen = torch.Generator().manual_seed(cfg.seed + 2 + RANK_SEED_STRIDE * self.dist.rank)
        amp = amp_dtype(cfg, self.device)
        self.stepper = Stepper(self.model, self.method, self.optimizer, self.augmenter, self.aug_gen, net=self.net,
                               scaler=torch.amp.GradScaler("cuda", enabled=amp == torch.float16), ema=self.ema,
                               amp_dtype=amp, labeled_view=cfg.labeled_view, channels_last=cfg.model.channels_last)

    def _run_info(self) -> RunInfo:
        return RunInfo(num_classes=self.num_classes, classes=self.classes, n_train=len(self.bundle.train),
                       split=self.split, device=self.device, dist=self.dist, net=self.net, run_dir=self.run_dir,
                       labels=self.labels, load_frozen=lambda path: load_frozen(path, self.device))

    def precision(self) -> str:
        """What the training step computes in, for the run header."""
        return describe(self.stepper.amp_dtype, self.device, self.cfg.amp)

    def describe(self) -> dict[str, Any]:
        """What a checkpoint says about its model: the build arguments, the classes and the preprocessing."""
        a = self.cfg.augment
        return {"model_spec": self.cfg.model.build_args(self.num_classes), "classes": self.classes,
                "preprocess": preprocess_spec(tuple(self.images.shape[2:]), a.mean, a.std)}

    def _rng_state(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state(), "aug": self.aug_gen.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (a collective with several processes: every rank calls it)."""
        rng_ranks = self.dist.all_gather_object(self._rng_state())
        return {
            "format": 2, **self.describe(), "config": self.cfg.to_dict(), "world": self.dist.world,
            "model": self.net.state_dict(), "ema": self.ema.module.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(), "scaler": self.stepper.scaler.state_dict(),
            "rng_ranks": rng_ranks,  # every rank's states (one entry for a single process)
            "streams": {"labeled": self.labeled_stream.state_dict(),
                        "unlabeled": self.unlabeled_stream.state_dict() if self.unlabeled_stream else None},
            "method": self.method.state_dict(),
            "train_state": self.state.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (this rank's share of it)."""
        self.net.load_state_dict(state["model"])
        if self.ema and state["ema"] is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.labeled_stream.load_state_dict(state["streams"]["labeled"])
        if self.unlabeled_stream and state["streams"]["unlabeled"]:
            self.unlabeled_stream.load_state_dict(state["streams"]["unlabeled"])
        self.method.load_state_dict(state.get("method") or {})
        self.stepper.scaler.load_state_dict(state["scaler"])
        ranks = state["rng_ranks"]
        if self.dist.rank < len(ranks):  # another number of processes: rank r continues rank r's stream where it exists
            rng = ranks[self.dist.rank]
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            self.aug_gen.set_state(rng["aug"])
        self.state.load_state_dict(state["train_state"])

    def _best_weights(self) -> dict[str, Any]:
        return {"epoch": self.state.epoch, "model": self.eval_model().state_dict(), **self.describe()}

    def save(self, improved: bool) -> None:
        """last.pt (then best.pt and metrics.jsonl) by rank 0."""
        state = self.state_dict()
        if self.dist.main:
            checkpoint.write_run_files(self.run_dir, state, self._best_weights() if improved else None)
        self.dist.barrier()  # the other ranks may read best.pt later (finish)

    def _resume(self) -> None:
        state = checkpoint.read_for_resume(self.run_dir, self.cfg, self.num_classes, self.log, self.dist.main)
        if state is None:
            return
        path = self.run_dir / "last.pt"
        checkpoint.restore(lambda: self.load_state_dict(state), path)
        if len(state["rng_ranks"]) != self.dist.world:
            self.log(f"resume: the checkpoint was written by {len(state['rng_ranks'])} process(es), this run has "
                     f"{self.dist.world}; training continues, but not bit-exactly as the original run would have")
        if self.dist.main:
            checkpoint.repair_best(self.run_dir, self.state, self._best_weights, self.log)
        self.log(f"resumed from {path} after epoch {self.state.epoch} (step {self.state.step})")

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
        o, s = self.cfg.optim, self.state
        self.model.train()
        build.start_epoch(self.net, s.epoch, self.cfg)
        sums: dict[str, Tensor] = {}
        loss_sum = torch.zeros((), device=self.device)
        show = self.cfg.progress and self.dist.main
        n_images, t0, bar = 0, time.time(), report.progress_bar(show, self.steps_per_epoch, s.epoch, o.epochs)
        for i in range(self.steps_per_epoch):
            factor = lr_factor(s.step, self.total_steps, o.schedule, self.warmup_steps)
            for g in self.optimizer.param_groups:
                g["lr"] = g["base_lr"] * factor
            lr = self.optimizer.param_groups[0]["lr"]
            batch = self.next_batch()
            out = self.stepper(batch, epoch=s.epoch + i / self.steps_per_epoch, step=s.step,
                               check=lambda out, i=i: check_finite(out, self.dist, epoch=s.epoch, step=s.step, i=i,
                                                                   run_dir=self.run_dir, device=self.device))
            s.step += 1
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
        dt = time.time() - t0
        s.train_time += dt
        s.train_images += n_images * self.dist.world
        stats = {"loss": float(packed[0]) / self.steps_per_epoch}
        stats.update({k: float(v) / self.steps_per_epoch for k, v in zip(keys, packed[1:])})
        stats.update(self.method.end_epoch())
        stats.update(lr=lr, epoch_time_s=dt, images_per_s=n_images * self.dist.world / max(dt, 1e-9))
        return stats

    # ------------------------------------------------------------ evaluation and diagnostics

    def _evaluate(self, model: nn.Module, images: Tensor, labels: Tensor, tta: int) -> dict[str, Any]:
        """Evaluate on a whole set; with several processes each takes every W-th image and the sums are reduced."""
        if self.dist.enabled:
            images, labels = images[self.dist.rank :: self.dist.world], labels[self.dist.rank :: self.dist.world]
        return evaluate(model, images, labels, self.augmenter, self.cfg.eval_batch_size, self.num_classes,
                        self.cfg.model.channels_last, self.stepper.autocast,
                        reduce=self.dist.all_reduce_sum if self.dist.enabled else None, tta=tta)

    def validate(self) -> dict[str, Any]:
        idx = self.split.val.to(self.device)
        return self._evaluate(self.eval_model(), self.images[idx], self.labels[idx], self.cfg.validation_tta())

    def test(self, model: nn.Module) -> dict[str, Any]:
        return self._evaluate(model, self.test_images, self.test_labels, self.cfg.eval_tta)

    def _cam_grid(self, tag: str) -> None:
        if self.cfg.cam_grid and self.dist.main:
            diagnostics.write_cam_grid(self.eval_model(), self.split.val, self.images, self.labels, self.augmenter,
                                       self.classes, self.cfg, tag, self.run_dir, self.writer, self.state.epoch)

    # ------------------------------------------------------------ a whole run

    def _start(self) -> None:
        """The run directory's first files, TensorBoard, the header lines and the first CAM grid."""
        cfg, s = self.cfg, self.state
        if self.dist.main:
            write_start_files(self.run_dir, cfg, self.split, self.resume)
            self.writer = report.tensorboard(self.run_dir, s.step if self.resume else None)
        self.log(report.model_line(cfg, self.net, self.device, self.dist, self.steps_per_epoch))
        if self.dist.main and s.epoch < cfg.optim.epochs:
            self.log(report.machine_line(self.net, cfg.model.name, cfg.model.widths or cfg.model.width, cfg.optim.batch_size,
                                         tuple(self.images.shape[2:]), self.device, self.precision()))
        if s.epoch == 0:
            self._cam_grid("epoch 0")

    def _finish_epoch(self, stats: dict[str, float]) -> None:
        """Validation, the epoch record, the checkpoint and the epoch line of the epoch just trained."""
        cfg, s = self.cfg, self.state
        s.epoch += 1
        ddp.sync_buffers(self.dist, [self.net] + ([self.ema.module] if self.ema else []))
        ddp.check_replicas(self.dist, self.net, s.epoch)
        check_weights(self.net, s.epoch, self.run_dir)
        record: dict[str, Any] = {"epoch": s.epoch, "step": s.step, **stats}
        if self.dist.main:
            record.update(diagnostics.map_diagnostics(self.eval_model(), self.split.val, self.images, self.augmenter,
                                                      self.cfg.diagnostic_layer(), self.cfg.seed))
        improved = False
        if s.epoch % cfg.eval_every == 0 or s.epoch == cfg.optim.epochs:
            val = self.validate()
            record["val_acc"], record["val_loss"] = val["acc"], val["loss"]
            if val["acc"] > s.best["val_acc"]:
                s.best = {"val_acc": val["acc"], "epoch": s.epoch}
                improved = True
        record["wall_s"] = s.elapsed()  # the run's wall time so far (accuracy against time, docs/results-fast.md)
        s.history.append(record)
        self.save(improved)
        s.segment_epochs += 1
        report.add_scalars(self.writer, record, s.epoch)
        self.log(report.epoch_line(record, s, cfg.optim.epochs, self.method.log_metrics))

    def fit(self) -> dict[str, Any]:
        self._start()
        while self.state.epoch < self.cfg.optim.epochs:
            self._finish_epoch(self.train_epoch())
        self._cam_grid("final")
        result = self.finish()
        if self.writer is not None:
            self.writer.add_scalar("test/test_acc", result["test_acc"], self.state.epoch)
            self.writer.close()
        if self.dist.main:
            io.write_json(self.run_dir / "result.json", result)
        return result

    def finish(self) -> dict[str, Any]:
        """The result record: test accuracy of the final weights and of the best validation epoch's."""
        test = self.test(self.eval_model())
        best_test = test
        best_path = self.run_dir / "best.pt"
        if best_path.exists() and self.state.best["epoch"] != self.state.epoch:
            best_model = copy.deepcopy(self.eval_model())
            best_model.load_state_dict(torch.load(best_path, map_location=self.device, weights_only=True)["model"])
            best_test = self.test(best_model)
        facts = report.run_facts(self.cfg, self.split, self.bundle, self.device, self.precision(), self.dist.world)
        online = self.test(self.net)["acc"] if self.ema else None  # the trained weights beside their EMA
        return report.result_record(self.state, test, best_test, self.classes, facts, online)
