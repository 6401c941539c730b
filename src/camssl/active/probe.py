"""Measurement (a) of the REVIVAL issue: strategies compared on the fixed features of one trained model.

The features of one trained camssl run (its final weights, frozen) are computed once for
a fixed pool (``pool_size`` training images drawn with a fixed seed, the run's own
labeled images left out when its split.json matches the data) and for the test set. The
task model is a linear probe (multinomial logistic regression on the L2-normalised
features, L-BFGS, deterministic), retrained from scratch every cycle. Per seed, the
initial labeled set is class-balanced and shared by every strategy (so the comparison is
paired by seed); every strategy gets the same budget per cycle. The kNN graph of the pool
is built once. REVIVAL's perturbation is computed on the images through the frozen model
and the probe (:class:`ProbeModel`), so the full pipeline runs; only the task model is cheap.

Run it as ``python scripts/active_features.py --run RUN_DIR --data DIR --out DIR``
(``--help`` lists the options); it writes curves.csv/.md/.png (:mod:`camssl.active.curves`),
diagnostics.csv (virtual-label accuracy on the pool, selection time) and settings.json.
"""

from __future__ import annotations

import argparse
import csv
import io as _stdio
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camssl import io
from camssl.active.config import active_config
from camssl.active.curves import Point, write_curves
from camssl.active.pool import features_and_logits
from camssl.active.propagation import knn_graph, normalized_adjacency
from camssl.active.strategies import STRATEGIES, PoolContext, select
from camssl.augment import Augmenter
from camssl.data import DataConfig, Split, SplitConfig, load_data, make_split
from camssl.errors import UserError
from camssl.train.checkpoint import load_run_model


