"""The public losses API: the README's own-training-loop example runs as written, its L_G is
the ``gradcam`` method's L_G on the same inputs, and its gradient reaches the parameters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from camssl.augment import AugmentConfig, Augmenter
from camssl.cam import capture, grad_cam
from camssl.config import method_config
from camssl.errors import ConfigError
from camssl.losses import confidence_mask, gradcam_consistency, soft_cross_entropy
from camssl.methods import METHODS, Batch, StepContext
from camssl.models import build_model

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text.split("## Use Grad-CAM consistency in your own training loop", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_and_trains_the_model():
    code = readme_example()
    assert 15 <= len(code.strip().splitlines()) <= 30
    ns: dict = {}
    torch.manual_seed(0)
    exec(compile(code.replace("optimizer.step()", "before = [p.detach().clone() for p in model.parameters()]\n"
                              "optimizer.step()"), str(README), "exec"), ns)
    before = ns["before"]
    assert float(ns["loss_g"].detach()) > 0
    model = ns["model"]
    for p in model.parameters():  # L_P + L_G reach every parameter, and the step moved them
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_loss_g_alone_reaches_the_layers_up_to_the_map_and_in_full_mode_beyond():
    code = readme_example().split("optimizer.zero_grad()")[0]
    for mode, after_map_trained in (("detach-weights", False), ("full", True)):
        ns: dict = {}
        exec(compile(code.replace('mode="detach-weights"', f'mode="{mode}"'), "readme", "exec"), ns)
        ns["model"].zero_grad()
        ns["loss_g"].backward()
        conv1, conv2, fc = ns["model"][0], ns["model"][2], ns["model"][6]
        assert conv1.weight.grad.abs().sum() > 0 and conv2.weight.grad.abs().sum() > 0
        assert (fc.weight.grad is not None and fc.weight.grad.abs().sum() > 0) == after_map_trained, mode


@pytest.mark.parametrize("grad_mode", ["full", "detach-weights"])
def test_the_public_loss_equals_the_methods_loss_g(grad_mode):
    """The README's calls on a camssl model give the gradcam method's L_G for the same views."""
    torch.manual_seed(0)
    model = build_model("resnet18", 10, width=0.125).eval()  # eval: each sample's map is batch-independent
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=g)
    batch = Batch(x[:4], torch.arange(4) % 10, x[4:])
    augmenter = Augmenter(AugmentConfig())
    method = METHODS["gradcam"](method_config("gradcam", gradcam={"layers": ["layer2"], "grad_mode": grad_mode}))
    ctx = StepContext(model=model, augmenter=augmenter, generator=torch.Generator().manual_seed(5), epoch=1.0)
    expected = method.step(ctx, batch).metrics["loss_g"]

    gen = torch.Generator().manual_seed(5)
    augmenter.weak(batch.x_l, gen)  # the method draws the labeled view first
    anchor, strong = augmenter.original(batch.x_u), augmenter.strong(batch.x_u, gen)
    with capture(model, ["layer2"]) as feats_a:
        logits_a = model(anchor.images)
    with capture(model, ["layer2"]) as feats_s:
        logits_s = model(strong.images)
    cfg = method.cfg.gradcam  # the method's own settings (its defaults: cosine distance, blank-target guard)
    loss_g = gradcam_consistency((logits_a, feats_a), logits_s, feats_s, anchor.theta, strong.theta,
                                 size=(32, 32), mode=grad_mode, norm=cfg.norm, distance=cfg.distance,
                                 skip_blank_targets=cfg.skip_blank_targets)
    assert float(loss_g.detach()) == pytest.approx(float(expected), rel=1e-5)
    loss_g.backward()
    assert model.layer1[0].conv1.weight.grad.abs().sum() > 0


def test_capture_records_any_module_and_removes_its_hooks():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU()),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(2, 3, 12, 12)
    with capture(model, ["0", "2.1"]) as feats:
        logits = model(x)
    assert set(feats) == {"0", "2.1"} and feats["2.1"].shape == (2, 4, 8, 8) and feats["2.1"].requires_grad
    assert all(not m._forward_hooks for m in model.modules())
    maps = grad_cam(logits, feats, logits.argmax(1))
    assert maps["2.1"].shape == (2, 8, 8)
    with pytest.raises(ConfigError, match="not a module of Sequential"):
        with capture(model, ["layer9"]):
            pass
    with pytest.raises(RuntimeError), capture(model, ["0"]):
        raise RuntimeError
    assert all(not m._forward_hooks for m in model.modules())


def test_small_losses_and_their_errors():
    probs = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
    assert confidence_mask(probs, 0.8).tolist() == [True, False] and confidence_mask(probs, 0).all()
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    ce = soft_cross_entropy(probs, logits)
    assert ce.tolist() == pytest.approx((-(probs * logits.log_softmax(1)).sum(1)).tolist())
    with pytest.raises(ValueError, match="threshold"):
        confidence_mask(probs, 1.5)
    with pytest.raises(ValueError, match="batch, classes"):
        soft_cross_entropy(probs[:1], logits)


def test_pairs_with_a_blank_target_are_left_out_when_asked():
    torch.manual_seed(0)
    model = build_model("resnet18", 10, width=0.125).eval()
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    augmenter = Augmenter(AugmentConfig())
    anchor, strong = augmenter.original(x), augmenter.strong(x, torch.Generator().manual_seed(3))
    logits, feats = model(strong.images, taps=["layer3"])
    targets = {"layer3": torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(4)) + 0.1}
    targets["layer3"][0] = 0.0  # a blank target map (a ReLU-zeroed Grad-CAM map)
    args = (targets, logits, feats, anchor.theta, strong.theta)
    plain = gradcam_consistency(*args, size=(32, 32), classes=logits.argmax(1), details=True)
    guarded = gradcam_consistency(*args, size=(32, 32), classes=logits.argmax(1), details=True,
                                  skip_blank_targets=True)
    assert plain.blank[:, 0].tolist() == [True, False, False, False] and torch.equal(plain.blank, guarded.blank)
    assert guarded.distances[0] == 0 and torch.equal(plain.distances[1:], guarded.distances[1:])
    assert float(guarded.loss) == pytest.approx(float(plain.distances[1:].sum() / 4))  # masked: counts as zero


def test_cosine_distance_gives_no_reward_for_a_blank_or_shrunken_map():
    from camssl.losses import map_distance

    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    blob = lambda cy, cx: torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8)[None, None]  # noqa: E731
    target, valid = blob(5, 5), torch.ones(1, 1, 16, 16)
    aligned, shifted = blob(5, 5), blob(11, 11)
    shrunk = torch.zeros(1, 1, 16, 16)
    shrunk[..., 12, 12] = 1.0  # one hot pixel, away from the target
    blank = torch.zeros(1, 1, 16, 16)
    mse = {k: float(map_distance(target, m, valid, "minmax", "mse")) for k, m in
           {"aligned": aligned, "shifted": shifted, "shrunk": shrunk, "blank": blank}.items()}
    cos = {k: float(map_distance(target, m, valid, "minmax", "cosine")) for k, m in
           {"aligned": aligned, "shifted": shifted, "shrunk": shrunk, "blank": blank}.items()}
    # MSE rewards shrinking a misplaced map to a dot or to nothing; cosine does not
    assert mse["aligned"] < 1e-6 and mse["blank"] < mse["shifted"] and mse["shrunk"] < mse["shifted"]
    assert cos["aligned"] < 1e-6 and cos["blank"] == 1.0 and cos["shrunk"] >= cos["shifted"] - 1e-3
