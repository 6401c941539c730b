"""Tests for camssl.augment: geometry bookkeeping, carrying maps, randomness and config checks."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from camssl.augment import (
    AugmentConfig,
    Augmenter,
    StrongAugConfig,
    WeakAugConfig,
    carry,
    compose,
    invert,
)
from camssl.errors import ConfigError

NO_COLOUR = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)


def make_augmenter(
    weak: WeakAugConfig | None = None, strong: StrongAugConfig | None = None, unit: bool = True
) -> Augmenter:
    """An augmenter; ``unit`` uses mean 0 / std 1 so views are plain [0, 1] images."""
    cfg = AugmentConfig(weak=weak or WeakAugConfig(), strong=strong or StrongAugConfig())
    if unit:
        cfg.mean, cfg.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return Augmenter(cfg)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pixel_grid(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    return xs, ys


def blobs(b: int, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth, asymmetric uint8 images: a few coloured Gaussian blobs on a horizontal ramp."""
    g = gen(seed)
    xs, ys = pixel_grid(h, w)
    centres = torch.rand(b, 3, 2, generator=g) * torch.tensor([w, h])
    colours = torch.rand(b, 3, 3, generator=g) * 0.5
    sigma = 0.2 * min(h, w)
    d2 = (xs - centres[..., 0, None, None]) ** 2 + (ys - centres[..., 1, None, None]) ** 2  # b×3×h×w
    bump = torch.exp(-d2 / (2 * sigma**2))
    img = 0.1 + 0.3 * xs / w + torch.einsum("bkc,bkhw->bchw", colours, bump)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def waves(x: torch.Tensor, y: torch.Tensor, w: int) -> torch.Tensor:
    """Analytic smooth RGB function of pixel coordinates (x, y) -> 3×... values in (0, 1)."""
    k = 2 * math.pi / 20
    return torch.stack(
        [
            0.5 + 0.2 * torch.sin(k * x + 0.5 * k * y) + 0.2 * x / w,
            0.5 + 0.3 * torch.cos(0.7 * k * y - 0.3 * k * x + 1.0),
            0.4 + 0.2 * torch.sin(0.6 * k * (x + y)) + 0.1 * y / w,
        ]
    )


