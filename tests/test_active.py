"""Active learning, piece by piece: label propagation on 2-D toys, every strategy on a tiny pool, the
selection checks, REVIVAL's perturbation against the virtual label, and the files oracle's CSV."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from torch import nn

from camssl.active import STRATEGIES, ActiveConfig, knn_graph, label_propagation, pool_context, register, select
from camssl.active.config import load_active_config
from camssl.active.oracle import query_name, read_labels, write_query
from camssl.active.propagation import class_balanced_targets
from camssl.active.strategies import capped_top, k_center_greedy, revival_scores
from camssl.augment import AugmentConfig, Augmenter
from camssl.errors import ConfigError, UserError
from camssl.losses import frozen_bn_stats, kl_from_logits, target_logits, vat_perturbation

torch.set_num_threads(1)


def arcs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two arcs of the unit circle (0-150° and 165-345°), radius jittered: labels follow the arcs."""
    g = np.random.default_rng(seed)
    ta, tb = g.uniform(0, 150, 300), g.uniform(165, 345, 360)
    theta = np.radians(np.concatenate([ta, tb]))
    r = 1 + 0.03 * g.standard_normal(len(theta))
    x = torch.tensor(np.stack([r * np.cos(theta), r * np.sin(theta)], 1), dtype=torch.float32)
    return x, torch.tensor([0] * 300 + [1] * 360)


def test_propagation_follows_the_arcs_from_one_seed_each_where_the_nearest_seed_fails():
    x, y = arcs()
    seeds = torch.tensor([int(torch.argmin(torch.atan2(x[:300, 1], x[:300, 0]))),
                          300 + int(torch.argmin(torch.atan2(x[300:, 1], x[300:, 0]) % (2 * math.pi)))])
    prop = label_propagation(x, seeds, y[seeds], 2, k=20)
    assert float((prop.labels == y).float().mean()) >= 0.97
    nearest = y[seeds][torch.cdist(x, x[seeds]).argmin(1)]
    assert float((nearest == y).float().mean()) < 0.7  # the toy needs the graph: distance to the seeds is not enough
    assert all(0 < it <= 50 for it in prop.cg_iterations)


def blobs(std: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = 5 * torch.tensor([[math.cos(a), math.sin(a)] for a in (0.0, 2.1, 4.2)])
    y = torch.arange(3).repeat_interleave(100)
    return centres[y] + std * torch.randn(300, 2, generator=g), y


def test_propagation_on_gaussian_blobs_labels_and_confidence():
    seeds = torch.tensor([0, 1, 2, 100, 101, 102, 200, 201, 202])
    x, y = blobs(0.8)  # separate blobs: each a component of the graph, reached by its own class only
    prop = label_propagation(x, seeds, y[seeds], 3, k=10)
    assert bool((prop.labels == y).all()) and torch.allclose(prop.confidence, torch.ones(300))
    x, y = blobs(2.0)  # overlapping blobs
    prop = label_propagation(x, seeds, y[seeds], 3, k=10)
    right = prop.labels == y
    assert float(right.float().mean()) >= 0.93
    assert torch.allclose(prop.probs.sum(1), torch.ones(300)) and bool((prop.probs >= 0).all())
    assert float(prop.confidence[right].mean()) > float(prop.confidence[~right].mean()) + 0.1  # 1 - H/log C


def test_graph_is_symmetric_with_zero_diagonal_and_k_capped_for_small_pools():
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(1)).abs()  # all similarities positive
    w = knn_graph(x, k=5, gamma=3.0)
    assert abs(w - w.T).max() < 1e-12 and w.diagonal().max() == 0 and w.min() >= 0
    assert (np.diff(w.indptr) >= 5).all()  # every node keeps at least its own k neighbours
    assert knn_graph(x[:4], k=50).nnz == 12  # k capped at N - 1: a complete graph
    assert knn_graph(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]), k=2).nnz == 0  # weights max(s, 0)^gamma


