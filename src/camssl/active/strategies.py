"""Query strategies, registered by name: ``random``, ``entropy``, ``coreset``, ``revival``.

A strategy is a function ``select(ctx, budget) -> Selection`` over a :class:`PoolContext`:
the task model, the augmenter, the images, the L2-normalised penultimate features and the
logits of every node (labeled and pool), the labeled nodes with their labels, and a seeded
generator. It returns ``budget`` distinct pool positions. Register your own with
:func:`register`::

    @register("margin")
    def margin(ctx, budget):
        top2 = ctx.pool_logits().softmax(1).topk(2, dim=1).values
        return top_scores(ctx, -(top2[:, 0] - top2[:, 1]), budget)

``revival`` is camssl's formulation of Guo et al. (ICCV 2021; docs/methods.md §4; no
public code exists, the slides give no formulas): virtual labels by label propagation on
the kNN graph of the features (:mod:`camssl.active.propagation`); a virtual adversarial
perturbation of each pool image against its virtual label; score = KL(virtual label ||
task model's prediction on the perturbed image); top ``budget`` with a diversity guard
(default: at most ``ceil(cap · budget / C)`` queries per virtual label). The virtual label
is the soft F_hat by default (``revival.target=soft``, docs/methods.md §4) or the one-hot
argmax of F (``hard``). With features that cluster poorly F_hat is close to uniform (the
slow, class-independent part of (I - αW)^-1 dominates at α = 0.99), and the score then
ranks mostly by the model's confidence on the perturbed image; ``hard`` keeps the graph's
decision at full strength.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camssl.active.config import STRATEGIES, ActiveConfig
from camssl.active.propagation import Propagation, knn_graph, normalized_adjacency, propagate
from camssl.augment import Augmenter
from camssl.losses import entropy, kl_from_logits, target_logits, vat_perturbation


@dataclass
class Selection:
    """``positions``: the chosen pool nodes (into the context's node list), in the order chosen;
    ``scores``: the acquisition score of each (higher: wanted more), or None for a strategy without
    one (``random``)."""

    positions: Tensor
    info: dict[str, Any] = field(default_factory=dict)  # numbers worth recording (in active.json)
    scores: Tensor | None = None


@dataclass
class PoolContext:
    """What a strategy sees. Nodes are the labeled images and the pool, in one fixed order."""

    model: nn.Module  # the task model, eval mode: normalised images -> logits
    augmenter: Augmenter  # normalises uint8 images for the model
    images: Tensor  # (N, 3, H, W) uint8 images of the nodes, on the scoring device
    features: Tensor  # (N, D) L2-normalised penultimate features
    logits: Tensor  # (N, C) the task model's logits on the clean images
    labeled: Tensor  # (L,) positions of the labeled nodes
    labels: Tensor  # (L,) their labels
    num_classes: int
    generator: torch.Generator  # every random choice of the selection draws from it
    cfg: ActiveConfig
    w_hat: sp.csr_matrix | None = None  # the normalised kNN graph; built on first use (or given)
    _propagation: Propagation | None = field(default=None, repr=False)

    def pool(self) -> Tensor:
        """Positions of the pool nodes (not labeled), ascending."""
        mask = torch.ones(len(self.features), dtype=torch.bool)
        mask[self.labeled.cpu()] = False
        return torch.nonzero(mask).flatten()

    def pool_logits(self) -> Tensor:
        return self.logits[self.pool().to(self.logits.device)]

    def graph(self) -> sp.csr_matrix:
        """``D^-1/2 W D^-1/2`` of the kNN graph of the features (built once per context)."""
        if self.w_hat is None:
            r = self.cfg.revival
            self.w_hat = normalized_adjacency(knn_graph(self.features, r.k, r.gamma))
        return self.w_hat

    def propagation(self) -> Propagation:
        """Label propagation from the labeled nodes (computed once per context)."""
        if self._propagation is None:
            self._propagation = self.propagate(self.labeled, self.labels)
        return self._propagation

    def propagate(self, labeled: Tensor, labels: Tensor) -> Propagation:
        r = self.cfg.revival
        return propagate(self.graph(), labeled.cpu(), labels.cpu(), self.num_classes, alpha=r.alpha, tol=r.cg_tol,
                         maxiter=r.cg_maxiter)


Strategy = Callable[[PoolContext, int], Selection]


def register(name: str) -> Callable[[Strategy], Strategy]:
    """Decorator: make ``fn(ctx, budget) -> Selection`` available as strategy ``name``."""

    def add(fn: Strategy) -> Strategy:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} registered twice")
        STRATEGIES[name] = fn
        return fn

    return add


def top_scores(ctx: PoolContext, scores: Tensor, budget: int) -> Selection:
    """The ``budget`` pool nodes of highest ``scores`` (one per pool node; ties: the earlier node)."""
    order = torch.argsort(scores.cpu(), descending=True, stable=True)[:budget]
    chosen = scores.cpu()[order].float()
    return Selection(ctx.pool()[order], {"score_mean_chosen": float(chosen.mean())}, chosen)


@register("random")
def random_strategy(ctx: PoolContext, budget: int) -> Selection:
    """Uniformly at random, without replacement."""
    pool = ctx.pool()
    return Selection(pool[torch.randperm(len(pool), generator=ctx.generator)[:budget]])


@register("entropy")
def entropy_strategy(ctx: PoolContext, budget: int) -> Selection:
    """The highest entropy of the task model's prediction on the clean image."""
    return top_scores(ctx, entropy(ctx.pool_logits()), budget)


def k_center_greedy(features: Tensor, centers: Tensor, candidates: Tensor, budget: int, chunk: int = 4096,
                    distances: list[float] | None = None) -> Tensor:
    """Greedy k-center (Sener & Savarese's core-set): ``budget`` of ``candidates`` (positions), each the farthest
    (Euclidean, on ``features``) from the centers and the candidates chosen before it; the earlier one on ties.
    ``distances``, when given, receives each pick's distance to its nearest center at the time it was picked."""
    feats = features.float()
    cand = feats[candidates.to(feats.device)]
    sq = (cand * cand).sum(1)
    nearest = torch.full((len(cand),), math.inf, device=feats.device)
    for start in range(0, len(centers), chunk):
        c = feats[centers[start : start + chunk].to(feats.device)]
        d = (sq[:, None] - 2 * cand @ c.T + (c * c).sum(1)[None]).clamp_min(0)
        nearest = torch.minimum(nearest, d.min(1).values)
    chosen = []
    for _ in range(budget):
        i = int(torch.argmax(nearest))
        chosen.append(i)
        if distances is not None:
            distances.append(float(nearest[i].clamp_min(0).sqrt()))
        d = (sq - 2 * cand @ cand[i] + sq[i]).clamp_min(0)
        nearest = torch.minimum(nearest, d)
        nearest[i] = -1.0  # never again (distances are >= 0)
    return candidates[torch.tensor(chosen, dtype=torch.long)]


@register("coreset")
def coreset_strategy(ctx: PoolContext, budget: int) -> Selection:
    """k-center greedy on the features, the labeled nodes as the first centers (score: the distance to the
    nearest center when picked)."""
    distances: list[float] = []
    picks = k_center_greedy(ctx.features, ctx.labeled, ctx.pool(), budget, distances=distances)
    return Selection(picks, scores=torch.tensor(distances))


def capped_top(scores: Tensor, classes: Tensor, budget: int, num_classes: int, cap: float) -> Tensor:
    """Indices of the highest ``scores``, at most ``ceil(cap · budget / num_classes)`` per class of ``classes``;
    when the caps leave the budget unfilled, the best remaining scores fill it."""
    order = torch.argsort(scores.cpu(), descending=True, stable=True)
    cls = classes.cpu()[order]
    rank = torch.zeros(len(order), dtype=torch.long)
    for c in range(num_classes):
        members = cls == c
        rank[members] = torch.arange(int(members.sum()))
    limit = math.ceil(cap * budget / num_classes)
    kept = order[rank < limit][:budget]
    if len(kept) < budget:
        rest = order[rank >= limit][: budget - len(kept)]
        kept = torch.cat([kept, rest])
    return kept


def revival_scores(ctx: PoolContext, virtual: Tensor, positions: Tensor | None = None) -> Tensor:
    """KL(q || p(x + r_adv)) for the nodes ``positions`` (default: the pool): q the node's virtual-label
    distribution (a row of ``virtual``), r_adv the virtual adversarial perturbation of its image against q
    (:func:`camssl.losses.vat_perturbation`)."""
    r = ctx.cfg.revival
    pool = ctx.pool() if positions is None else positions
    device = ctx.images.device
    out = []
    was_training = ctx.model.training
    ctx.model.eval()
    for start in range(0, len(pool), ctx.cfg.score_batch_size):
        pos = pool[start : start + ctx.cfg.score_batch_size]
        x = ctx.augmenter.normalize(ctx.images[pos.to(device)])
        q = virtual[pos].to(device)
        r_adv = vat_perturbation(ctx.model, x, xi=r.xi, eps=r.eps, power_iters=r.power_iters,
                                 generator=ctx.generator, target_probs=q)
        with torch.no_grad():
            out.append(kl_from_logits(target_logits(q), ctx.model(x + r_adv)).cpu())
    ctx.model.train(was_training)
    return torch.cat(out)


@register("revival")
def revival_strategy(ctx: PoolContext, budget: int) -> Selection:
    """camssl's REVIVAL: label propagation → virtual labels; VAT against them; the boundary score; a guard."""
    r = ctx.cfg.revival
    prop = ctx.propagation()
    pool = ctx.pool()
    virtual = prop.probs if r.target == "soft" else F.one_hot(prop.labels, ctx.num_classes).float()
    scores = torch.full((len(pool),), -math.inf)
    scored = torch.arange(len(pool))
    if 0 < r.max_scored < len(pool):  # only the least confident virtual labels are perturbed
        scored = torch.argsort(prop.confidence[pool], stable=True)[: max(r.max_scored, budget)]
    scores[scored] = revival_scores(ctx, virtual, pool[scored])
    classes = prop.labels[pool]
    if r.guard == "cap":
        picks = capped_top(scores, classes, budget, ctx.num_classes, r.cap)
    elif r.guard == "kcenter":
        n_cand = min(len(pool), math.ceil(r.candidates * budget))
        top = torch.argsort(scores, descending=True, stable=True)[:n_cand]
        picks = torch.searchsorted(pool, k_center_greedy(ctx.features, ctx.labeled, pool[top], budget))
    else:
        picks = torch.argsort(scores, descending=True, stable=True)[:budget]
    info = {
        "score_mean_scored": float(scores[scored].mean()),
        "scored": len(scored),
        "score_mean_chosen": float(scores[picks].mean()),
        "confidence_mean_pool": float(prop.confidence[pool].mean()),
        "confidence_mean_chosen": float(prop.confidence[pool[picks]].mean()),
        "virtual_class_histogram": torch.bincount(classes[picks], minlength=ctx.num_classes).tolist(),
        "cg_iterations": prop.cg_iterations,
    }
    return Selection(pool[picks], info, scores[picks].float())


def select(name: str, ctx: PoolContext, budget: int) -> Selection:
    """Run strategy ``name`` and check what it returns: ``budget`` distinct pool positions."""
    pool = ctx.pool()
    if not 1 <= budget <= len(pool):
        raise ValueError(f"budget {budget} must be between 1 and the pool size {len(pool)}")
    sel = STRATEGIES[name](ctx, budget)
    pos = sel.positions.cpu().long()
    is_pool = torch.zeros(len(ctx.features), dtype=torch.bool)
    is_pool[pool] = True
    if len(pos) != budget or len(torch.unique(pos)) != budget or not bool(is_pool[pos].all()):
        raise RuntimeError(f"strategy {name!r} returned {len(pos)} positions ({len(torch.unique(pos))} distinct, "
                           f"{int(is_pool[pos].sum())} in the pool); expected {budget} distinct pool nodes")
    if sel.scores is not None and len(sel.scores) != budget:
        raise RuntimeError(f"strategy {name!r} returned {len(sel.scores)} scores for {budget} positions")
    sel.positions = pos
    return sel
