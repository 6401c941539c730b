"""The fast regime's pieces, each usable with any backbone: the strong-view policy, FixMatch's loss, the EMA and
Lookahead, decoupled hyper-parameters, test-time augmentation, and airnet's data-dependent whitening."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camssl.augment import AugmentConfig, Augmenter
from camssl.config import load_config
from camssl.data import load_data
from camssl.methods import METHODS, StepContext
from camssl.train import EMA, Trainer
from camssl.train.evaluate import tta_logits
from camssl.train.schedule import param_groups

TINY = {"model.width": 0.125, "optim.epochs": 1, "optim.steps_per_epoch": 2, "split.n_labeled": 100,
        "optim.batch_size": 16, "cam_grid": False, "device": "cpu", "amp": False}


@pytest.fixture(scope="module")
def mini():
    return load_data(load_config("demo").data)


def _trainer(tmp_path, mini, **over) -> Trainer:
    torch.manual_seed(0)
    return Trainer(load_config("demo", {**TINY, **over}), tmp_path / "run", data=mini, log=lambda _: None)


def test_auto_strong_policy_is_the_methods_and_can_be_overridden(tmp_path, mini):
    assert METHODS["fixmatch"].strong_policy == "randaugment"
    assert _trainer(tmp_path, mini, **{"method.name": "fixmatch"}).augmenter.strong_policy == "randaugment"
    assert _trainer(tmp_path, mini, **{"method.name": "pseudo_label"}).augmenter.strong_policy == "camssl"
    forced = _trainer(tmp_path, mini, **{"method.name": "fixmatch", "augment.strong.policy": "camssl"})
    assert forced.augmenter.strong_policy == "camssl"


def test_fixmatch_loss_is_the_masked_hard_cross_entropy(tmp_path, mini):
    t = _trainer(tmp_path, mini, **{"method.name": "fixmatch"})
    batch = t.next_batch()
    net = t.net.train()
    method = t.method
    with torch.no_grad():  # a threshold that keeps about half of this batch
        weak = StepContext(net, t.augmenter, torch.Generator().manual_seed(3), 1.0).ssl_views(batch, "weak")[1]
        method.cfg.pseudo.threshold = float(F.softmax(net(weak.images).float(), 1).max(1).values.median())
    ctx = StepContext(net, t.augmenter, torch.Generator().manual_seed(3), epoch=1.0)
    out = method.step(ctx, batch)
    # the same views (same generator draws), computed by hand
    ctx2 = StepContext(net, t.augmenter, torch.Generator().manual_seed(3), epoch=1.0)
    labeled, weak, strong = ctx2.ssl_views(batch, "weak")
    with torch.no_grad():
        probs = F.softmax(net(weak.images).float(), 1)
    logits = net(torch.cat([labeled.images, strong.images]))
    n = len(batch.x_l)
    mask = probs.max(1).values >= method.cfg.pseudo.threshold
    loss_u = (F.cross_entropy(logits[n:], probs.argmax(1), reduction="none") * mask).mean()
    loss = F.cross_entropy(logits[:n], batch.y_l) + loss_u
    assert 0 < float(mask.float().mean()) < 1
    assert torch.allclose(out.loss, loss, rtol=1e-5) and torch.allclose(out.metrics["loss_p"], loss_u, rtol=1e-5)


def test_grad_cam_consistency_on_fixmatch_is_a_configuration(tmp_path, mini):
    t = _trainer(tmp_path, mini, **{"method.name": "fixmatch", "method.gradcam.weight": 1.0,
                                    "method.gradcam.layers": ["layer3"], "method.pseudo.threshold": 0.0})
    result = t.fit()
    record = t.state.history[-1]
    assert "loss_g" in record and record["loss_g"] > 0 and math.isfinite(result["test_acc"])
    assert "loss_g" in t.method.log_metrics


def test_ema_every_cubic_ramp_and_lookahead():
    model = nn.Linear(3, 2)
    ema = EMA(model, 0.5, every=5, ramp="cubic", lookahead=True, total_steps=10)
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, 3)  # not a multiple of 5: nothing happens
    assert torch.equal(ema.module.weight, before)
    ema.update(model, 5)  # decay 0.5 * (5/10)^3 = 0.0625
    expected = 0.0625 * before + 0.9375 * (before + 1.0)
    assert torch.allclose(ema.module.weight, expected) and torch.equal(model.weight, ema.module.weight)  # lookahead
    assert ema.decay_at(10) == 0.5 and EMA(model, 0.9).decay_at(1) == 0.9


def test_decoupled_hyper_parameters_and_bn_bias_scale():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    o = load_config("demo", {"optim.decoupled": True, "optim.lr": 11.5, "optim.weight_decay": 0.0153,
                             "optim.momentum": 0.85, "optim.batch_size": 1024, "optim.bias_lr_scale": 64.0}).optim
    groups = param_groups(net, o)
    k = 1024 * (1 + 1 / (1 - 0.85))
    lr, decay = 11.5 * 1024 / k, 0.0153 * 1024 / k  # airbench94's step and decay per step
    bias = next(g for g in groups if any(p is net[1].bias for p in g["params"]))
    other = next(g for g in groups if any(p is net[0].weight for p in g["params"]))
    assert math.isclose(other["base_lr"], lr) and math.isclose(other["base_lr"] * other["weight_decay"], decay)
    assert math.isclose(bias["base_lr"], 64 * lr) and math.isclose(bias["base_lr"] * bias["weight_decay"], decay)
    plain = param_groups(net, load_config("demo").optim)
    assert len(plain) == 1 and plain[0]["base_lr"] == 0.1 and plain[0]["weight_decay"] == 5e-4


def test_test_time_augmentation_levels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.Flatten(), nn.LazyLinear(4)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        plain = model(x)
        mirror = 0.5 * (model(x) + model(x.flip(-1)))
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        a, b = padded[..., :8, :8], padded[..., 2:, 2:]
        six = 0.5 * mirror + 0.25 * (0.5 * (model(a) + model(a.flip(-1))) + 0.5 * (model(b) + model(b.flip(-1))))
        assert torch.equal(tta_logits(model, x, 0), plain)
        assert torch.allclose(tta_logits(model, x, 1), mirror)
        assert torch.allclose(tta_logits(model, x, 2), six, atol=1e-6)


def test_validation_can_skip_the_test_time_augmentation_that_the_test_uses(tmp_path, mini, monkeypatch):
    import camssl.train.loop as loop

    seen = []
    real = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", lambda *a, tta, **k: seen.append(tta) or real(*a, tta=tta, **k))
    t = _trainer(tmp_path, mini, eval_tta=2, val_tta=0)
    t.validate(), t.test(t.net)
    assert seen == [0, 2]
    seen.clear()
    t = _trainer(tmp_path, mini, eval_tta=1)  # val_tta unset: validation follows eval_tta
    t.validate(), t.test(t.net)
    assert seen == [1, 1]


def test_airnet_whitening_is_set_from_training_images_and_its_bias_freezes(tmp_path, mini):
    t = _trainer(tmp_path, mini, **{"model.name": "airnet", "model.pool": "avg", "model.whiten_bias_epochs": 1,
                                    "optim.epochs": 2})
    w = t.net.whiten.conv.weight.detach()
    fresh = _trainer(tmp_path, mini, **{"model.name": "airnet", "model.pool": "avg", "model.data_init": False})
    assert not torch.allclose(w, fresh.net.whiten.conv.weight)  # data init replaced the dirac init
    assert torch.allclose(w[:12], -w[12:])  # airbench: the eigen-filters and their negatives
    bias0 = t.net.whiten.conv.bias.detach().clone()
    t.fit()
    assert t.net.whiten.conv.bias.requires_grad is False  # frozen from epoch 2 on
    assert not torch.equal(bias0, t.net.whiten.conv.bias)  # it trained in epoch 1
    assert torch.equal(w, t.net.whiten.conv.weight)  # the filters never train


def test_randaugment_view_carries_maps_like_every_view():
    aug = Augmenter(AugmentConfig(), method_policy="randaugment")
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    v = aug.strong(x, torch.Generator().manual_seed(0))
    assert v.images.shape == (4, 3, 32, 32) and v.theta.shape == (4, 2, 3) and v.flip.shape == (4,)
    again = aug.strong(x, torch.Generator().manual_seed(0))
    assert torch.equal(v.images, again.images) and torch.equal(v.theta, again.theta)


def test_flexmatch_thresholds_follow_the_published_formula():
    from camssl.methods.flex import FlexState, flex_thresholds
    from camssl.methods.parts import pseudo_labels

    counts = torch.tensor([4, 2, 0])
    # warm-up: β_c = σ_c / max(max σ, unused) = [0.4, 0.2, 0]; T = τ β / (2 − β)
    assert torch.allclose(flex_thresholds(counts, 10, 0.9), 0.9 * torch.tensor([0.4 / 1.6, 0.2 / 1.8, 0.0]))
    # no warm-up: β_c = σ_c / max σ = [1, 0.5, 0]
    assert torch.allclose(flex_thresholds(counts, 10, 0.9, warmup=False), torch.tensor([0.9, 0.3, 0.0]))

    state = FlexState(n_train=8, unlabeled=torch.tensor([1, 2, 3, 5, 6]), num_classes=3, device="cpu")
    assert torch.equal(state.thresholds(0.9), torch.zeros(3))  # nothing has passed yet: every threshold 0
    probs = torch.tensor([[0.95, 0.05, 0.0], [0.5, 0.5, 0.0], [0.02, 0.97, 0.01]])
    state.update(torch.tensor([1, 2, 3]), probs, 0.9, step=0)  # rows 1 (class 0) and 3 (class 1) pass τ
    state.update(torch.tensor([5]), torch.tensor([[0.0, 0.05, 0.95]]), 0.9, step=1)  # row 5: class 2
    state.update(torch.tensor([1]), torch.tensor([[0.0, 0.99, 0.01]]), 0.9, step=2)  # row 1 is now class 1
    # σ = [0, 2, 1], unused = 2 of the 5 unlabeled rows: β = [0, 1, 0.5]
    assert torch.allclose(state.thresholds(0.9), torch.tensor([0.0, 0.9, 0.3]))
    # confidences (softmax of a 3 or 2 among zeros): 0.91, 0.79, 0.91, 0.79; thresholds [0, 0.9, 0.3] by class
    logits = torch.tensor([[0.0, 3.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [2.0, 0.0, 0.0]])
    pl = pseudo_labels(logits, state.thresholds(0.9))
    assert torch.equal(pl.classes, torch.tensor([1, 1, 2, 0]))
    assert pl.mask.tolist() == [True, False, True, True]


def test_a_flexmatch_step_uses_the_class_thresholds(tmp_path, mini):
    """At the start nothing has passed τ, so every FlexMatch threshold is 0 and every image is used."""
    over = {"method.name": "fixmatch", "method.pseudo.threshold": 0.95}
    for flex, expect_all in ((False, False), (True, True)):
        t = _trainer(tmp_path, mini, **over, **{"method.pseudo.flex": flex})
        out = t.method.step(StepContext(t.net.train(), t.augmenter, torch.Generator().manual_seed(0), 0.0),
                            t.next_batch())
        assert (float(out.metrics["mask_rate"]) == 1.0) == expect_all