def test_class_balanced_targets_give_every_class_the_same_mass():
    y = class_balanced_targets(torch.tensor([0, 1, 2, 5]), torch.tensor([0, 0, 0, 1]), 6, 2)
    assert np.allclose(y.sum(0), [1.0, 1.0]) and np.isclose(y[5, 1], 1.0) and np.isclose(y[0, 0], 1 / 3)


# ---------------------------------------------------------------- strategies on a tiny pool


class TinyNet(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(self.body(x))


def tiny_context(seed: int = 0, **revival) -> tuple:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (60, 3, 8, 8), dtype=torch.uint8, generator=g)
    labeled = torch.tensor([0, 5, 10, 15, 20, 25, 30, 35])
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    cfg = ActiveConfig(score_batch_size=16)
    for k, v in revival.items():
        setattr(cfg.revival, k, v)
    model = TinyNet().eval()
    ctx = pool_context(model, images, labeled, labels, 4, Augmenter(AugmentConfig()), cfg,
                       torch.Generator().manual_seed(seed))
    return ctx, model


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_queries_exactly_budget_distinct_pool_images(name):
    ctx, _ = tiny_context()
    sel = select(name, ctx, 10)
    chosen = sel.positions.tolist()
    assert len(chosen) == 10 == len(set(chosen)) and not set(chosen) & set(ctx.labeled.tolist())
    assert set(chosen) <= set(ctx.pool().tolist())
    again, _ = tiny_context()
    assert select(name, again, 10).positions.tolist() == chosen  # the same seed chooses the same images


def test_random_depends_on_the_seed_and_entropy_and_coreset_match_brute_force():
    a, b = tiny_context(0), tiny_context(1)
    assert select("random", a[0], 10).positions.tolist() != select("random", b[0], 10).positions.tolist()
    ctx, _ = tiny_context()
    pool = ctx.pool()
    p = ctx.logits[pool].softmax(1)
    ent = -(p * p.log()).sum(1)
    assert set(select("entropy", ctx, 10).positions.tolist()) == set(pool[ent.topk(10).indices].tolist())
    # k-center: each pick is the pool node farthest from the labeled nodes and the earlier picks
    picks = select("coreset", ctx, 5).positions.tolist()
    centres = ctx.labeled.tolist()
    for pick in picks:
        rest = [i for i in pool.tolist() if i not in centres]
        d = torch.cdist(ctx.features[rest], ctx.features[centres]).min(1).values
        assert pick == rest[int(d.argmax())]
        centres.append(pick)


def test_k_center_greedy_on_points_of_a_line():
    f = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    assert k_center_greedy(f, torch.tensor([0]), torch.tensor([1, 2, 3, 4]), 3).tolist() == [4, 3, 1]  # 1 and 2 tie at distance 1: the earlier


def test_cap_guard_limits_each_virtual_class_and_fills_up_when_classes_run_out():
    scores = torch.tensor([9.0, 8, 7, 6, 5, 4, 3, 2])
    classes = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    assert capped_top(scores, classes, 4, 4, 1.0).tolist() == [0, 4, 6, 1]  # at most ceil(4/4) = 1 per class, then fill
    assert capped_top(scores, classes, 3, 3, 1.0).tolist() == [0, 4, 6]
    ctx, _ = tiny_context(guard="cap", cap=1.0)
    sel = select("revival", ctx, 8)
    assert max(sel.info["virtual_class_histogram"]) <= 2 or len(set(ctx.propagation().labels[ctx.pool()].tolist())) < 4


