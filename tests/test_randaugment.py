"""Tests for camssl.randaugment: exact geometry, PIL-faithful colour ops, Cutout, randomness, config checks."""

from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageEnhance
import PIL.ImageOps
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from camssl.augment import View, carry, compose, invert
from camssl.errors import ConfigError
from camssl.randaugment import COLOUR_OPS, GEOMETRIC_OPS, OPS, RandAugmentConfig, rand_augment

PLAIN = dict(n_ops=1, apply_prob=1.0, cutout=(0.0, 0.0), translate_px=0, flip=False)  # one op, nothing else


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 8, size: int = 32, seed: int = 0) -> Tensor:
    """uint8 images with smooth structure and noise, values away from 0 and 255."""
    g = gen(seed)
    low = torch.rand(b, 3, 4, 4, generator=g)
    x = 0.15 + 0.5 * F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = x + 0.2 * torch.rand(b, 3, size, size, generator=g)
    return (x * 255).round().to(torch.uint8)


def ramp(b: int, size: int) -> tuple[Tensor, Tensor]:
    """Images linear in the normalized coordinates: value = 0.5 + 0.2 x - 0.15 y (+ 0.1 per channel)."""
    centres = (2 * torch.arange(size, dtype=torch.float32) + 1) / size - 1
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    coef = torch.tensor([[0.2, -0.15], [-0.1, 0.2], [0.15, 0.1]])
    img = 0.5 + coef[:, 0, None, None] * x + coef[:, 1, None, None] * y
    return img.expand(b, 3, size, size).clone(), coef


def test_same_seed_same_output_and_global_rng_untouched() -> None:
    x = images()
    state = torch.get_rng_state()
    a = rand_augment(x, gen(3))
    b = rand_augment(x, gen(3))
    c = rand_augment(x, gen(4))
    assert torch.equal(torch.get_rng_state(), state)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


def test_outputs_are_view_compatible_and_in_unit_range() -> None:
    x = images(16)
    out, theta, flip = rand_augment(x, gen(0))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert theta.shape == (16, 2, 3) and theta.dtype == torch.float32
    assert flip.shape == (16,) and flip.dtype == torch.bool
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.equal(rand_augment(x.float() / 255, gen(0))[0], out)  # uint8 or float in [0, 1]
    View(out, theta, flip)
    # the flip is the sign of the pre-step, composed into theta (shear/rotation never flip)
    assert torch.equal(flip, torch.linalg.det(theta[:, :, :2]) < 0)


def test_geometric_only_view_is_one_grid_sample_of_the_original() -> None:
    x = images(32)
    cfg = RandAugmentConfig(ops=GEOMETRIC_OPS, apply_prob=1.0, cutout=(0.0, 0.0))
    out, theta, flip = rand_augment(x, gen(1), cfg)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    expected = F.grid_sample(x.float() / 255, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert flip.any() and (~flip).any()
    assert (theta[:, :, :2] - torch.diag_embed(theta.new_ones(32, 2))).abs().amax() > 0.1  # ops did act


def test_theta_maps_view_pixels_to_original_points() -> None:
    """On images linear in the coordinates, bilinear sampling is exact: view(p) = original(theta p)."""
    size = 24
    x, coef = ramp(64, size)
    cfg = RandAugmentConfig(ops=GEOMETRIC_OPS, apply_prob=1.0, n_ops=3, cutout=(0.0, 0.0), padding_mode="zeros")
    out, theta, _ = rand_augment(x, gen(2), cfg)
    q = F.affine_grid(theta, [64, 1, size, size], align_corners=False)  # original point of each view pixel
    expected = 0.5 + coef[:, 0, None, None] * q[:, None, :, :, 0] + coef[:, 1, None, None] * q[:, None, :, :, 1]
    inside = (q.abs() <= 1 - 1.0 / size).all(-1)[:, None].expand_as(out)  # all 4 bilinear neighbours inside
    assert inside.float().mean() > 0.4
    torch.testing.assert_close(out[inside], expected[inside], rtol=0, atol=1e-5)


def test_translate_matches_pil_and_rotation_is_isotropic() -> None:
    x = images(6, size=20, seed=5)
    cfg = RandAugmentConfig(ops=("translate_x",), magnitude=(1.0, 1.0), **PLAIN)
    out, theta, _ = rand_augment(x, gen(0), cfg)
    for i in range(6):  # 0.3 * 20 = 6 pixels; PIL's (1, 0, t, 0, 1, 0) samples input x + t
        t = round(float(theta[i, 0, 2]) * 20 / 2)
        assert abs(t) == 6
        pil = PIL.Image.fromarray(x[i].permute(1, 2, 0).numpy()).transform((20, 20), PIL.Image.AFFINE,
                                                                            (1, 0, t, 0, 1, 0))
        ref = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-6)
    wide = torch.zeros(4, 3, 16, 40, dtype=torch.uint8)
    _, theta, _ = rand_augment(wide, gen(1), RandAugmentConfig(ops=("rotate",), **PLAIN))
    pixels = torch.diag(torch.tensor([20.0, 8.0]))  # normalized -> pixels: D = diag(W/2, H/2)
    linear = pixels @ theta[:, :, :2] @ torch.linalg.inv(pixels)
    torch.testing.assert_close(linear @ linear.transpose(1, 2), torch.eye(2).expand(4, 2, 2), rtol=0, atol=1e-5)