def source_points(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Normalized original-image points (B×H×W×2) that the pixel centres of a view come from."""
    return F.affine_grid(theta, [theta.shape[0], 1, h, w], align_corners=False)


def erode(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Shrink a B×1×H×W {0,1} mask by ``px`` pixels (the image border counts as outside)."""
    k = 2 * px + 1
    return -F.max_pool2d(F.pad(-mask, (px, px, px, px), value=0.0), k, stride=1)


def angle_of(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Rotation angle of thetas (flip-aware: the second column is unaffected by a flip)."""
    return torch.atan2(-theta[:, 0, 1] * (w / h), theta[:, 1, 1])


# --- 1. geometry matches content --------------------------------------------------------------


def test_strong_view_matches_analytic_geometry_non_square():
    """Independent check: each view pixel shows the content at theta(pixel) of the original."""
    h, w, b = 24, 40, 16
    xs, ys = pixel_grid(h, w)
    x = (waves(xs, ys, w).clamp(0, 1) * 255).round().to(torch.uint8).expand(b, 3, h, w).contiguous()
    aug = make_augmenter(strong=StrongAugConfig(**NO_COLOUR))
    view = aug.strong(x, gen(3))

    q = source_points(view.theta, h, w)
    qx, qy = ((q[..., 0] + 1) * w - 1) / 2, ((q[..., 1] + 1) * h - 1) / 2  # source pixel coords
    expected = waves(qx, qy, w).permute(1, 0, 2, 3)  # B×3×H×W
    inside = ((qx >= 0) & (qx <= w - 1) & (qy >= 0) & (qy <= h - 1)).unsqueeze(1).expand_as(expected)
    err = (view.images - expected).abs()[inside]
    assert inside.float().mean() > 0.3
    assert err.mean() < 3e-3  # bilinear resampling of a uint8 image of a smooth function
    assert err.max() < 1.5e-2

    # The rotation is isotropic in pixel units: D A D^-1 is scale × orthogonal.
    d = torch.diag(torch.tensor([w / 2, h / 2]))
    a_px = d @ view.theta[:, :, :2] @ torch.linalg.inv(d)
    gram = a_px.transpose(1, 2) @ a_px
    s2 = gram[:, 0, 0]
    torch.testing.assert_close(gram, s2[:, None, None] * torch.eye(2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_carry_content_matches_strong_view(padding_mode: str):
    b = 32
    x = blobs(b)
    aug = make_augmenter(strong=StrongAugConfig(**NO_COLOUR, padding_mode=padding_mode))
    view = aug.strong(x, gen(1))
    carried, valid = carry(x.float() / 255, view.theta, (32, 32))
    # At the edge of the valid region (within half a pixel of the image border) zero padding
    # blends in black; one pixel further in, every padding mode agrees with the content.
    mask = (valid if padding_mode == "border" else erode(valid, 1)).expand_as(carried).bool()
    for flipped in (True, False):  # both kinds are present in the batch and both must match
        sel = view.flip == flipped
        assert sel.sum() >= 8
        m = mask[sel]
        err = (carried[sel] - view.images[sel]).abs()[m]
        assert m.float().mean() > 0.3
        assert err.max() < 1e-5  # same sampling points, so the same values


def test_strong_flip_is_folded_into_theta():
    x = blobs(64)
    aug = make_augmenter(strong=StrongAugConfig(**NO_COLOUR, scale=(1.0, 1.0), translate=0.0, rotate_deg=0.0))
    view = aug.strong(x, gen(5))
    assert view.flip.any() and (~view.flip).any()
    expected = torch.where(view.flip[:, None, None, None], x.flip(-1), x).float() / 255
    torch.testing.assert_close(view.images, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(view.theta[:, 0, 0], 1.0 - 2.0 * view.flip.float())


@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_weak_view_is_exact_shifted_copy(padding_mode: str):
    b, h, w = 64, 32, 32
    x = blobs(b)
    aug = make_augmenter(weak=WeakAugConfig(translate_px=4, flip=True, padding_mode=padding_mode))
    view = aug.weak(x, gen(2))
    assert view.flip.any() and (~view.flip).any()

    # Recover the integer shift from theta and build the expected view by indexing.
    dx = torch.round(view.theta[:, 0, 2] * w / 2).long()
    dy = torch.round(view.theta[:, 1, 2] * h / 2).long()
    torch.testing.assert_close(view.theta[:, 0, 2] * w / 2, dx.float())
    assert dx.abs().max() == 4 and dy.abs().max() == 4
    # View column j shows original column (W - 1 - j if flipped else j) + dx, row i shows row i + dy.
    j = torch.arange(w).expand(b, w)
    cols = torch.where(view.flip[:, None], w - 1 - j, j) + dx[:, None]
    rows = torch.arange(h) + dy[:, None]
    inside = ((cols >= 0) & (cols < w))[:, None, :] & ((rows >= 0) & (rows < h))[:, :, None]  # B×H×W
    gathered = x[
        torch.arange(b)[:, None, None, None],
        torch.arange(3)[None, :, None, None],
        rows.clamp(0, h - 1)[:, None, :, None],
        cols.clamp(0, w - 1)[:, None, None, :],
    ]
    mask = inside[:, None].expand(b, 3, h, w)
    torch.testing.assert_close(view.images[mask], gathered[mask].float() / 255, atol=1e-5, rtol=0)

    # carry agrees with the weak view exactly where valid, and valid == inside.
    carried, valid = carry(x.float() / 255, view.theta, (h, w))
    assert torch.equal(valid[:, 0].bool(), inside)
    torch.testing.assert_close(carried[mask], view.images[mask], atol=1e-5, rtol=0)
    if padding_mode == "zeros":
        assert (view.images[~mask] == 0).all()


def test_low_resolution_map_carries_like_its_upsampling():
    """The Grad-CAM case: an 8×8 map carried to 32×32 ≈ augmenting its 32×32 upsampling."""
    b = 16
    cam = F.avg_pool2d(blobs(b, seed=7).float() / 255, 4)[:, :1]  # B×1×8×8, smooth
    up = F.interpolate(cam, (32, 32), mode="bilinear", align_corners=False)
    up_u8 = (up.expand(b, 3, 32, 32) * 255).round().to(torch.uint8)
    aug = make_augmenter(strong=StrongAugConfig(**NO_COLOUR, padding_mode="border"))
    view = aug.strong(up_u8, gen(4))

    carried, valid = carry(cam, view.theta, (32, 32))
    mask = erode(valid, 2).bool()
    err = (carried - view.images[:, :1]).abs()[mask]
    assert mask.float().mean() > 0.3
    assert err.mean() < 1e-2
    assert err.max() < 4e-2


# --- 2. composition -----------------------------------------------------------------------------


def test_carry_through_weak_then_strong_equals_direct():
    b = 16
    x = blobs(b, seed=3)
    content = x.float() / 255
    aug = make_augmenter(strong=StrongAugConfig(**NO_COLOUR))
    weak = aug.weak(x, gen(10))
    strong = aug.strong(x, gen(11))

    in_weak, _ = carry(content, weak.theta, (32, 32))
    via_weak, valid_via = carry(in_weak, strong.theta, (32, 32), src_theta=weak.theta)
    direct, valid_direct = carry(content, strong.theta, (32, 32))

    both = erode(valid_via * valid_direct, 1).expand_as(direct).bool()
    err = (via_weak - direct).abs()[both]
    assert both.float().mean() > 0.2
    # Weak shifts are whole pixels, so going through the weak view loses nothing.
    assert err.max() < 1e-4


def test_compose_and_invert_algebra():
    theta = make_augmenter().strong(blobs(8), gen(0)).theta
    identity = torch.eye(2, 3).expand(8, 2, 3)
    torch.testing.assert_close(compose(theta, invert(theta)), identity, atol=1e-5, rtol=0)
    torch.testing.assert_close(compose(invert(theta), theta), identity, atol=1e-5, rtol=0)
    other = make_augmenter().weak(blobs(8), gen(1)).theta
    # compose(a, b) applies b first: check on a point.
    p = torch.tensor([0.3, -0.2, 1.0])
    b_p = other @ p
    a_b_p = theta @ torch.cat([b_p, torch.ones(8, 1)], dim=1).unsqueeze(-1)
    torch.testing.assert_close(compose(theta, other) @ p, a_b_p.squeeze(-1), atol=1e-6, rtol=0)


def test_carry_is_differentiable_and_float32():
    maps = torch.rand(4, 2, 8, 8, dtype=torch.bfloat16, requires_grad=True)
    theta = make_augmenter().strong(blobs(4), gen(0)).theta
    carried, valid = carry(maps, theta, (32, 32), src_theta=make_augmenter().weak(blobs(4), gen(1)).theta)
    assert carried.dtype == torch.float32 and valid.dtype == torch.float32
    assert carried.shape == (4, 2, 32, 32) and valid.shape == (4, 1, 32, 32)
    carried.sum().backward()
    assert maps.grad is not None and maps.grad.abs().sum() > 0


# --- 3. valid mask ------------------------------------------------------------------------------


def test_valid_mask_identity_shift_and_rotation():
    aug = make_augmenter()
    x = blobs(2)
    _, valid = carry(torch.rand(2, 1, 8, 8), aug.original(x).theta, (32, 32))
    assert (valid == 1).all()

    # A view shifted by +4 px in x and -4 px in y: 4 invalid columns on the right, rows on top.
    theta = torch.tensor([[[1.0, 0.0, 8 / 32], [0.0, 1.0, -8 / 32]]])
    _, valid = carry(torch.rand(1, 1, 8, 8), theta, (32, 32))
    v = valid[0, 0]
    assert (v[:, 28:] == 0).all() and (v[:4] == 0).all()
    assert (v[4:, :28] == 1).all()

    # The same from the augmenter: every sample's invalid columns/rows equal |shift|.
    view = make_augmenter(weak=WeakAugConfig(translate_px=4)).weak(blobs(64), gen(3))
    _, valid = carry(torch.rand(64, 1, 8, 8), view.theta, (32, 32))
    dx = torch.round(view.theta[:, 0, 2] * 16).abs()
    dy = torch.round(view.theta[:, 1, 2] * 16).abs()
    invalid_cols = (valid[:, 0] == 0).all(dim=1).sum(dim=1)
    invalid_rows = (valid[:, 0] == 0).all(dim=2).sum(dim=1)
    torch.testing.assert_close(invalid_cols.float(), dx)
    torch.testing.assert_close(invalid_rows.float(), dy)

    # 30° rotation of the full image: corners invalid, centre valid.
    a = math.radians(30)
    theta = torch.tensor([[[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]])
    _, valid = carry(torch.rand(1, 1, 8, 8), theta, (32, 32))
    v = valid[0, 0]
    assert v[0, 0] == 0 and v[0, -1] == 0 and v[-1, 0] == 0 and v[-1, -1] == 0
    assert (v[8:24, 8:24] == 1).all()


# --- 4. determinism -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["weak", "strong"])
def test_same_seed_same_view_and_global_rng_untouched(kind: str):
    aug = Augmenter(AugmentConfig())
    x = blobs(8)
    state = torch.get_rng_state()
    a = getattr(aug, kind)(x, gen(42))
    b = getattr(aug, kind)(x, gen(42))
    c = getattr(aug, kind)(x, gen(43))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.images, b.images) and torch.equal(a.theta, b.theta) and torch.equal(a.flip, b.flip)
    assert not torch.equal(a.theta, c.theta)
    assert not torch.equal(a.images, c.images)


def test_geometry_does_not_depend_on_colour_settings():
    x = blobs(8)
    a = make_augmenter(strong=StrongAugConfig()).strong(x, gen(9))
    b = make_augmenter(strong=StrongAugConfig(**NO_COLOUR)).strong(x, gen(9))
    assert torch.equal(a.theta, b.theta)


# --- 5. statistics ------------------------------------------------------------------------------


def test_flip_frequency_and_rotation_range():
    b, h, w = 4000, 8, 12
    x = torch.zeros(b, 3, h, w, dtype=torch.uint8)
    aug = make_augmenter(strong=StrongAugConfig(rotate_deg=20.0, **NO_COLOUR))
    strong = aug.strong(x, gen(0))
    weak = aug.weak(x, gen(1))
    for view in (strong, weak):
        assert abs(view.flip.float().mean().item() - 0.5) < 0.04
    assert torch.equal(weak.theta[:, 0, 0] < 0, weak.flip)
    assert torch.equal(torch.det(strong.theta[:, :, :2]) < 0, strong.flip)

    angles = torch.rad2deg(angle_of(strong.theta, h, w))
    assert angles.abs().max() <= 20.0 + 1e-3
    assert angles.min() < -18 and angles.max() > 18
    assert abs(angles.mean().item()) < 1.0
    scale = torch.sqrt(torch.abs(torch.det(strong.theta[:, :, :2])))
    assert scale.min() >= 0.6 - 1e-5 and scale.max() <= 1.0 + 1e-5
    # The crop window's centre stays within both the translate range and the image.
    centre = strong.theta[:, :, 2]
    assert (centre.abs() <= 2 * 0.125 + 1e-6).all()
    assert (centre.abs() <= (1 - scale)[:, None] + 1e-5).all()

    no_flip = make_augmenter(weak=WeakAugConfig(flip=False), strong=StrongAugConfig(flip=False))
    assert not no_flip.weak(x, gen(0)).flip.any() and not no_flip.strong(x, gen(0)).flip.any()


def test_colour_jitter_off_changes_nothing():
    x = blobs(16)
    identity = StrongAugConfig(scale=(1.0, 1.0), translate=0.0, rotate_deg=0.0, flip=False, **NO_COLOUR)
    aug = make_augmenter(strong=identity, unit=False)
    view = aug.strong(x, gen(0))
    torch.testing.assert_close(view.images, aug.normalize(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(view.theta, aug.original(x).theta)


def test_brightness_jitter_scales_mean_brightness():
    b = 256
    x = (torch.rand(b, 3, 16, 16, generator=gen(0)) * 0.5 * 255 + 0.1 * 255).round().to(torch.uint8)
    geometry_off = dict(scale=(1.0, 1.0), translate=0.0, rotate_deg=0.0, flip=False)
    aug = make_augmenter(strong=StrongAugConfig(**geometry_off, **{**NO_COLOUR, "brightness": 0.4}))
    view = aug.strong(x, gen(1))
    ratio = view.images.mean(dim=(1, 2, 3)) / (x.float() / 255).mean(dim=(1, 2, 3))
    assert ratio.min() >= 0.6 - 1e-4 and ratio.max() <= 1.4 + 1e-4
    assert ratio.min() < 0.7 and ratio.max() > 1.3
    # Brightness only scales: the per-image ratio is the same at every pixel.
    per_pixel = view.images / (x.float() / 255)
    expected = ratio[:, None, None, None].expand_as(per_pixel)
    torch.testing.assert_close(per_pixel, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["contrast", "saturation", "hue"])
def test_each_colour_jitter_changes_colours_within_range(name: str):
    x = blobs(32)
    geometry_off = dict(scale=(1.0, 1.0), translate=0.0, rotate_deg=0.0, flip=False)
    strength = 0.3 if name == "hue" else 0.8
    aug = make_augmenter(strong=StrongAugConfig(**geometry_off, **{**NO_COLOUR, name: strength}))
    view = aug.strong(x, gen(2))
    diff = (view.images - x.float() / 255).abs().mean(dim=(1, 2, 3))
    assert (diff > 1e-3).float().mean() > 0.8
    assert view.images.min() >= 0 and view.images.max() <= 1
    if name == "hue":  # a hue rotation keeps each pixel's max and min channel (value, chroma)
        orig = x.float() / 255
        torch.testing.assert_close(view.images.amax(1), orig.amax(1), atol=2e-3, rtol=0)
        torch.testing.assert_close(view.images.amin(1), orig.amin(1), atol=2e-3, rtol=0)


def test_normalize_round_trip():
    aug = Augmenter(AugmentConfig())
    x = blobs(4)
    z = aug.normalize(x)
    assert z.dtype == torch.float32
    torch.testing.assert_close(aug.denormalize(z), x.float() / 255, atol=1e-6, rtol=0)
    mean = torch.tensor(AugmentConfig().mean).view(1, 3, 1, 1)
    std = torch.tensor(AugmentConfig().std).view(1, 3, 1, 1)
    torch.testing.assert_close(z, (x.float() / 255 - mean) / std)
    assert torch.equal(aug.original(x).images, z)


# --- 6. config validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "field", "value", "name"),
    [
        ("weak", "translate_px", -1, "augment.weak.translate_px=-1"),
        ("weak", "translate_px", 2.5, "augment.weak.translate_px=2.5"),
        ("weak", "flip", "yes", "augment.weak.flip='yes'"),
        ("weak", "padding_mode", "mirror", "augment.weak.padding_mode='mirror'"),
        ("strong", "scale", (0.0, 1.0), "augment.strong.scale=(0.0, 1.0)"),
        ("strong", "scale", (0.9, 0.5), "augment.strong.scale=(0.9, 0.5)"),
        ("strong", "scale", (0.5,), "augment.strong.scale=(0.5,)"),
        ("strong", "translate", -0.1, "augment.strong.translate=-0.1"),
        ("strong", "rotate_deg", -5.0, "augment.strong.rotate_deg=-5.0"),
        ("strong", "brightness", -0.4, "augment.strong.brightness=-0.4"),
        ("strong", "contrast", float("nan"), "augment.strong.contrast=nan"),
        ("strong", "saturation", "high", "augment.strong.saturation='high'"),
        ("strong", "hue", 0.7, "augment.strong.hue=0.7"),
        ("strong", "padding_mode", "wrap", "augment.strong.padding_mode='wrap'"),
        (None, "std", (0.2, 0.0, 0.2), "augment.std=(0.2, 0.0, 0.2)"),
        (None, "mean", (0.5, 0.5), "augment.mean=(0.5, 0.5)"),
    ],
)
def test_config_validation(section: str | None, field: str, value: object, name: str):
    cfg = AugmentConfig()
    if section is None:
        cfg = replace(cfg, **{field: value})
    else:
        setattr(cfg, section, replace(getattr(cfg, section), **{field: value}))
    with pytest.raises(ConfigError, match="is invalid") as info:
        cfg.validate()
    assert str(info.value).startswith(name)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError):
        Augmenter(cfg)


def test_config_error_message_names_allowed_values():
    cfg = AugmentConfig(strong=StrongAugConfig(hue=0.7))
    with pytest.raises(ConfigError, match=r"augment\.strong\.hue=0\.7 is invalid: .*\[0, 0\.5\]"):
        cfg.validate()
    cfg = AugmentConfig(weak=WeakAugConfig(padding_mode="mirror"))
    with pytest.raises(ConfigError, match="zeros, border, reflection"):
        cfg.validate()


def test_default_and_list_valued_config_is_valid():
    AugmentConfig().validate()
    AugmentConfig(strong=StrongAugConfig(scale=[0.5, 1.0]), mean=[0.5, 0.5, 0.5], std=[1, 1, 1]).validate()


# --- 7. identity carry == interpolate ------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_size", "out_size"), [((8, 8), (32, 32)), ((5, 7), (24, 40)), ((32, 32), (8, 8))]
)
def test_identity_carry_equals_bilinear_interpolate(in_size: tuple[int, int], out_size: tuple[int, int]):
    maps = torch.rand(3, 2, *in_size, generator=gen(0))
    identity = torch.eye(2, 3).expand(3, 2, 3)
    carried, valid = carry(maps, identity, out_size)
    expected = F.interpolate(maps, out_size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(carried, expected, atol=1e-6, rtol=0)
    assert (valid == 1).all()
    # Carrying from a view into the same view is also the identity.
    theta = make_augmenter().strong(blobs(3), gen(1)).theta
    carried, _ = carry(maps, theta, out_size, src_theta=theta)
    torch.testing.assert_close(carried, expected, atol=1e-5, rtol=0)


# --- 8. batched ---------------------------------------------------------------------------------


def test_large_batch_shapes_and_dtypes():
    b = 512
    x = torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8, generator=gen(0))
    aug = Augmenter(AugmentConfig())
    g = gen(1)
    for view in (aug.original(x), aug.weak(x, g), aug.strong(x, g)):
        assert view.images.shape == (b, 3, 32, 32) and view.images.dtype == torch.float32
        assert view.theta.shape == (b, 2, 3) and view.theta.dtype == torch.float32
        assert view.flip.shape == (b,) and view.flip.dtype == torch.bool
        assert torch.isfinite(view.images).all()
    carried, valid = carry(torch.rand(b, 1, 8, 8), view.theta, (32, 32))
    assert carried.shape == (b, 1, 32, 32) and valid.shape == (b, 1, 32, 32)


def test_bad_image_input_is_rejected():
    aug = Augmenter(AugmentConfig())
    with pytest.raises(ValueError):
        aug.weak(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), gen(0))
    with pytest.raises(TypeError):
        aug.normalize(torch.zeros(2, 3, 8, 8, dtype=torch.int64))
