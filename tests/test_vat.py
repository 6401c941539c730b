"""Virtual adversarial training: the perturbation (norm, adversarial), BatchNorm statistics, no .grad
writes, autocast, and the ``vat`` method."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from camssl.augment import AugmentConfig, Augmenter
from camssl.config import method_config
from camssl.errors import ConfigError
from camssl.losses import _unit, frozen_bn_stats, kl_from_logits, vat_loss, vat_perturbation
from camssl.methods import METHODS, Batch, StepContext
from camssl.methods.parts import ramp
from camssl.models import build_model


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("resnet18", 10, width=0.125)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return model, x


def bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def kl_at(model, x, logits, r):
    with torch.no_grad(), frozen_bn_stats(model):
        return float(kl_from_logits(logits, model(x + r)).mean())


@pytest.mark.parametrize("xi", [1e-6, 1e-2])
def test_perturbation_has_norm_eps_and_raises_kl_above_a_random_direction(xi):
    model, x = tiny()
    with torch.no_grad(), frozen_bn_stats(model):
        logits = model(x)
    r = vat_perturbation(model, x, logits, xi=xi, eps=6.0, generator=torch.Generator().manual_seed(1))
    assert r.shape == x.shape and not r.requires_grad
    assert torch.allclose(r.flatten(1).norm(dim=1), torch.full((16,), 6.0), rtol=1e-5)
    random = 6.0 * _unit(torch.randn(x.shape, generator=torch.Generator().manual_seed(2)))
    kl_adv, kl_random = kl_at(model, x, logits, r), kl_at(model, x, logits, random)
    assert kl_adv > 5 * kl_random, (kl_adv, kl_random)
    # the same generator state gives the same perturbation; another one a different one
    again = vat_perturbation(model, x, logits, xi=xi, eps=6.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(r, again)


def test_perturbed_passes_leave_batchnorm_statistics_and_grads_alone():
    model, x = tiny()
    model.train()
    before = bn_state(model)
    logits = model(x)  # a clean train-mode pass does move the statistics ...
    moved = bn_state(model)
    assert any(not torch.equal(before[k], moved[k]) for k in before)
    loss = vat_loss(model, x, logits, generator=torch.Generator().manual_seed(0), power_iters=2)
    after = bn_state(model)
    assert all(torch.equal(moved[k], after[k]) for k in moved)  # ... the perturbed ones do not
    assert all(p.grad is None for p in model.parameters())  # the power iteration writes no .grad
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))  # restored
    loss.backward()
    assert model.fc.weight.grad.abs().sum() > 0 and float(loss.detach()) > 0
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)  # the clean logits are the detached target: no gradient flows into them
    vat_loss(model, x, logits.detach(), generator=torch.Generator().manual_seed(0), power_iters=2).backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))
    with pytest.raises(RuntimeError), frozen_bn_stats(model):
        raise RuntimeError("boom")
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))  # also after an error
    model.eval()
    with frozen_bn_stats(model):  # eval mode still uses the running statistics
        assert torch.allclose(model(x), build_and_copy(model)(x))


def build_and_copy(model):
    other = build_model("resnet18", 10, width=0.125)
    other.load_state_dict(model.state_dict())
    return other.eval()


def test_power_iteration_under_cpu_autocast_is_still_adversarial():
    model, x = tiny()
    with torch.no_grad(), frozen_bn_stats(model):
        logits = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = vat_perturbation(model, x, logits.bfloat16(), generator=torch.Generator().manual_seed(1))
    assert r.dtype == torch.float32
    random = 6.0 * _unit(torch.randn(x.shape, generator=torch.Generator().manual_seed(2)))
    assert kl_at(model, x, logits, r) > 5 * kl_at(model, x, logits, random)


def method_step(**fields):
    model, _ = tiny()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (12,), generator=g)
    ctx = StepContext(model=model, augmenter=Augmenter(AugmentConfig()), generator=torch.Generator().manual_seed(3),
                      epoch=2.5)
    method = METHODS["vat"](method_config("vat", **fields))
    return method.step(ctx, Batch(x[:4], y[:4], x[4:], y[4:], torch.arange(4), torch.arange(4, 12))), model


def test_vat_method_loss_terms_and_ramp():
    out, model = method_step()
    assert all(p.grad is None for p in model.parameters())
    m = out.metrics
    assert float(m["loss_vat"]) > 0 and float(m["vat_weight"]) == pytest.approx(0.3 * 2.5 / 5)
    expected = m["loss_s"] + m["vat_weight"] * m["loss_vat"]
    assert torch.allclose(out.loss.detach(), expected)
    ent, _ = method_step(vat={"entmin_weight": 0.06, "ramp_epochs": 0.0})
    assert torch.allclose(ent.loss.detach(), ent.metrics["loss_s"] + 0.3 * ent.metrics["loss_vat"]
                          + 0.06 * ent.metrics["loss_ent"])
    assert ramp(0, 4) == 0.0 and ramp(1, 4) == 0.25 and ramp(9, 4) == 1.0 and ramp(0, 0) == 1.0
    assert ramp(3.9, 4, "step") == 0.0 and ramp(4, 4, "step") == 1.0 and ramp(0, 0, "step") == 1.0


def test_bad_vat_settings_are_refused_on_one_line():
    for fields, key in [({"xi": 0.0}, "method.vat.xi"), ({"power_iters": 0}, "method.vat.power_iters"),
                        ({"eps": -1.0}, "method.vat.eps")]:
        with pytest.raises(ConfigError, match=key) as e:
            method_config("vat", vat=fields).validate()
        assert "\n" not in str(e.value)
