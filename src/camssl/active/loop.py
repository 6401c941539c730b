"""The active-learning loop: train → score the pool → query → reveal labels → grow the labeled set → retrain.

Layout of ``OUT``::

    active.json           the loop's state and results (:mod:`camssl.active.state`)
    cycle_0/ ... cycle_K/ one ordinary camssl run directory per cycle (config.yaml, split.json,
                          last.pt, result.json ...; ``camssl train --resume OUT/cycle_2`` works)
    queries/cycle_<c>.csv the files oracle's queries (and the images, queries/cycle_<c>/)
    queries/cycle_<c>.labelstudio.json, queries/labelstudio.xml   the Label Studio oracle's tasks and config

Cycle 0 trains on the initial labeled set; each of the ``cycles`` query rounds then scores
the pool with the cycle's final model, queries ``budget`` images, and the next cycle
trains on the grown set. The validation set is drawn once (stratified, ``split.val_fraction``)
and kept; the pool is every training image that is neither labeled nor validation, and it
is also the task model's unlabeled set. Every cycle trains ``optim.epochs`` ×
``optim.steps_per_epoch`` steps (when steps_per_epoch is 0, camssl fixes it to the final
labeled size // batch size, the same for every cycle), from the same seeded initial weights
(or, with ``warm_start``, from the previous cycle's final weights).

Every step ends in an atomic write of ``active.json``, every cycle's training is resumable
by itself, and every random choice of the selection comes from a generator seeded by
(seed, cycle): a run killed anywhere continues with ``--resume`` to the same ``active.json``
as an uninterrupted run (apart from its "time" records).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import camssl.active.labelstudio as labelstudio
import camssl.active.oracle as oracle
from camssl.active.config import ActiveConfig, active_config
from camssl.active.pool import pool_context, virtual_label_accuracy
from camssl.active.state import STATE_FILE, ActiveState
from camssl.active.strategies import select
from camssl.augment import Augmenter
from camssl.config import RESULT_NEUTRAL_KEYS, TrainConfig, config_differences, from_dict
from camssl.data import DataBundle, Split, SplitConfig, load_data, make_split
from camssl.errors import UserError
from camssl.train import Trainer, pick_device, process_settings
from camssl.train.checkpoint import load_run_model
from camssl.text import fmt_pct


def run_active(cfg: TrainConfig | None, acfg: ActiveConfig | None, out: str | Path, *, resume: bool = False,
               log: Callable[[str], None] = print, labels: str | Path | None = None,
               first_cycle_from: str | Path | None = None) -> ActiveState:
    """Run (or continue, with ``resume``) the active-learning loop in ``out``; returns the final state.

    With ``resume``, ``cfg`` and ``acfg`` may be None (the saved ones are used); given, they
    must equal the saved ones. Returns early, with ``state.pending`` set, when the files or
    the Label Studio oracle waits for labels. ``labels`` (with ``resume``): Label Studio's
    export of the pending query's tasks, checked as a whole before anything runs.
    ``first_cycle_from`` (a new run only): another active-learning run with the same training
    config, seed and initial set (e.g. the random strategy's), whose finished cycle 0 is copied
    instead of trained again; cycle 0 is the same for every strategy, so comparing S strategies
    then trains S - 1 fewer cycles.
    """
    out = Path(out)
    revealed = None
    if labels is not None and not resume:
        raise UserError("--labels needs --resume: it gives the labels of a run's pending query "
                        "(camssl active --out DIR --resume --labels EXPORT)")
    if first_cycle_from is not None and resume:
        raise UserError("--first-cycle-from starts a new run; a resumed run keeps the cycles it has "
                        "(camssl active --out DIR --resume, without --first-cycle-from)")
    if resume:
        state = ActiveState.load(out)
        cfg, acfg = _check_same(state, cfg, acfg, out)
        if labels is not None:
            revealed = labelstudio.labels_for_pending(Path(labels), state, acfg.oracle, out)
    else:
        if cfg is None or acfg is None:
            raise UserError("nothing to run: give a config (or --resume an active-learning run)")
        _check_out(out)
    data = load_data(cfg.data, seed=cfg.split.seed)
    if resume:
        if state.fingerprint != data.fingerprint:
            raise UserError(f"the data of '{out}' differs from the data found now (fingerprint {state.fingerprint} vs "
                            f"{data.fingerprint}); resume with the same data.source")
    else:
        state = _new_state(cfg, acfg, data)
        source = None if first_cycle_from is None else _first_cycle_source(Path(first_cycle_from), state)
        out.mkdir(parents=True, exist_ok=True)
        if source is not None:
            _copy_first_cycle(source, out)
        state.save(out)
    return _Loop(cfg, acfg, out, data, state, log, revealed).run()


def _check_out(out: Path) -> None:
    if (out / STATE_FILE).exists():
        raise UserError(f"output directory '{out}' already holds an active-learning run; pass --resume to continue "
                        "it, or choose another --out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output path '{out}' is not an empty directory and holds no active-learning run; "
                        "choose another --out")


def _check_same(state: ActiveState, cfg: TrainConfig | None, acfg: ActiveConfig | None,
                out: Path) -> tuple[TrainConfig, ActiveConfig]:
    saved_cfg = from_dict(TrainConfig, state.train_config)
    saved_acfg = active_config(state.active)
    diff = []
    if cfg is not None:
        fixed = copy.deepcopy(cfg)
        fixed.optim.steps_per_epoch = saved_cfg.optim.steps_per_epoch if cfg.optim.steps_per_epoch == 0 \
            else cfg.optim.steps_per_epoch
        diff += config_differences(saved_cfg.to_dict(), fixed.to_dict(), ignore=RESULT_NEUTRAL_KEYS)
    if acfg is not None:
        diff += [(f"active.{k}", a, b) for k, a, b in config_differences(saved_acfg.to_dict(), acfg.to_dict())]
    if diff:
        k, a, b = diff[0]
        raise UserError(f"'{out}' was started with {k}={a!r}, not {b!r}; resume with the saved settings "
                        "(camssl active --out DIR --resume, nothing else) or choose another --out")
    if cfg is not None:  # where the data is now (data.source may move; the fingerprint is checked)
        saved_cfg.data.source = cfg.data.source
    return saved_cfg, saved_acfg


REUSED_FILE = "reused.json"  # in a cycle_0 copied from another run: {"from": that run's folder}


def _first_cycle_source(source: Path, state: ActiveState) -> Path:
    """``source``'s finished cycle-0 folder, after checking that it is what this run would train."""
    if not (source / STATE_FILE).is_file():
        raise UserError(f"--first-cycle-from '{source}' holds no active-learning run (no {STATE_FILE}); give the "
                        "--out folder of an earlier camssl active run")
    other = ActiveState.load(source)
    hint = "; give a run started with the same config, --seed and --initial (any strategy), or drop --first-cycle-from"
    diff = config_differences(other.train_config, state.train_config, ignore=RESULT_NEUTRAL_KEYS)
    if diff:
        k, a, b = diff[0]
        raise UserError(f"--first-cycle-from '{source}' was trained with {k}={a!r}, not {b!r}{hint}")
    if other.fingerprint != state.fingerprint:
        raise UserError(f"--first-cycle-from '{source}' was trained on other data (fingerprint {other.fingerprint} vs "
                        f"{state.fingerprint}){hint}")
    (index, labels), (own_index, own_labels) = other.labeled_until(0), state.labeled_until(0)
    if other.val != state.val or not (torch.equal(index, own_index) and torch.equal(labels, own_labels)):
        raise UserError(f"--first-cycle-from '{source}' has another validation or initial labeled set{hint}")
    folder = source / "cycle_0"
    if not other.cycles or not (folder / "result.json").exists() or not (folder / "last.pt").exists():
        raise UserError(f"--first-cycle-from '{source}' has not finished its cycle 0 (no {folder / 'result.json'} "
                        "and last.pt); finish it first (camssl active --out DIR --resume)")
    return folder


def _copy_first_cycle(folder: Path, out: Path) -> None:
    """Copy ``folder`` to ``out/cycle_0`` (whole or not at all), marked with where it came from."""
    dest = out / "cycle_0"
    tmp = out / f".cycle_0.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp)
    (tmp / REUSED_FILE).write_text(json.dumps({"from": str(folder.parent.resolve())}) + "\n", encoding="utf-8")
    os.replace(tmp, dest)


def _new_state(cfg: TrainConfig, acfg: ActiveConfig, data: DataBundle) -> ActiveState:
    """The initial labeled and validation sets, after checking the sizes against the data (nothing written)."""
    labels, classes = data.train.labels, data.train.classes
    n, c = len(labels), len(classes)
    n_val = sum(round(cfg.split.val_fraction * int((labels == k).sum())) for k in range(c))
    available = n - n_val
    if acfg.initial > available:
        raise UserError(f"--initial {acfg.initial} is more than the {available} training images outside the "
                        f"validation set ({n} in all, {n_val} for validation); use at most {available}")
    if acfg.initial < c:
        raise UserError(f"--initial {acfg.initial} is fewer than the {c} classes: the initial labeled set is "
                        f"class-balanced, at least one image per class; use --initial {c} or more")
    pool = available - acfg.initial
    if acfg.budget > pool:
        raise UserError(f"--budget {acfg.budget} is larger than the pool of {pool} unlabeled images "
                        f"({available} outside validation - {acfg.initial} initial); lower --budget or --initial")
    if acfg.budget * acfg.cycles > pool:
        raise UserError(f"--budget {acfg.budget} x --cycles {acfg.cycles} = {acfg.budget * acfg.cycles} queries "
                        f"exceed the pool of {pool} unlabeled images; lower --budget or --cycles")
    try:
        split = make_split(labels, c, SplitConfig(cfg.split.val_fraction, acfg.initial, 0.0, cfg.split.seed),
                           data.fingerprint, class_names=classes)
    except UserError as e:
        raise UserError(f"--initial {acfg.initial}: {e}") from None
    if cfg.optim.steps_per_epoch == 0:
        cfg.optim.steps_per_epoch = max(1, (acfg.initial + acfg.cycles * acfg.budget) // cfg.optim.batch_size)
    state = ActiveState(active=acfg.to_dict(), train_config=cfg.to_dict(), fingerprint=data.fingerprint,
                        classes=list(classes), n_train=n, val=split.val.tolist())
    state.add_labels(split.labeled.tolist(), labels[split.labeled].tolist(), 0, "initial")
    return state


class _Loop:
    def __init__(self, cfg: TrainConfig, acfg: ActiveConfig, out: Path, data: DataBundle, state: ActiveState,
                 log: Callable[[str], None], revealed: list[int] | None = None) -> None:
        self.cfg, self.acfg, self.out, self.data, self.state, self.log = cfg, acfg, out, data, state, log
        self.revealed = revealed  # the pending query's labels from a Label Studio export (--labels)
        self.device = pick_device(cfg.device)
        self.val = torch.tensor(state.val, dtype=torch.long)
        not_val = torch.ones(len(data.train), dtype=torch.bool)
        not_val[self.val] = False
        self.nodes = torch.nonzero(not_val).flatten()  # labeled ∪ pool, the same in every cycle

    def run(self) -> ActiveState:
        o, a = self.cfg.optim, self.acfg
        process_settings(self.cfg)  # threads and determinism also for a resume that starts with a selection
        self.log(f"active learning: strategy {a.strategy}, {a.initial} initial + {a.budget} x {a.cycles} queries "
                 f"({a.oracle} oracle); {len(self.val)} validation images; each cycle trains {self.cfg.method.name} "
                 f"for {o.epochs} epochs x {o.steps_per_epoch} steps = {o.epochs * o.steps_per_epoch} steps "
                 f"({'warm start' if a.warm_start else 're-initialised'})")
        for c in range(a.cycles + 1):
            if len(self.state.cycles) <= c:
                self._train(c)
            if c == a.cycles:
                break
            record = self.state.cycles[c]
            if "query" not in record:
                self._select(c)
            if self.state.pending is not None:
                if not self._label(c + 1):
                    return self.state
        self.state.finished = True
        self.state.save(self.out)
        self.log(f"active learning finished: {self.out / STATE_FILE}")
        return self.state

    # ------------------------------------------------------------ training

    def _split(self, cycle: int) -> tuple[Split, TrainConfig, DataBundle]:
        labeled, labels = self.state.labeled_until(cycle)
        is_pool = torch.zeros(len(self.data.train), dtype=torch.bool)
        is_pool[self.nodes] = True
        is_pool[labeled] = False
        pool = torch.nonzero(is_pool).flatten()
        cfg = copy.deepcopy(self.cfg)
        cfg.split = SplitConfig(cfg.split.val_fraction, len(labeled), round(len(pool) / len(labeled), 6), cfg.split.seed)
        y = self.data.train.labels.clone()
        y[labeled] = labels  # the oracle's labels (the files oracle's may differ from the data's)
        bundle = dataclasses.replace(self.data, train=dataclasses.replace(self.data.train, labels=y))
        counts = {k: torch.bincount(y[v], minlength=len(self.state.classes)).tolist()
                  for k, v in (("labeled", labeled), ("unlabeled", pool), ("val", self.val))}
        return Split(labeled, pool, self.val, cfg.split, self.data.fingerprint, counts), cfg, bundle

    def _train(self, c: int) -> None:
        split, cfg, bundle = self._split(c)
        run_dir = self.out / f"cycle_{c}"
        self.log(f"cycle {c}: training on {len(split.labeled)} labeled + {len(split.unlabeled)} unlabeled images "
                 f"in {run_dir}")
        marker = run_dir / REUSED_FILE  # a cycle copied by --first-cycle-from
        reused_from = json.loads(marker.read_text())["from"] if marker.exists() else None
        if (run_dir / "result.json").exists():
            result = json.loads((run_dir / "result.json").read_text())
        else:
            process_settings(cfg)
            init = self.out / f"cycle_{c - 1}" / "last.pt" if self.acfg.warm_start and c > 0 else None
            trainer = Trainer(cfg, run_dir, data=bundle, split=split, init=init,
                              resume=(run_dir / "config.yaml").exists(), log=self.log, device=self.device)
            result = trainer.fit()
        self.state.cycles.append({
            "cycle": c, "n_labeled": len(split.labeled), "run_dir": run_dir.name,
            **{k: result[k] for k in ("test_acc", "test_acc_at_best_val", "best_val_acc", "val_acc", "steps")},
            "per_class_test_acc": result["per_class_test_acc"],
            "time": {"train_s": result["wall_time_s"]},
            **({"reused_from": reused_from} if reused_from else {}),
        })
        self.state.save(self.out)
        if reused_from:
            self.log(f"cycle {c}: copied from {reused_from} (the same config, seed and "
                     "initial set), not trained again")
        self.log(f"cycle {c}: test accuracy {fmt_pct(result['test_acc'])} with {len(split.labeled)} labels")

    # ------------------------------------------------------------ selection and labels

    def _select(self, c: int) -> None:
        """Score the pool with cycle ``c``'s final model and record the query (labels come next)."""
        t0 = time.perf_counter()
        model = load_run_model(self.out / f"cycle_{c}", "last")[0].to(self.device)
        labeled, labels = self.state.labeled_until(c)
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + c)
        nodes = self._scored_nodes(labeled, gen)
        pos = torch.searchsorted(nodes, labeled)
        images = self.data.train.images[nodes].to(self.device)
        ctx = pool_context(model, images, pos, labels, len(self.state.classes), Augmenter(self.cfg.augment, self.device),
                           self.acfg, gen)
        t1 = time.perf_counter()
        sel = select(self.acfg.strategy, ctx, self.acfg.budget)
        t2 = time.perf_counter()
        diag = virtual_label_accuracy(ctx, sel.positions, self.data.train.labels[nodes])
        t3 = time.perf_counter()
        chosen = nodes[sel.positions].tolist()
        record = self.state.cycles[c]
        record["query"] = {"index": chosen, **diag, "scored_pool": len(nodes) - len(labeled), "info": sel.info}
        record["time"].update(features_s=t1 - t0, select_s=t2 - t1, diagnostics_s=t3 - t2)
        prob, predicted = ctx.logits[sel.positions].float().softmax(1).max(1)  # shown to a labeller (Label Studio)
        self.state.pending = {"cycle": c + 1, "index": chosen, "csv": None,
                              "score": None if sel.scores is None else sel.scores.tolist(),
                              "predicted": predicted.tolist(), "prob": prob.tolist()}
        self.state.save(self.out)
        share = (t2 - t0) / max(record["time"]["train_s"], 1e-9)
        self.log(f"cycle {c}: queried {len(chosen)} images with {self.acfg.strategy} in {t2 - t0:.1f}s "
                 f"({100 * share:.0f}% of the cycle's training time); virtual labels "
                 f"{fmt_pct(diag['virtual_acc_before'])} right on the pool before, {fmt_pct(diag['virtual_acc_after'])} "
                 "after the query")

    def _scored_nodes(self, labeled: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The nodes a selection sees: every node, or the labeled ones + ``active.subset`` random pool images."""
        n = self.acfg.subset
        is_pool = torch.ones(len(self.nodes), dtype=torch.bool)
        is_pool[torch.searchsorted(self.nodes, labeled)] = False
        if n == 0 or n >= int(is_pool.sum()):
            return self.nodes
        pool = self.nodes[is_pool]
        pick = pool[torch.randperm(len(pool), generator=gen)[:n]]
        return torch.cat([labeled, pick]).sort().values

    def _label(self, cycle: int) -> bool:
        """Reveal the pending query's labels; False when the files or the Label Studio oracle waits for a person."""
        pending = self.state.pending
        assert pending is not None and pending["cycle"] == cycle
        index = pending["index"]
        if self.revealed is not None:
            labels, self.revealed = self.revealed, None
        elif self.acfg.oracle == "simulated":
            labels = self.data.train.labels[index].tolist()
        elif self.acfg.oracle == "labelstudio":
            if labelstudio.tasks_path(self.out, cycle).exists():
                raise UserError(f"the query for cycle {cycle} waits for its labels from Label Studio: label its "
                                f"{len(index)} tasks, export the project ({labelstudio.FORMATS}) and run camssl active "
                                f"--out {self.out} --resume --labels EXPORT")
            labelstudio.write_query(self.out, self.state, self.acfg.strategy, self.data.train.images)
            pending["tasks"] = str(labelstudio.tasks_path(self.out, cycle).relative_to(self.out))
            self.state.save(self.out)
            self.log(labelstudio.instructions(self.out, cycle))
            return False
        else:
            csv_path, folder = oracle.query_paths(self.out, cycle)
            if not csv_path.exists():
                oracle.write_query(self.out, cycle, index, self.data.train.images)
                pending["csv"] = str(csv_path.relative_to(self.out))
                self.state.save(self.out)
                self.log(f"wrote {csv_path}: {len(index)} images to label (the pictures are in {folder}/); fill in "
                         f"the label column with class names ({', '.join(self.state.classes)}), then run: "
                         f"camssl active --out {self.out} --resume")
                return False
            labels = oracle.read_labels(csv_path, index, self.state.classes,
                                        f"camssl active --out {self.out} --resume").tolist()
        self.state.add_labels(index, labels, cycle, self.acfg.strategy)
        query = self.state.cycles[cycle - 1]["query"]
        query["class_histogram"] = torch.bincount(torch.tensor(labels), minlength=len(self.state.classes)).tolist()
        self.state.pending = None
        self.state.save(self.out)
        return True


def summary(state: ActiveState) -> list[dict[str, Any]]:
    """One row per trained cycle: labels, test accuracy, virtual-label accuracy, times."""
    rows = []
    for c in state.cycles:
        q, t = c.get("query", {}), c.get("time", {})
        rows.append({"cycle": c["cycle"], "n_labeled": c["n_labeled"], "test_acc": c["test_acc"],
                     "virtual_acc_before": q.get("virtual_acc_before"), "virtual_acc_after": q.get("virtual_acc_after"),
                     "train_s": t.get("train_s"), "select_s": (t["features_s"] + t["select_s"]) if "select_s" in t else None})
    return rows