def test_carry_agrees_with_warping() -> None:
    size = 32
    cfg = RandAugmentConfig(ops=GEOMETRIC_OPS, cutout=(0.0, 0.0))
    maps = F.interpolate(torch.rand(16, 1, 4, 4, generator=gen(7)), size=(size, size), mode="bilinear",
                         align_corners=False)
    _, theta, _ = rand_augment(images(16), gen(8), cfg)
    carried, valid = carry(maps, theta, (size, size))
    grid = F.affine_grid(theta, [16, 1, size, size], align_corners=False)
    warped = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(carried, warped, rtol=0, atol=1e-6)
    assert torch.equal(valid[:, 0] > 0, (grid.abs() <= 1 + 1e-6).all(-1))
    assert 0.3 < valid.mean() < 1.0

    # a map seen in one strong view, carried into another strong view of the same images, equals the
    # original map carried there directly (maps linear in the coordinates make bilinear sampling exact)
    linear = ramp(16, size)[0][:, :1]
    in_view1 = F.grid_sample(linear, grid, mode="bilinear", padding_mode="border", align_corners=False)
    _, theta2, _ = rand_augment(images(16), gen(9), cfg)
    via_view1, _ = carry(in_view1, theta2, (size, size), src_theta=theta)
    direct, _ = carry(linear, theta2, (size, size))
    p1 = F.affine_grid(compose(invert(theta), theta2), [16, 1, size, size], align_corners=False)
    q = F.affine_grid(theta2, [16, 1, size, size], align_corners=False)
    exact = ((p1.abs() <= 1 - 1.0 / size).all(-1) & (q.abs() <= 1 - 3.0 / size).all(-1))[:, None]
    assert exact.sum() > 2000
    torch.testing.assert_close(via_view1[exact], direct[exact], rtol=0, atol=5e-5)


@pytest.mark.parametrize("op", [op for op in OPS if op not in ("autocontrast", "equalize")])
def test_magnitude_zero_is_the_identity(op: str) -> None:
    x = images(6)
    cfg = RandAugmentConfig(ops=(op,), magnitude=(0.0, 0.0), **PLAIN)
    out, theta, flip = rand_augment(x, gen(0), cfg)
    torch.testing.assert_close(out, x.float() / 255, rtol=0, atol=1e-6)
    torch.testing.assert_close(theta, torch.eye(2, 3).expand(6, 2, 3), rtol=0, atol=1e-7)
    assert not flip.any()


def _pil_op(img: PIL.Image.Image, op: str, m: float) -> PIL.Image.Image:
    factor = 1.0 - 0.95 * m
    enhance = {"brightness": PIL.ImageEnhance.Brightness, "color": PIL.ImageEnhance.Color,
               "contrast": PIL.ImageEnhance.Contrast, "sharpness": PIL.ImageEnhance.Sharpness}
    if op in enhance:
        return enhance[op](img).enhance(factor)
    if op == "posterize":
        return PIL.ImageOps.posterize(img, 8 - int(np.ceil(4 * m - 1e-6)))
    if op == "solarize":
        return PIL.ImageOps.solarize(img, 256 * (1 - m))
    return getattr(PIL.ImageOps, op)(img)  # autocontrast, equalize


