"""Tests for the airbench94-shaped ``airnet``: shapes, taps, CAM, whitening, frozen parameters, training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from camssl.cam import grad_cam
from camssl.errors import ConfigError
from camssl.models import MODEL_NAMES, AirNet, build_model, init_whitening, load_pretrained

SMALL = (8, 16, 16)
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _model(pool: str = "max", widths: tuple[int, int, int] = SMALL, classes: int = 5) -> AirNet:
    torch.manual_seed(0)
    model = build_model("airnet", classes, widths=widths, pool=pool)
    assert isinstance(model, AirNet)
    return model


def _images(batch: int = 4, size: int = 32, seed: int = 1) -> Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _smooth_uint8(n: int, seed: int = 0) -> Tensor:
    """Images with correlated neighbouring pixels and channels (like natural images), uint8."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 8, 8, generator=g) * 0.6 + torch.rand(n, 3, 8, 8, generator=g) * 0.3
    x = F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
    x = 0.75 * x + 0.25 * torch.rand(n, 3, 32, 32, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def test_registered_and_shapes_at_32px() -> None:
    assert "airnet" in MODEL_NAMES
    model = build_model("airnet", 10).eval()
    assert model.widths == (64, 256, 256)
    with torch.no_grad():
        plain = model(_images(2))
        logits, feats = model(_images(2), taps=model.stages)
    assert plain.shape == (2, 10) and torch.equal(plain, logits)
    assert list(feats) == ["whiten", "layer1", "layer2", "layer3"]
    shapes = {name: tuple(f.shape[1:]) for name, f in feats.items()}
    assert shapes == {"whiten": (24, 31, 31), "layer1": (64, 15, 15), "layer2": (256, 7, 7), "layer3": (256, 3, 3)}
    assert model.fc.bias is None and model.fc.in_features == 256


def test_taps_equal_manual_stages() -> None:
    model = _model().eval()
    x = _images()
    with torch.no_grad():
        _, feats = model(x, taps=["layer3", "whiten", "layer2.conv1"])
        whiten = F.gelu(F.conv2d(x, model.whiten.conv.weight, model.whiten.conv.bias))
        layer2 = model.layer2(model.layer1(whiten))
    assert list(feats) == ["layer3", "whiten", "layer2.conv1"]
    torch.testing.assert_close(feats["whiten"], whiten, rtol=0, atol=0)
    torch.testing.assert_close(feats["layer3"], model.layer3(layer2), rtol=0, atol=0)
    torch.testing.assert_close(feats["layer2.conv1"], model.layer2.conv1(model.layer1(whiten)), rtol=0, atol=0)
    for layer in (*model.stages, model.example_tap, "fc"):
        assert model.check_layer(layer) is None
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_width_and_widths_keywords() -> None:
    assert build_model("airnet", 3, width=0.5).widths == (32, 128, 128)
    assert build_model("airnet", 3, widths=[4, 8, 12]).widths == (4, 8, 12)
    with pytest.raises(ConfigError, match="only for airnet, not resnet18"):
        build_model("resnet18", 3, widths=(4, 8, 8))
    with pytest.raises(ConfigError, match="only for airnet, not wrn28_2"):
        build_model("wrn28_2", 3, pool="avg")
    with pytest.raises(ConfigError, match="either model.widths"):
        build_model("airnet", 3, width=0.5, widths=(4, 8, 8))
    for bad in [(4, 8), (4, 0, 8), (4.0, 8, 8), "abc"]:
        with pytest.raises(ConfigError, match="three positive integers") as info:
            build_model("airnet", 3, widths=bad)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="choose one of max, avg"):
        build_model("airnet", 3, pool="mean")
    with pytest.raises(ConfigError, match="logit_scale"):
        AirNet("airnet", 3, logit_scale=0.0)


def test_logit_scale_is_folded_into_fc_weight() -> None:
    model = _model("avg").eval()
    raw = model.fc.parametrizations.weight.original
    torch.testing.assert_close(model.fc.weight, raw / 9.0)
    x = _images()
    with torch.no_grad():
        logits, feats = model(x, taps="layer3")
    torch.testing.assert_close(logits, feats["layer3"].mean((2, 3)) @ raw.T / 9.0)
    unscaled = AirNet("airnet", 5, widths=SMALL, pool="avg", logit_scale=1.0)
    unscaled.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(unscaled.eval()(x), 9.0 * logits)


@pytest.mark.parametrize("mode", ["full", "detach-weights"])
def test_avg_pool_closed_form_grad_cam_is_exact(mode: str) -> None:
    model = _model("avg").eval()
    assert model.cam_layer == "layer3"
    logits, feats = model(_images(), taps=["layer2", "layer3"])
    classes = torch.tensor([0, 3, 1, 4])
    closed = grad_cam(logits, feats, classes, mode=mode, model=model)
    autograd = grad_cam(logits, feats, classes, mode=mode)
    assert closed["layer3"].shape == (4, 3, 3) and closed["layer3"].abs().sum() > 0
    for name in ("layer2", "layer3"):
        torch.testing.assert_close(closed[name], autograd[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("train", [False, True])
def test_max_pool_uses_autograd_which_equals_the_cam_formula(train: bool) -> None:
    model = _model("max").train(train)
    assert model.cam_layer == ""
    logits, feats = model(_images(), taps=["layer3"])
    # at 32x32 the global max is airbench's MaxPool2d(3) over the 3x3 map
    torch.testing.assert_close(logits, model.fc(F.max_pool2d(feats["layer3"], 3).flatten(1)))
    classes = logits.argmax(1)
    with_model = grad_cam(logits, feats, classes, model=model)["layer3"]
    autograd = grad_cam(logits, feats, classes)["layer3"]
    torch.testing.assert_close(with_model, autograd, rtol=0, atol=0)
    # the gradient sits only at each channel's argmax, but its spatial mean (Grad-CAM's alpha)
    # is W[c, k] / hw as under average pooling, so the maps equal ReLU(CAM) / hw all the same
    gradient = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), feats["layer3"], retain_graph=True)[0]
    assert ((gradient != 0).sum((2, 3)) <= 1).all()
    formula = F.relu((model.fc.weight[classes][:, :, None, None] * feats["layer3"]).sum(1)) / 9
    torch.testing.assert_close(with_model, formula, rtol=1e-4, atol=1e-7)