def test_revival_perturbation_is_adversarial_to_the_virtual_label():
    ctx, model = tiny_context()
    pool = ctx.pool()
    q = ctx.propagation().probs
    scores = revival_scores(ctx, q)
    x = ctx.augmenter.normalize(ctx.images[pool])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    noise = 6.0 * noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    with torch.no_grad(), frozen_bn_stats(model):
        at_random = kl_from_logits(target_logits(q[pool]), model(x + noise))
    assert float(scores.mean()) > float(at_random.mean())  # the power iteration found a worse direction than chance
    sel = select("revival", *tiny_context()[:1], 10)
    assert sel.info["score_mean_chosen"] >= sel.info["score_mean_scored"]
    ctx_hard, _ = tiny_context(target="hard", guard="none", max_scored=20)
    hard = select("revival", ctx_hard, 10)
    assert hard.info["scored"] == 20 and set(hard.positions.tolist()) <= set(ctx_hard.pool().tolist())


def test_vat_perturbation_with_a_target_distribution_ignores_the_model_prediction():
    model = TinyNet().eval()
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    q = torch.softmax(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), 1)
    a = vat_perturbation(model, x, generator=torch.Generator().manual_seed(2), target_probs=q)
    b = vat_perturbation(model, x, torch.zeros(6, 4), generator=torch.Generator().manual_seed(2), target_probs=q)
    assert torch.equal(a, b) and torch.allclose(a.flatten(1).norm(dim=1), torch.full((6,), 6.0), atol=1e-4)
    c = vat_perturbation(model, x, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(a, c)  # against p(x) it is another direction


def test_select_refuses_a_strategy_that_returns_labeled_or_repeated_images():
    @register("broken-for-test")
    def broken(ctx, budget):
        from camssl.active.strategies import Selection

        return Selection(torch.cat([ctx.labeled[:1], ctx.pool()[: budget - 1]]))

    try:
        with pytest.raises(RuntimeError, match="expected 5 distinct pool nodes"):
            select("broken-for-test", tiny_context()[0], 5)
    finally:
        del STRATEGIES["broken-for-test"]


def test_unknown_strategy_and_bad_active_values_are_config_errors():
    with pytest.raises(ConfigError, match="unknown strategy 'bald'; choose one of: random, entropy, coreset, revival"):
        load_active_config("demo", ["active.strategy=bald"])
    with pytest.raises(ConfigError, match="active.revival.alpha"):
        load_active_config("demo", ["active.revival.alpha=1.5"])
    cfg, acfg = load_active_config("active-cpu", ["active.revival.k=20", "optim.lr=0.05"], {"budget": 100})
    assert (acfg.revival.k, acfg.budget, cfg.optim.lr, cfg.method.name) == (20, 100, 0.05, "pseudo_label")


# ---------------------------------------------------------------- the files oracle's CSV


def test_files_oracle_csv_round_trip_and_its_errors(tmp_path):
    images = torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    index, classes = [7, 3, 12], ["cat", "dog"]
    path = write_query(tmp_path, 1, index, images)
    rows = list(csv.DictReader(path.open()))
    assert [r["file"] for r in rows] == [query_name(i) for i in index] and all(r["label"] == "" for r in rows)
    assert sorted(p.name for p in (tmp_path / "queries" / "cycle_1").iterdir()) == sorted(query_name(i) for i in index)

    def fill(labels, extra=()):
        with path.open("w") as f:
            f.write("file,label\n" + "".join(f"{query_name(i)},{y}\n" for i, y in zip(index, labels)) +
                    "".join(extra))

    with pytest.raises(UserError, match="3 of the 3 queried images .* have no label yet"):
        read_labels(path, index, classes)
    fill(["dog", "cat", "dog"])
    assert read_labels(path, index, classes).tolist() == [1, 0, 1]
    fill(["dog", "cat", "dog"], ["000099.png,cat\n"])
    with pytest.raises(UserError, match="line 5: unknown file '000099.png'"):
        read_labels(path, index, classes)
    fill(["dog", "cow", "dog"])
    with pytest.raises(UserError, match="line 3: unknown class 'cow' .*valid classes: cat, dog"):
        read_labels(path, index, classes)
    fill(["dog", "cat", "dog"], [f"{query_name(7)},cat\n"])
    with pytest.raises(UserError, match="listed twice"):
        read_labels(path, index, classes)
