"""Tests for camssl.models: shapes, taps, closed-form CAM exactness, double backward, weights."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from camssl.errors import ConfigError, UserError
from camssl.models import MODEL_NAMES, CamNet, build_model, load_pretrained

# name -> (width, input size, expected stage spatial sizes, stage channels)
CASES = {
    "resnet18": (0.125, 32, (32, 16, 8, 4), (8, 16, 32, 64)),
    "resnet34": (0.125, 32, (32, 16, 8, 4), (8, 16, 32, 64)),
    "resnet50": (0.125, 32, (32, 16, 8, 4), (32, 64, 128, 256)),
    "resnet50_imagenet": (0.25, 32, (8, 4, 2, 1), (64, 128, 256, 512)),
    "wrn28_2": (0.25, 32, (32, 16, 8, 8), (8, 16, 32, 32)),
}
NUM_CLASSES = 5


def _model(name: str, **kwargs: object) -> CamNet:
    torch.manual_seed(0)
    return build_model(name, NUM_CLASSES, width=CASES[name][0], **kwargs).eval()


def _images(size: int = 32, batch: int = 2) -> Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _manual_stages(model: CamNet, x: Tensor) -> dict[str, Tensor]:
    """Recompute each stage output by calling the modules one after another."""
    out: dict[str, Tensor] = {}
    if model.name == "wrn28_2":
        h = model.conv1(x)
    else:
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for stage in model.stages:
        h = model.get_submodule(stage)(h)
        out[stage] = h
    return out


def test_model_names_cover_all_builders() -> None:
    assert MODEL_NAMES == ("resnet18", "resnet34", "resnet50", "resnet50_imagenet", "wrn28_2", "airnet")
    assert set(CASES) | {"airnet"} == set(MODEL_NAMES)  # airnet: tests/test_airnet.py


@pytest.mark.parametrize("name", CASES)
def test_taps_shapes_and_values(name: str) -> None:
    width, size, spatial, channels = CASES[name]
    model = _model(name)
    x = _images(size)
    with torch.no_grad():
        plain = model(x)
        logits, feats = model(x, taps=model.stages)
        manual = _manual_stages(model, x)
    assert isinstance(model, CamNet)
    assert len(model.stages) == len(spatial) == len(channels)  # the zip below checks every stage
    assert plain.shape == (2, NUM_CLASSES)
    assert torch.equal(plain, logits)
    assert list(feats) == list(model.stages)
    for stage, hw, ch in zip(model.stages, spatial, channels):
        assert feats[stage].shape == (2, ch, hw, hw), stage
        torch.testing.assert_close(feats[stage], manual[stage], rtol=0, atol=0)


@pytest.mark.parametrize("name", CASES)
def test_cam_layer_feeds_fc_directly(name: str) -> None:
    model = _model(name)
    expected_cam = "features" if name == "wrn28_2" else "layer4"
    assert model.cam_layer == expected_cam == model.stages[-1]
    with torch.no_grad():
        logits, feats = model(_images(), taps=[model.cam_layer])
    torch.testing.assert_close(logits, model.fc(feats[model.cam_layer].mean((2, 3))), rtol=1e-5, atol=1e-5)


def test_wrn_features_is_bn_then_activation() -> None:
    model = _model("wrn28_2")
    assert isinstance(model.features, torch.nn.Sequential)
    assert isinstance(model.features[0], torch.nn.BatchNorm2d)
    assert isinstance(model.features[1], torch.nn.LeakyReLU)
    assert model.features[1].negative_slope == 0.1
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 0


def test_no_inplace_activations() -> None:
    for name in CASES:
        model = _model(name)
        assert not any(getattr(m, "inplace", False) for m in model.modules()), name


def test_module_path_tap_and_hooks_removed() -> None:
    model = _model("resnet18")
    x = _images()
    with torch.no_grad():
        logits, feats = model(x, taps=["layer3.0.conv1", "layer2"])
        expected = model.layer3[0].conv1(model.layer2(model.layer1(model.relu(model.bn1(model.conv1(x))))))
    assert list(feats) == ["layer3.0.conv1", "layer2"]  # request order
    torch.testing.assert_close(feats["layer3.0.conv1"], expected, rtol=0, atol=0)
    assert all(not m._forward_hooks for m in model.modules())


def test_single_string_tap_is_one_name() -> None:
    model = _model("wrn28_2")
    with torch.no_grad():
        _, feats = model(_images(), taps="features")
    assert list(feats) == ["features"]


@pytest.mark.parametrize("bad", ["foo", "layer9", "layer3.7.conv1", ""])
def test_unknown_tap_raises_config_error(bad: str) -> None:
    model = _model("resnet18")
    with pytest.raises(ConfigError) as info:
        model(_images(), taps=["layer1", bad])
    message = str(info.value)
    assert f"unknown layer {bad!r} for resnet18" in message
    assert "layer1, layer2, layer3, layer4" in message
    assert "\n" not in message
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("name", CASES)
def test_check_layer_accepts_stages_and_module_paths(name: str) -> None:
    model = _model(name)
    for layer in (*model.stages, model.example_tap, "fc"):
        assert model.check_layer(layer) is None, layer


def test_check_layer_message_is_the_one_forward_gives() -> None:
    model = _model("resnet18")
    with pytest.raises(ConfigError) as from_forward:
        model(_images(), taps=["layer9"])
    with pytest.raises(ConfigError) as plain:
        model.check_layer("layer9")
    with pytest.raises(ConfigError) as keyed:
        model.check_layer("layer9", key="method.layers")
    assert str(plain.value) == str(from_forward.value) == (
        "unknown layer 'layer9' for resnet18; valid stages: layer1, layer2, layer3, layer4 "
        "(or any module path such as layer3.0.conv1)"
    )
    assert str(keyed.value) == "method.layers: " + str(plain.value)


def test_hooks_removed_when_forward_fails() -> None:
    model = _model("resnet18")
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 4, 32, 32), taps=["layer1"])  # wrong channel count
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("name", ["resnet18", "wrn28_2"])
def test_double_backward_through_taps(name: str) -> None:
    model = _model(name).train()
    x = _images(batch=4)
    logits, feats = model(x, taps=["layer3"])
    assert feats["layer3"].requires_grad
    grad = torch.autograd.grad(logits[:, 0].sum(), feats["layer3"], create_graph=True)[0]
    (grad**2).sum().backward()
    assert model.fc.weight.grad is not None
    assert model.fc.weight.grad.abs().sum() > 0
    deeper = model.layer4[0].conv1 if name == "resnet18" else model.features[0]
    assert deeper.weight.grad is not None


def test_deterministic_given_seed() -> None:
    a, b = _model("wrn28_2"), _model("wrn28_2")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_resnet50_imagenet_matches_torchvision_layout() -> None:
    model = build_model("resnet50_imagenet", 1000)
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision resnet50
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)
    assert "bn1.num_batches_tracked" in state and "fc.bias" in state
    assert isinstance(model.maxpool, torch.nn.MaxPool2d)


def test_cifar_resnet18_parameter_count() -> None:
    model = build_model("resnet18", 10)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)


def test_resize_to_upsamples_inside_model() -> None:
    model = _model("resnet18", resize_to=64)
    small = _images(32)
    with torch.no_grad():
        _, feats = model(small, taps=["layer4"])
        upsampled = torch.nn.functional.interpolate(small, size=(64, 64), mode="bilinear", align_corners=False)
        _, direct = model(upsampled, taps=["layer4"])
    assert feats["layer4"].shape[-2:] == (8, 8)
    torch.testing.assert_close(feats["layer4"], direct["layer4"])

    imagenet = _model("resnet50_imagenet", resize_to=64)
    with torch.no_grad():
        _, feats = imagenet(small, taps=["layer4"])
    assert feats["layer4"].shape[-2:] == (2, 2)


@pytest.mark.parametrize("kwargs", [{"width": 0}, {"width": -1.0}, {"width": float("nan")}, {"resize_to": 0},
                                    {"resize_to": 32.5}])
def test_invalid_build_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        build_model("resnet18", 10, **kwargs)


def test_invalid_num_classes() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("resnet18", 0)


def test_unknown_model_name_lists_names() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("vgg16", 10)
    assert "'vgg16'" in str(info.value)
    for name in MODEL_NAMES:
        assert name in str(info.value)


# ---------------------------------------------------------------- pretrained weights


@pytest.fixture
def imagenet_weights(tmp_path):
    torch.manual_seed(123)
    source = build_model("resnet50_imagenet", 1000, width=0.25)
    path = tmp_path / "resnet50.pt"
    torch.save(source.state_dict(), path)
    return source, path


def test_pretrained_loads_all_but_fc(imagenet_weights) -> None:
    source, path = imagenet_weights
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="1000 classes"):
        model = build_model("resnet50_imagenet", 10, width=0.25, pretrained=path)
    src_state, state = source.state_dict(), model.state_dict()
    assert set(src_state) == set(state)
    for key, value in state.items():
        if key.startswith("fc."):
            assert value.shape != src_state[key].shape
        else:
            assert torch.equal(value, src_state[key]), key
    assert model.fc.out_features == 10


def test_pretrained_same_classes_loads_fc_without_warning(imagenet_weights, recwarn) -> None:
    source, path = imagenet_weights
    model = load_pretrained(build_model("resnet50_imagenet", 1000, width=0.25), path)
    assert torch.equal(model.fc.weight, source.fc.weight)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_pretrained_nested_and_module_prefix(tmp_path) -> None:
    torch.manual_seed(5)
    source = _model("wrn28_2")
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    model = build_model("wrn28_2", NUM_CLASSES, width=CASES["wrn28_2"][0], pretrained=path)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    torch.save({"model": {"state_dict": state}}, path)
    model = build_model("wrn28_2", NUM_CLASSES, width=CASES["wrn28_2"][0], pretrained=path)
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_pretrained_nested_conv1_key(tmp_path, imagenet_weights) -> None:
    source, _ = imagenet_weights
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "nested.pt"
    torch.save({"state_dict": state}, path)
    model = build_model("resnet50_imagenet", 1000, width=0.25, pretrained=path)
    assert torch.equal(model.conv1.weight, state["module.conv1.weight"])


def test_pretrained_missing_num_batches_tracked_is_fine(tmp_path, imagenet_weights) -> None:
    source, _ = imagenet_weights
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pt"
    torch.save(state, path)
    model = build_model("resnet50_imagenet", 1000, width=0.25, pretrained=path)
    assert torch.equal(model.layer4[2].bn3.running_var, source.layer4[2].bn3.running_var)


def test_pretrained_renamed_key_raises(tmp_path, imagenet_weights) -> None:
    source, _ = imagenet_weights
    state = source.state_dict()
    state["stem.weight"] = state.pop("layer1.0.conv1.weight")
    path = tmp_path / "renamed.pt"
    torch.save(state, path)
    with pytest.raises(UserError) as info:
        build_model("resnet50_imagenet", 1000, width=0.25, pretrained=path)
    message = str(info.value)
    assert "1 missing keys (layer1.0.conv1.weight)" in message
    assert "1 unexpected (stem.weight)" in message
    assert "torchvision/timm resnet50" in message and "renamed.pt" in message
    assert "\n" not in message


def test_pretrained_wrong_width_raises(imagenet_weights) -> None:
    _, path = imagenet_weights
    with pytest.raises(UserError, match="with a different shape"):
        build_model("resnet50_imagenet", 1000, width=0.125, pretrained=path)


def test_pretrained_missing_or_bad_file(tmp_path) -> None:
    with pytest.raises(UserError, match="not found"):
        build_model("resnet18", 10, width=0.125, pretrained=tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not read") as info:
        build_model("resnet18", 10, width=0.125, pretrained=garbage)
    assert "\n" not in str(info.value)
    no_state = tmp_path / "list.pt"
    torch.save([1, 2, 3], no_state)
    with pytest.raises(UserError, match="do not contain a state_dict"):
        build_model("resnet18", 10, width=0.125, pretrained=no_state)


# ---------------------------------------------------------------- distributed wrapper


def test_taps_and_double_backward_under_ddp(tmp_path) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = _model("resnet18").train()
        ddp = DistributedDataParallel(model)
        logits, feats = ddp(_images(batch=4), taps=["layer3", model.cam_layer])
        assert set(feats) == {"layer3", "layer4"}
        grad = torch.autograd.grad(logits[:, 0].sum(), feats["layer3"], create_graph=True)[0]
        (torch.nn.functional.cross_entropy(logits, torch.arange(4) % NUM_CLASSES) + (grad**2).sum()).backward()
        assert all(p.grad is not None for p in model.parameters())
        assert all(not m._forward_hooks for m in model.modules())
    finally:
        dist.destroy_process_group()
