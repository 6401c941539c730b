"""bf16 on the CPU: when a run uses it, what stays fp32, and how far its Grad-CAM maps are from captum's fp32 maps.

Measured here (torch 2.13 CPU, 32 random images, maps of the target class): under bf16
autocast camssl's Grad-CAM maps differ from captum's fp32 maps by at most 4.2% of the
batch's largest map value on a ResNet-18 (width 0.25) at layer2-layer4 and at most 1.2% on
airnet (width 0.25, pool avg) at every stage; the median per-map error is below 3.2%. A map
whose fp32 values are all near zero can differ more (bf16 rounding decides what ReLU keeps),
which is why the per-map bound is on the median. The tolerances below leave a 1.5x margin.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerGradCam
from torch import nn

import camssl.train.precision as precision
from camssl.cam import grad_cam
from camssl.config import load_config
from camssl.errors import ConfigError
from camssl.models import build_model


@pytest.mark.parametrize("native", [True, False])
def test_cpu_amp_is_bf16_only_where_native(monkeypatch, native):
    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: native)
    cpu = torch.device("cpu")
    cfg = load_config("demo")
    assert precision.amp_dtype(cfg, cpu) == (torch.bfloat16 if native else None)
    assert precision.amp_dtype(load_config("demo", {"amp": False}), cpu) is None
    with pytest.raises(ConfigError, match="amp_dtype=fp16 is for CUDA"):
        precision.amp_dtype(load_config("demo", {"amp_dtype": "fp16"}), cpu)
    forced = load_config("demo", {"amp_dtype": "bf16"})
    if native:
        assert precision.amp_dtype(forced, cpu) == torch.bfloat16
    else:
        with pytest.raises(ConfigError, match="would be emulated"):
            precision.amp_dtype(forced, cpu)


def test_the_run_header_says_which_precision(monkeypatch, tmp_path):
    from camssl.data import load_data
    from camssl.train import Trainer

    cfg = load_config("demo", {"model.width": 0.125, "optim.epochs": 1, "optim.steps_per_epoch": 1,
                               "split.n_labeled": 100, "cam_grid": False, "device": "cpu"})
    data = load_data(cfg.data)
    from camssl.machine import yardstick_ms

    monkeypatch.setenv("CAMSSL_YARDSTICK", "1")  # the yardstick too (measured once per process)
    yardstick_ms.cache_clear()
    for native, text in ((True, "trains in bf16 autocast"), (False, "trains in fp32")):
        monkeypatch.setattr(precision, "native_bf16_cpu", lambda native=native: native)
        lines: list[str] = []
        result = Trainer(cfg, tmp_path / str(native), data=data, log=lines.append).fit()
        line = next(line for line in lines if line.startswith("machine:"))
        assert text in line and "yardstick ResNet-18 width 0.5 (batch 64, fp32)" in line, line
        assert result["yardstick_ms"] > 0
    yardstick_ms.cache_clear()


def test_batchnorm_statistics_stay_float32_under_bf16_autocast():
    torch.manual_seed(0)
    x = (torch.rand(64, 8, 16, 16) * 3 + 5).bfloat16()  # a large mean: bf16 accumulation would be visibly off
    conv_free = nn.BatchNorm2d(8, momentum=1.0)
    reference = nn.BatchNorm2d(8, momentum=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv_free(x)
    reference(x.float())
    assert conv_free.running_mean.dtype == torch.float32 and out.dtype == torch.bfloat16
    assert torch.allclose(conv_free.running_mean, reference.running_mean, rtol=1e-6, atol=0)
    assert torch.allclose(conv_free.running_var, reference.running_var, rtol=1e-4, atol=0)


CASES = [("resnet18", {"width": 0.25}, ("layer2", "layer3", "layer4"), 0.063),
         ("airnet", {"width": 0.25, "pool": "avg"}, ("whiten", "layer1", "layer2", "layer3"), 0.018)]


@pytest.mark.parametrize(("name", "kwargs", "layers", "tolerance"), CASES)
def test_bf16_maps_against_captum_fp32(name, kwargs, layers, tolerance):
    torch.manual_seed(0)
    model = build_model(name, 10, **kwargs).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, 32, 32, generator=g)
    classes = torch.randint(0, 10, (32,), generator=g)
    for layer in layers:
        ref = LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=classes, relu_attributions=True)
        ref = ref.squeeze(1).detach()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, feats = model(x, taps=[layer])
            maps = grad_cam(logits, feats, classes, model=model)[layer].detach()
        assert maps.dtype == torch.float32
        batch_error = float((maps - ref).abs().max() / ref.abs().max())
        per_map = (maps - ref).abs().amax(dim=(1, 2)) / ref.abs().amax(dim=(1, 2)).clamp_min(1e-12)
        assert batch_error <= tolerance, (layer, batch_error)
        assert float(per_map.median()) <= 0.048, (layer, float(per_map.median()))