class ProbeModel(nn.Module):
    """A frozen camssl model's normalised penultimate features followed by a linear probe ``fc``."""

    def __init__(self, backbone: nn.Module, fc: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.fc = backbone.eval(), fc

    def forward(self, x: Tensor) -> Tensor:
        seen: list[Tensor] = []
        hook = self.backbone.fc.register_forward_pre_hook(lambda _m, args: seen.append(args[0].flatten(1)))
        try:
            self.backbone(x)
        finally:
            hook.remove()
        return self.fc(F.normalize(seen[-1], dim=1))


def train_probe(features: Tensor, labels: Tensor, num_classes: int, weight_decay: float = 1e-4,
                iterations: int = 100) -> nn.Linear:
    """Multinomial logistic regression on ``features`` by full-batch L-BFGS from zero weights (deterministic)."""
    fc = nn.Linear(features.shape[1], num_classes).to(features.device)
    nn.init.zeros_(fc.weight)
    nn.init.zeros_(fc.bias)
    opt = torch.optim.LBFGS(fc.parameters(), lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(fc(features), labels) + 0.5 * weight_decay * fc.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    for p in fc.parameters():
        p.requires_grad_(False)
    return fc


def fixed_pool(labels: Tensor, size: int, exclude: Tensor | None, seed: int = 12345) -> Tensor:
    """``size`` training indices (ascending) drawn uniformly with a fixed seed, none of ``exclude``."""
    allowed = torch.ones(len(labels), dtype=torch.bool)
    if exclude is not None:
        allowed[exclude] = False
    candidates = torch.nonzero(allowed).flatten()
    if size > len(candidates):
        raise UserError(f"--pool {size} is more than the {len(candidates)} training images available "
                        "(the model's own labeled images are left out); lower --pool")
    g = torch.Generator().manual_seed(seed)
    return candidates[torch.randperm(len(candidates), generator=g)[:size]].sort().values


def _excluded(run: Path, fingerprint: str) -> Tensor | None:
    """The labeled images of the run whose features are used (when its split belongs to this data)."""
    run_dir = run if run.is_dir() else run.parent
    try:
        split = Split.load(run_dir / "split.json")
    except UserError:
        return None
    return split.labeled if split.fingerprint == fingerprint else None


def run_probe_experiment(args: argparse.Namespace, log: Callable[[str], None] = print) -> list[Point]:
    """The experiment of the module doc with the options of :func:`parser`; writes into ``args.out``."""
    unknown = sorted(set(args.strategies) - set(STRATEGIES))
    if unknown:
        raise UserError(f"unknown strategy {unknown[0]!r}; choose from: {', '.join(STRATEGIES)}")
    device = torch.device(args.device)
    model, run_cfg, classes = load_run_model(Path(args.run), "last")
    model = model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    data = load_data(DataConfig(source=args.data, image_size=run_cfg.data.image_size))
    if list(data.train.classes) != list(classes):
        raise UserError(f"the run's classes ({', '.join(classes)}) differ from the data's; give the data it was trained on")
    pool = fixed_pool(data.train.labels, args.pool, _excluded(Path(args.run), data.fingerprint))
    augmenter = Augmenter(run_cfg.augment, device)
    acfg = active_config({"score_batch_size": args.score_batch_size, "revival": dict(args.revival)})
    t0 = time.perf_counter()
    images = data.train.images[pool].to(device)
    feats, _ = features_and_logits(model, images, augmenter, args.score_batch_size)
    test_feats, _ = features_and_logits(model, data.test.images.to(device), augmenter, args.score_batch_size)
    truth, test_y = data.train.labels[pool], data.test.labels.to(device)
    c = len(classes)
    graph = normalized_adjacency(knn_graph(feats, acfg.revival.k, acfg.revival.gamma))
    log(f"features of {len(pool)} pool and {len(test_y)} test images and the kNN graph: {time.perf_counter() - t0:.1f}s")
    points, diag = [], []
    for seed in args.seeds:
        start = make_split(truth, c, SplitConfig(val_fraction=0.0, n_labeled=args.initial, ratio=0.0, seed=seed),
                           class_names=classes).labeled
        for strategy in args.strategies:
            labeled = start.clone()
            for cycle in range(args.cycles + 1):
                fc = train_probe(feats[labeled.to(device)], truth[labeled].to(device), c, args.weight_decay)
                acc = float((fc(test_feats).argmax(1) == test_y).float().mean())
                points.append(Point(strategy, seed, cycle, len(labeled), acc))
                row = {"strategy": strategy, "seed": seed, "cycle": cycle, "n_labeled": len(labeled), "test_acc": acc}
                ctx = PoolContext(ProbeModel(model, fc), augmenter, images, feats.cpu(), fc(feats).cpu(), labeled,
                                  truth[labeled], c, torch.Generator().manual_seed(seed * 1_000_003 + cycle), acfg,
                                  w_hat=graph)
                row["virtual_acc_pool"] = float((ctx.propagation().labels[ctx.pool()] == truth[ctx.pool()]).float().mean())
                if cycle < args.cycles:
                    t1 = time.perf_counter()
                    chosen = select(strategy, ctx, args.budget).positions
                    row["select_s"] = time.perf_counter() - t1
                    labeled = torch.cat([labeled, chosen]).sort().values
                diag.append(row)
            log(f"seed {seed} {strategy}: " + ", ".join(f"{p.n_labeled}: {100 * p.acc:.2f}%" for p in points
                                                         if p.seed == seed and p.strategy == strategy))
    _write(args, points, diag, run_cfg.model.name, run_cfg.model.width)
    return points


def _write(args: argparse.Namespace, points: list[Point], diag: list[dict], model: str, width: float) -> None:
    out = Path(args.out)
    title = (f"Fixed features of {model} width {width:g} ({args.run}), linear probe, pool {args.pool}, "
             f"{args.initial} + {args.budget} x {args.cycles}, seeds {', '.join(map(str, args.seeds))}")
    write_curves(points, out, title, "random", "linear-probe test accuracy")
    buf = _stdio.StringIO()
    w = csv.DictWriter(buf, ["strategy", "seed", "cycle", "n_labeled", "test_acc", "virtual_acc_pool", "select_s"],
                       lineterminator="\n")
    w.writeheader()
    w.writerows(diag)
    io.write_text(out / "diagnostics.csv", buf.getvalue())
    io.write_json(out / "settings.json", {k: v for k, v in vars(args).items() if k != "revival"} |
                  {"revival": dict(args.revival)})


def _revival(text: str) -> tuple[str, object]:
    from camssl.config import parse_override

    return parse_override(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="active_features.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a trained camssl run directory (its last.pt) or checkpoint file")
    p.add_argument("--data", required=True, help="the data it was trained on (CIFAR-10 folder/archive, 'mini', ...)")
    p.add_argument("--out", required=True, help="output folder (curves.*, diagnostics.csv, settings.json)")
    p.add_argument("--pool", type=int, default=10000, help="pool size [10000]")
    p.add_argument("--initial", type=int, default=100, help="class-balanced initial labeled set [100]")
    p.add_argument("--budget", type=int, default=100, help="queries per cycle [100]")
    p.add_argument("--cycles", type=int, default=5, help="query rounds [5]")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds [0 1 2 3 4]")
    p.add_argument("--strategies", nargs="+", default=["random", "entropy", "coreset", "revival"],
                   help="strategies [random entropy coreset revival]")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="the probe's L2 penalty [1e-4]")
    p.add_argument("--score-batch-size", type=int, default=256, help="images per forward [256]")
    p.add_argument("--device", default="cpu", help="cpu | cuda [cpu]")
    p.add_argument("--revival", type=_revival, action="append", default=[], metavar="KEY=VALUE",
                   help="a REVIVAL setting, e.g. --revival target=hard --revival k=20 (repeatable)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    args = parser().parse_args(argv)
    try:
        run_probe_experiment(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(Path(args.out) / "curves.md")}))
    return 0
