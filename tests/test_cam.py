"""Tests of camssl.cam: batched Grad-CAM against captum, closed form, gradient modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from torch import Tensor, nn

from camssl.cam import (
    GRAD_MODES,
    NORMALIZATIONS,
    cam,
    grad_cam,
    grad_cam_model,
    normalize_maps,
    upsample_maps,
)
from camssl.errors import ConfigError
from camssl.models import CamNet, build_model

MODELS = [("resnet18", 0.25), ("wrn28_2", 0.5)]
BATCH, NUM_CLASSES, SIZE = 4, 10, 32


def make_model(name: str, width: float, *, seed: int = 0) -> CamNet:
    """A float64 model with random weights and random BatchNorm affine parameters/statistics."""
    torch.manual_seed(seed)
    model = build_model(name, num_classes=NUM_CLASSES, width=width).double()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def make_batch(seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(BATCH, 3, SIZE, SIZE, generator=generator, dtype=torch.float64)
    classes = torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator)
    return images, classes


def rel_err(actual: Tensor, expected: Tensor) -> float:
    scale = expected.abs().max()
    assert scale > 0, "reference is all zero: the comparison would be vacuous"
    return ((actual - expected).abs().max() / scale).item()


def param_grads(loss: Tensor, model: nn.Module) -> dict[str, Tensor]:
    """d loss / d parameter for every parameter, zeros where the loss does not depend on it."""
    named = list(model.named_parameters())
    grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True, allow_unused=True)
    return {name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(named, grads)}


def captum_maps(model: CamNet, layer: str, images: Tensor, classes: Tensor) -> Tensor:
    explainer = LayerGradCam(model, model.get_submodule(layer))
    return explainer.attribute(images, target=classes, relu_attributions=True).squeeze(1)


# ---------------------------------------------------------------- captum oracle


@pytest.mark.parametrize("closed_form", [True, False])
@pytest.mark.parametrize(("name", "width"), MODELS)
def test_matches_captum_every_stage_eval(name: str, width: float, closed_form: bool) -> None:
    model = make_model(name, width)
    images, classes = make_batch()
    assert not torch.equal(classes, model(images).argmax(1))  # not just the predictions
    logits, feats = model(images, taps=model.stages)
    maps = grad_cam(logits, feats, classes, model=model, closed_form=closed_form)
    assert list(maps) == list(model.stages)
    for layer in model.stages:
        expected = captum_maps(model, layer, images, classes)
        assert maps[layer].shape == expected.shape == feats[layer].shape[:1] + feats[layer].shape[2:]
        assert maps[layer].dtype == torch.float64
        assert rel_err(maps[layer], expected) <= 1e-5, layer


@pytest.mark.parametrize(("name", "width"), MODELS)
def test_matches_captum_train_mode(name: str, width: float) -> None:
    model = make_model(name, width).train()
    images, classes = make_batch(seed=2)
    logits, feats = model(images, taps=model.stages)
    maps = grad_cam(logits, feats, classes, mode="detach-weights", model=model)
    for layer in model.stages:  # captum's own forward sees the same batch -> the same batch statistics
        assert rel_err(maps[layer], captum_maps(model, layer, images, classes)) <= 1e-5, layer


# ---------------------------------------------------------------- closed form


@pytest.mark.parametrize("mode", GRAD_MODES)
@pytest.mark.parametrize(("name", "width"), MODELS)
def test_closed_form_equals_autograd_route(name: str, width: float, mode: str) -> None:
    model = make_model(name, width).train()
    images, classes = make_batch(seed=3)
    logits, feats = model(images, taps=[model.cam_layer])
    closed = grad_cam(logits, feats, classes, mode=mode, model=model)[model.cam_layer]
    autograd = grad_cam(logits, feats, classes, mode=mode, model=model, closed_form=False)[model.cam_layer]
    assert rel_err(closed, autograd) <= 1e-6

    weights = torch.rand(closed.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads_closed = param_grads((closed * weights).sum(), model)
    grads_autograd = param_grads((autograd * weights).sum(), model)
    for param_name, grad in grads_autograd.items():
        torch.testing.assert_close(grads_closed[param_name], grad, rtol=1e-6, atol=1e-9 * grad.abs().max().item())
    # the classifier is trained through alpha = W[c] / hw in full mode only
    assert (grads_closed["fc.weight"].abs().sum() > 0) == (mode == "full")
    assert grads_closed["layer3.0.conv1.weight"].abs().sum() > 0


def test_closed_form_needs_no_backward_and_sees_through_wrappers() -> None:
    model = make_model("resnet18", 0.25)
    images, classes = make_batch()
    logits, feats = model(images, taps=["layer4"])
    expected = grad_cam(logits, feats, classes, model=model, closed_form=False)["layer4"]
    detached = {"layer4": feats["layer4"].detach()}  # no graph: only the closed form can work
    for wrapper in (model, nn.DataParallel(model)):
        maps = grad_cam(logits.detach(), detached, classes, model=wrapper)
        assert rel_err(maps["layer4"], expected) <= 1e-12
    with pytest.raises(ValueError, match="autograd graph"):
        grad_cam(logits.detach(), detached, classes, model=model, closed_form=False)
    with pytest.raises(ValueError, match="autograd graph"):
        grad_cam(logits.detach(), detached, classes)  # without model there is no closed form


def test_cam_is_class_activation_map() -> None:
    model = make_model("resnet18", 0.25)
    images, classes = make_batch()
    _, feats = model(images, taps=["layer4"])
    maps = cam(feats["layer4"], model.fc.weight, classes)
    expected = torch.stack([torch.einsum("k,khw->hw", model.fc.weight[c], a) for c, a in zip(classes, feats["layer4"])])
    torch.testing.assert_close(maps, expected)
    assert (maps < 0).any()  # plain CAM: no ReLU


# ---------------------------------------------------------------- gradient modes


def _reference_maps(logits: Tensor, feat: Tensor, classes: Tensor, *, create_graph: bool) -> Tensor:
    score = logits.gather(1, classes[:, None]).sum()
    alpha = torch.autograd.grad(score, feat, retain_graph=True, create_graph=create_graph)[0].mean(dim=(2, 3))
    return F.relu((alpha[:, :, None, None] * feat).sum(1))


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("mode", ["full", "detach-weights"])
def test_grad_mode_decides_whether_layers_after_target_train(mode: str, train: bool) -> None:
    """full: the maps train the layers after the target too; detach-weights: they stop at it."""
    model = make_model("resnet18", 0.25).train(train)
    images, classes = make_batch()
    logits, feats = model(images, taps=["layer3"])
    maps = grad_cam(logits, feats, classes, mode=mode, model=model)["layer3"]
    reference = _reference_maps(logits, feats["layer3"], classes, create_graph=mode == "full")
    assert rel_err(maps, reference) <= 1e-12

    weights = torch.rand(maps.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = param_grads((maps * weights).sum(), model)
    reference_grads = param_grads((reference * weights).sum(), model)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name])
        after_target = name.startswith(("layer4", "fc"))
        if mode == "detach-weights" and after_target:
            assert grad.abs().sum() == 0, name
        elif not after_target or name.endswith("weight"):
            assert grad.abs().sum() > 0, name
    if mode == "full":
        # alpha depends on the weights after the target layer, not on the classifier's bias
        # (nor, in eval mode, on BatchNorm biases: the network is piecewise linear)
        assert grads["fc.bias"].abs().sum() == 0


def test_full_and_detach_weights_give_the_same_maps() -> None:
    model = make_model("wrn28_2", 0.5)
    images, classes = make_batch()
    logits, feats = model(images, taps=model.stages)
    full = grad_cam(logits, feats, classes, mode="full", model=model)
    detached = grad_cam(logits, feats, classes, mode="detach-weights", model=model)
    for layer in model.stages:
        torch.testing.assert_close(full[layer], detached[layer], rtol=0, atol=0)


# ---------------------------------------------------------------- batching and side effects


@pytest.mark.parametrize(("name", "width"), MODELS)
def test_several_layers_in_one_autograd_call(name: str, width: float, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model(name, width)
    images, classes = make_batch()
    logits, feats = model(images, taps=model.stages)
    calls = []
    real_grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *args, **kwargs: calls.append(1) or real_grad(*args, **kwargs))
    together = grad_cam(logits, feats, classes, model=model)
    assert len(calls) == 1  # three autograd stages, one call; the cam_layer needs none
    for layer in model.stages:
        alone = grad_cam(logits, {layer: feats[layer]}, classes, model=model)[layer]
        torch.testing.assert_close(together[layer], alone, rtol=0, atol=0)


@pytest.mark.parametrize("mode", GRAD_MODES)
def test_no_grad_leak_and_no_batchnorm_update_in_train_mode(mode: str) -> None:
    model = make_model("resnet18", 0.25).train()
    images, classes = make_batch()
    logits, feats = model(images, taps=model.stages)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    maps = grad_cam(logits, feats, classes, mode=mode, model=model)
    assert all(p.grad is None for p in model.parameters())
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    # the forward graph is retained: the training loss can still be back-propagated
    (F.cross_entropy(logits, classes) + sum(m.sum() for m in maps.values())).backward()
    assert model.fc.weight.grad is not None


def test_grad_cam_model_eval_no_grad_frozen() -> None:
    model = make_model("resnet18", 0.25)
    images, classes = make_batch()
    logits, feats = model(images, taps=["layer2", "layer4"])
    expected = grad_cam(logits, feats, logits.argmax(1), model=model)
    for param in model.parameters():
        param.requires_grad_(False)
    with torch.no_grad():
        out_logits, maps = grad_cam_model(model, images, ["layer2", "layer4"])
    torch.testing.assert_close(out_logits, logits.detach())
    assert not out_logits.requires_grad
    for layer in ("layer2", "layer4"):
        assert not maps[layer].requires_grad
        torch.testing.assert_close(maps[layer], expected[layer].detach())
    _, maps = grad_cam_model(model, images, "layer3", classes)
    torch.testing.assert_close(maps["layer3"], captum_maps(model, "layer3", images, classes))
    _, maps = grad_cam_model(model, images, "layer3", 7)
    torch.testing.assert_close(maps["layer3"], captum_maps(model, "layer3", images, torch.full((BATCH,), 7)))


def test_autocast_maps_are_float32() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=NUM_CLASSES, width=0.25).eval()
    images, classes = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, feats = model(images.float(), taps=["layer3", "layer4"])
        maps = grad_cam(logits, feats, classes, model=model)
    assert feats["layer3"].dtype == torch.bfloat16
    for layer, m in maps.items():
        assert m.dtype == torch.float32 and torch.isfinite(m).all(), layer


# ---------------------------------------------------------------- errors


def test_invalid_arguments() -> None:
    model = make_model("resnet18", 0.25)
    images, classes = make_batch()
    logits, feats = model(images, taps=["layer3"])
    with pytest.raises(ConfigError, match="full, detach-weights"):
        grad_cam(logits, feats, classes, mode="detach")
    with pytest.raises(ConfigError, match="full, detach-weights"):
        grad_cam_model(model, images, "layer3", mode="partial")
    with pytest.raises(ConfigError, match="layer 'fc'"):
        grad_cam(logits, {"fc": logits}, classes)
    with pytest.raises(ConfigError, match="unknown layer"):
        grad_cam_model(model, images, "layer9")
    with pytest.raises(ValueError, match="classes"):
        grad_cam(logits, feats, classes[:2])
    with pytest.raises(ValueError, match="classes"):
        grad_cam(logits, feats, classes.double())
    with torch.no_grad():
        logits, feats = model(images, taps=["layer3"])
    with pytest.raises(ValueError, match="autograd graph"):
        grad_cam(logits, feats, classes)


# ---------------------------------------------------------------- map utilities


def _maps(seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.relu(torch.randn(3, 2, 5, 6, generator=generator))


def test_normalize_maps_ranges() -> None:
    maps = _maps()
    spatial = (-2, -1)
    out = normalize_maps(maps, "max")
    torch.testing.assert_close(out.amax(dim=spatial), torch.ones(3, 2))
    assert out.min() >= 0
    out = normalize_maps(maps - 0.3, "minmax")
    torch.testing.assert_close(out.amin(dim=spatial), torch.zeros(3, 2))
    torch.testing.assert_close(out.amax(dim=spatial), torch.ones(3, 2))
    out = normalize_maps(maps, "l2")
    torch.testing.assert_close(torch.linalg.vector_norm(out, dim=spatial), torch.ones(3, 2))
    torch.testing.assert_close(normalize_maps(maps, "none"), maps, rtol=0, atol=0)
    for kind in NORMALIZATIONS:  # scale invariant; half precision in, float32 out
        torch.testing.assert_close(normalize_maps(1e-4 * maps, kind), normalize_maps(maps, kind) * (
            1e-4 if kind == "none" else 1.0))
        assert normalize_maps(maps.bfloat16(), kind).dtype == torch.float32
    assert normalize_maps(maps.double(), "max").dtype == torch.float64


@pytest.mark.parametrize("kind", NORMALIZATIONS)
def test_normalize_maps_blank_maps(kind: str) -> None:
    raw = _maps().clone()
    raw[0, 1] = 0.0  # an all-zero map among normal ones
    raw[1, 0] = 2.5  # a constant map
    for maps in (raw, torch.zeros_like(raw)):  # ... and a batch of all-zero maps
        maps = maps.clone().requires_grad_()
        out = normalize_maps(maps, kind)
        assert torch.isfinite(out).all()
        assert (out[0, 1] == 0).all()
        (grad,) = torch.autograd.grad((out * torch.rand_like(out)).sum(), maps)
        assert torch.isfinite(grad).all()
    if kind == "minmax":
        assert (out[1, 0] == 0).all()
    # a map 1e8 times weaker than the others counts as blank (scale below 1e-6 of the largest)
    maps = _maps().clone()
    maps[2, 1] *= 1e-8
    out = normalize_maps(maps, kind)
    assert (out[2, 1] == 0).all() != (kind == "none")
    # Grad-CAM-like: a map killed by the ReLU stays zero and gets a finite gradient
    pre = torch.full((2, 4, 4), -1.0).requires_grad_()
    out = normalize_maps(F.relu(pre), kind)
    (grad,) = torch.autograd.grad(out.sum(), pre)
    assert (out == 0).all() and torch.isfinite(grad).all()


def test_normalize_maps_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="max, minmax, l2, none"):
        normalize_maps(_maps(), "softmax")


def test_upsample_maps() -> None:
    maps = _maps()
    out = upsample_maps(maps, 32)
    assert out.shape == (3, 2, 32, 32)
    expected = F.interpolate(maps.reshape(6, 1, 5, 6), size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected.reshape(3, 2, 32, 32))
    assert upsample_maps(maps[0], (10, 12)).shape == (2, 10, 12)
    torch.testing.assert_close(upsample_maps(torch.full((1, 4, 4), 3.0), 9), torch.full((1, 9, 9), 3.0))


def test_negative_class_excludes_rows_of_a_batch():
    """Maps for part of a batch (e.g. the unlabeled rows of a labeled+unlabeled forward)."""
    torch.manual_seed(0)
    model = build_model("resnet18", 10, width=0.25).eval()
    x = torch.randn(6, 3, 32, 32)
    classes = torch.tensor([-1, -1, 3, 1, 4, 9])
    for layer in ("layer2", "layer4"):
        logits, feats = model(x, taps=[layer])
        maps = grad_cam(logits, feats, classes, model=model)[layer]
        assert torch.all(maps[:2] == 0)
        logits_sub, feats_sub = model(x[2:], taps=[layer])
        ref = grad_cam(logits_sub, feats_sub, classes[2:], model=model)[layer]
        torch.testing.assert_close(maps[2:], ref, rtol=1e-5, atol=1e-7)
