"""The Grad-CAM consistency loss L_G: alignment, gradient flow, ablation identity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camssl.augment import AugmentConfig, Augmenter
from camssl.cam import grad_cam
from camssl.config import method_config
from camssl.losses import aligned_maps, map_distance
from camssl.methods import METHODS, Batch, StepContext
from conftest import tiny_batch, tiny_ctx


class PointwiseNet(nn.Module):
    """A model whose Grad-CAM maps are exactly equivariant to pixel permutations.

    layer1 = 1x1 conv + ReLU, layer2 = 1x1 conv (linear), then GAP + fc. At layer2
    (the closed-form layer) the map is a per-pixel function of the input; at layer1 the
    Grad-CAM weights are constants (everything after it is linear), so that map is
    per-pixel too. Flips and whole-pixel crops therefore commute with the maps.
    """

    stages = ("layer1", "layer2")
    cam_layer = "layer2"

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU())
        self.layer2 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x, taps=None):
        a1 = self.layer1(x)
        a2 = self.layer2(a1)
        logits = self.fc(a2.mean((2, 3)))
        if taps is None:
            return logits
        return logits, {k: {"layer1": a1, "layer2": a2}[k] for k in taps}


def smooth_images(b: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    imgs = []
    for _ in range(b):
        cx, cy, s = torch.rand(3, generator=g)
        blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.02 + 0.1 * s))
        ramp = xx * torch.rand(1, generator=g)
        imgs.append(torch.stack([blob, ramp, blob * (1 - yy)]))
    return (torch.stack(imgs) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("layer", ["layer1", "layer2"])
@pytest.mark.parametrize("norm", ["max", "minmax", "l2"])
def test_equivariant_model_gives_zero_loss_under_flips_and_crops(layer, norm):
    torch.manual_seed(0)
    model = PointwiseNet()
    aug = Augmenter(AugmentConfig())
    x = smooth_images()
    gen = torch.Generator().manual_seed(1)
    anchor = aug.original(x)
    view = aug.weak(x, gen)  # random flips and whole-pixel crops (reflection padding)
    assert view.flip.any() and not view.flip.all()

    logits_a, feats_a = model(anchor.images, taps=[layer])
    classes = logits_a.argmax(1)
    maps_a = grad_cam(logits_a, feats_a, classes, model=model)[layer].detach()
    logits_v, feats_v = model(view.images, taps=[layer])
    maps_v = grad_cam(logits_v, feats_v, classes, model=model)[layer]
    target, pred, valid = aligned_maps(maps_a, maps_v, anchor.theta, view.theta, (32, 32))
    assert valid.mean() < 1.0  # the crops really cut something away
    loss = map_distance(target, pred, valid, norm, "mse")
    scale = map_distance(torch.zeros_like(target), pred, valid, norm, "mse")
    loss, scale = loss.detach(), scale.detach()
    assert float(loss.max()) < 1e-9 * max(1.0, float(scale.max()))
    assert float(scale.min()) > 0

    # the same maps compared without carrying them through the geometry do not agree
    unaligned = map_distance(F.interpolate(maps_a[:, None], size=(32, 32), mode="bilinear"), pred,
                             torch.ones_like(valid), norm, "mse")
    assert float(unaligned.detach().mean()) > 1e3 * float(loss.mean()) + 1e-6


def test_equivariance_through_the_method_step(monkeypatch):
    torch.manual_seed(0)
    model = PointwiseNet()
    aug = Augmenter(AugmentConfig())
    monkeypatch.setattr(aug, "strong", aug.weak)  # flips + whole-pixel crops as the "strong" view
    method = METHODS["gradcam"](method_config("gradcam", gradcam={"layers": ["layer1", "layer2"]}))
    x = smooth_images(8)
    ctx = StepContext(model=model, augmenter=aug, generator=torch.Generator().manual_seed(3), epoch=1.0)
    out = method.step(ctx, Batch(x[:4], torch.arange(4), x, torch.zeros(8, dtype=torch.long)))
    assert float(out.metrics["loss_g"]) < 1e-9


def test_gamma_zero_is_exactly_the_pseudo_label_ablation():
    model, ctx = tiny_ctx()
    out_g = METHODS["gradcam"](method_config("gradcam", gradcam={"weight": 0.0})).step(ctx, tiny_batch())
    out_g.loss.backward()
    grads_g = [p.grad.clone() for p in model.parameters()]
    model2, ctx2 = tiny_ctx()
    out_p = METHODS["pseudo_label"](method_config("pseudo_label")).step(ctx2, tiny_batch())
    out_p.loss.backward()
    assert torch.allclose(out_g.loss, out_p.loss, atol=1e-6)
    for a, b in zip(grads_g, [p.grad for p in model2.parameters()]):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("mode, fc_moves", [("full", True), ("detach-weights", False)])
def test_loss_g_reaches_the_right_parameters(mode, fc_moves):
    model, ctx = tiny_ctx()
    cfg = method_config("gradcam", alpha=0.0, pseudo={"weight": 0.0},
                        gradcam={"weight": 1.0, "layers": ["layer3"], "grad_mode": mode})
    out = METHODS["gradcam"](cfg).step(ctx, tiny_batch())
    assert float(out.metrics["loss_g"]) > 0
    out.loss.backward()
    assert model.layer2[0].conv1.weight.grad.abs().sum() > 0  # before the target layer
    after = model.layer4[0].conv1.weight.grad
    assert (after is not None and after.abs().sum() > 0) == fc_moves  # after it: only in full mode


def test_threshold_masks_l_p_and_l_g_and_rampup():
    model, ctx = tiny_ctx()
    cfg = method_config("gradcam", pseudo={"threshold": 0.999})  # an untrained net is never this sure
    out = METHODS["gradcam"](cfg).step(ctx, tiny_batch())
    assert float(out.metrics["mask_rate"]) == 0.0
    assert float(out.metrics["loss_p"]) == 0.0 and float(out.metrics["loss_g"]) == 0.0
    # γ ramps up linearly over gradcam.ramp_epochs, and the step's loss uses γ(t)
    method = METHODS["gradcam"](method_config("gradcam", gradcam={"weight": 2.0, "ramp_epochs": 4}))
    for epoch, gamma in ((0.0, 0.0), (1.0, 0.5), (10.0, 2.0)):
        _, ctx = tiny_ctx(epoch=epoch)
        out = method.step(ctx, tiny_batch())
        assert float(out.metrics["gamma"]) == gamma
        expected = out.metrics["loss_s"] + out.metrics["loss_p"] + gamma * out.metrics["loss_g"]
        assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-6)


def test_map_diagnostics_on_known_cases(monkeypatch):
    from camssl.viz import map_diagnostics

    torch.manual_seed(0)
    model = PointwiseNet()
    aug = Augmenter(AugmentConfig())
    monkeypatch.setattr(aug, "strong", aug.weak)  # exactly equivariant maps under these views
    x = smooth_images(8)
    d = map_diagnostics(model, x, aug, "layer2")
    assert d["map_agreement"] > 0.999 and d["blank_maps"] == 0.0
    with torch.no_grad():  # a classifier whose every class score falls with every feature: all maps blank
        model.layer2.weight.abs_()
        model.layer2.bias.fill_(1.0)
        model.fc.weight.copy_(-model.fc.weight.abs())
    d = map_diagnostics(model, x, aug, "layer2")
    assert d["blank_maps"] == 1.0 and d["map_agreement"] == 0.0