@pytest.mark.parametrize("op", COLOUR_OPS)
@pytest.mark.parametrize("m", [0.35, 1.0])
def test_colour_ops_match_pil(op: str, m: float) -> None:
    x = images(4, size=16, seed=11)
    x[0, 1] = 77  # a constant channel
    out, _, _ = rand_augment(x, gen(0), RandAugmentConfig(ops=(op,), magnitude=(m, m), **PLAIN))
    for i in range(4):
        pil = _pil_op(PIL.Image.fromarray(x[i].permute(1, 2, 0).numpy()), op, m)
        ref = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255
        exact = op in ("equalize", "posterize", "solarize", "autocontrast")
        torch.testing.assert_close(out[i], ref, rtol=0, atol=(1.01 if exact else 1.6) / 255, msg=f"{op} image {i}")
    assert (out != x.float() / 255).any()


def test_cutout_is_a_grey_square_and_leaves_theta_alone() -> None:
    black = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    cfg = RandAugmentConfig(ops=("identity",), translate_px=0, flip=False)
    out, theta, _ = rand_augment(black, gen(0), cfg)
    assert torch.equal(theta, torch.eye(2, 3).expand(64, 2, 3))
    assert set(out.unique().tolist()) == {0.0, 0.5}
    grey = out[:, 0] == 0.5
    assert torch.equal(grey, (out == 0.5).all(1))
    rows, cols = grey.any(2).sum(1), grey.any(1).sum(1)
    assert torch.equal(grey.sum((1, 2)), rows * cols)  # a rectangle
    assert (rows <= 16).all() and (cols <= 16).all() and (rows * cols == 256).sum() > 10
    assert (rows * cols < 256).any()  # clipped at the border
    off = rand_augment(black, gen(0), RandAugmentConfig(ops=("identity",), **PLAIN))[0]
    assert not off.any()


def test_apply_prob_zero_keeps_only_the_pre_step() -> None:
    x = images(32)
    out, theta, flip = rand_augment(x, gen(5), RandAugmentConfig(apply_prob=0.0, cutout=(0.0, 0.0)))
    shift = theta[:, :, 2] * 32 / 2
    torch.testing.assert_close(shift, shift.round(), rtol=0, atol=1e-5)
    assert shift.abs().max() <= 4 and shift.abs().max() >= 3
    torch.testing.assert_close(theta[:, 0, 0], 1.0 - 2.0 * flip.float())
    # pixel-exact, as Augmenter.weak: view pixel (i, j) = original (i + dy, (31 - j if flipped else j) + dx)
    ar = torch.arange(32)
    for i in range(8):
        dx, dy = int(round(float(shift[i, 0]))), int(round(float(shift[i, 1])))
        cols = (31 - ar if flip[i] else ar) + dx
        rows = ar + dy
        ok = ((rows >= 0) & (rows < 32))[:, None] & ((cols >= 0) & (cols < 32))[None, :]
        ref = x[i].float()[:, rows.clamp(0, 31)][:, :, cols.clamp(0, 31)] / 255 * ok
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-6)


def test_op_draws_cover_the_list() -> None:
    """With apply_prob 1 and one geometric op per image, about 5/14 of the images move."""
    x = images(512, size=8)
    cfg = RandAugmentConfig(n_ops=1, apply_prob=1.0, cutout=(0.0, 0.0), translate_px=0, flip=False)
    out, theta, _ = rand_augment(x, gen(0), cfg)
    moved = (theta - torch.eye(2, 3)).abs().amax((1, 2)) > 1e-6
    assert abs(moved.float().mean().item() - 5 / 14) < 0.06


def test_batch_of_512_runs() -> None:
    out, theta, flip = rand_augment(images(512), gen(0))
    assert out.shape == (512, 3, 32, 32) and torch.isfinite(out).all()
    assert theta.shape == (512, 2, 3) and flip.shape == (512,)


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("n_ops", 0, "randaugment.n_ops=0 is invalid"),
    ("ops", ("rotate", "invert"), "randaugment.ops="),
    ("ops", (), "randaugment.ops="),
    ("apply_prob", 1.5, "randaugment.apply_prob=1.5"),
    ("magnitude", (0.5, 0.2), "randaugment.magnitude="),
    ("magnitude", (0.0, 2.0), "randaugment.magnitude="),
    ("cutout", (0.5,), "randaugment.cutout="),
    ("translate_px", -1, "randaugment.translate_px=-1"),
    ("flip", 1, "randaugment.flip=1"),
    ("padding_mode", "constant", "randaugment.padding_mode='constant'"),
])
def test_invalid_config_is_one_line(field: str, value: object, needle: str) -> None:
    cfg = RandAugmentConfig(**{field: value})
    with pytest.raises(ConfigError) as info:
        rand_augment(images(2), gen(0), cfg)
    assert needle in str(info.value) and "\n" not in str(info.value)