def test_whitening_gives_identity_second_moment() -> None:
    model = _model()
    images = _smooth_uint8(64)
    eigenvalues = init_whitening(model, images, MEAN, STD)
    assert torch.all(eigenvalues[:-1] >= eigenvalues[1:]) and eigenvalues[-1] > 0.05  # well above eps 5e-4
    x = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    weight = model.whiten.conv.weight
    out = F.conv2d(x.double(), weight.double())  # no bias
    torch.testing.assert_close(out[:, 12:], -out[:, :12], rtol=0, atol=0)
    flat = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    moment = flat.T @ flat / flat.shape[0]
    expected = torch.diag(eigenvalues / (eigenvalues + 5e-4))
    torch.testing.assert_close(moment, expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(moment, torch.eye(12, dtype=torch.float64), rtol=0, atol=1e-2)
    assert not weight.requires_grad


def test_whitening_is_deterministic_and_uses_the_first_images() -> None:
    images = _smooth_uint8(40, seed=3)
    a, b, c = _model(), _model(), _model()
    init_whitening(a, images, MEAN, STD, max_images=20)
    init_whitening(b, images[:20], MEAN, STD)
    init_whitening(c, images[:20].float() / 255, MEAN, STD)  # float images in [0, 1]
    assert torch.equal(a.whiten.conv.weight, b.whiten.conv.weight)
    torch.testing.assert_close(a.whiten.conv.weight, c.whiten.conv.weight)
    before = a.whiten.conv.bias.clone()
    init_whitening(a, images, MEAN, STD)
    assert not torch.equal(a.whiten.conv.weight, b.whiten.conv.weight)
    assert torch.equal(a.whiten.conv.bias, before)


def test_frozen_parameters_bn_settings_and_dirac_init() -> None:
    model = _model(widths=(24, 32, 32))
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    norms = {f"layer{i}.norm{j}.weight" for i in (1, 2, 3) for j in (1, 2)}
    assert frozen == {"whiten.conv.weight"} | norms
    assert model.whiten.conv.bias.requires_grad and model.layer2.norm1.bias.requires_grad
    for i in (1, 2, 3):
        for norm in (model.get_submodule(f"layer{i}.norm1"), model.get_submodule(f"layer{i}.norm2")):
            assert norm.eps == 1e-12 and norm.momentum == pytest.approx(0.4)
            assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    x = _images()
    with torch.no_grad():  # dirac: the first in_channels outputs copy the input
        torch.testing.assert_close(model.layer1.conv1(x.repeat(1, 8, 1, 1))[:, :24], x.repeat(1, 8, 1, 1))
        h = torch.randn(2, 32, 8, 8)
        torch.testing.assert_close(model.layer2.conv2(h), h)
        assert model.layer2.conv1(torch.randn(2, 24, 8, 8))[:, 24:].abs().sum() > 0  # the rest: default init


def test_bn_running_stats_use_airbench_momentum() -> None:
    model = _model().train()
    seen: list[Tensor] = []
    model.layer1.norm1.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    model(_images())
    batch_mean = seen[0].mean((0, 2, 3))
    torch.testing.assert_close(model.layer1.norm1.running_mean, 0.4 * batch_mean)  # 0.6 * 0 + 0.4 * batch


def test_sgd_steps_lower_the_loss() -> None:
    model = _model(widths=(16, 32, 32), classes=4).train()
    init_whitening(model, _smooth_uint8(16), MEAN, STD)
    x, y = _images(16, seed=5), torch.arange(16) % 4
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.2, momentum=0.9, nesterov=True)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert model.whiten.conv.weight.grad is None and model.layer1.norm1.weight.grad is None
    assert model.whiten.conv.bias.grad is not None
    assert losses[-1] < 0.7 * losses[0], losses


def test_channels_last_matches_contiguous() -> None:
    model = _model("avg").train()
    twin = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = _images()
    out = model(x)
    out_cl = twin(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-5)
    out.sum().backward()
    out_cl.sum().backward()
    grad, grad_cl = model.layer2.conv1.weight.grad, twin.layer2.conv1.weight.grad
    assert twin.layer2.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grad_cl, grad, rtol=1e-3, atol=1e-5)


def test_state_dict_round_trip_and_load_pretrained(tmp_path) -> None:
    model = _model("avg").eval()
    path = tmp_path / "airnet.pt"
    torch.save(model.state_dict(), path)
    other = build_model("airnet", 5, widths=SMALL, pool="avg", pretrained=path).eval()
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(copy.deepcopy(model)(x), model(x), rtol=0, atol=0)
    with pytest.warns(UserWarning, match="fc is left randomly initialised"):
        load_pretrained(build_model("airnet", 7, widths=SMALL, pool="avg"), path)
