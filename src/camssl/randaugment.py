"""Batched, on-device RandAugment + Cutout: FixMatch's strong view, with exact geometry.

:func:`rand_augment` returns ``(images01, theta, flip)`` for a batch, the fields of a
:class:`camssl.augment.View` before normalisation; ``theta`` follows the conventions of
:mod:`camssl.augment` (it maps a point of the view to the ORIGINAL image, normalized
coordinates, ``align_corners=False``), so Grad-CAM maps can be carried between views exactly.

What each image gets, in this order:

1. the weak pre-step FixMatch-pytorch applies before RandAugment: a horizontal flip with probability
   0.5 and an integer shift in ``[-translate_px, translate_px]`` pixels per axis
   (FixMatch-pytorch ``dataset/cifar.py``: RandomHorizontalFlip, RandomCrop(32, padding 4));
2. ``n_ops`` ops drawn uniformly, with replacement, from the 14 ops of FixMatch-pytorch's
   ``fixmatch_augment_pool`` and USB's ``augment_list``
   (``semilearn/datasets/augmentation/randaugment.py``), each applied with probability
   ``apply_prob`` (FixMatch-pytorch's ``RandAugmentMC``: 0.5; USB: always) and its own
   magnitude ``m`` drawn uniformly from ``magnitude`` (default ``[0, 1]``);
3. Cutout: a square of side ``frac * min(H, W)``, ``frac`` uniform in ``cutout``, at a uniform
   random centre, clipped at the border and filled grey 0.5 (FixMatch-pytorch: side 16 on
   32x32 images, grey 127; USB: side uniform in ``[0, 0.5]`` of the width). Cutout moves no
   pixel, so ``theta`` ignores it.

Op strengths at ``m = 1`` are the ends of USB's ranges (FixMatch-pytorch's pool has the same
maxima but draws ``v`` in 1..9 of 10, so it reaches at most 90% of them): rotate ±30°,
shear_x/shear_y ±0.3, translate_x/translate_y ±0.3 of the side (a random sign each),
posterize to 4 bits, solarize threshold 0 of 256; brightness, color (saturation), contrast
and sharpness blend with their PIL "degenerate" image (black, grey scale, mean grey, 3x3
SMOOTH-filtered) with factor ``1 - 0.95 m`` (USB draws the factor from ``[0.05, 0.95]``).
identity, autocontrast and equalize have no magnitude.

camssl's choices (none of them is FixMatch's or USB's):

* magnitude 0 is the identity of every op with a magnitude (factor 1, 8 bits, threshold
  above 1, zero angle/shear/shift), so USB's factor range ``[0.05, 0.95]`` becomes
  ``[0.05, 1]`` and posterize draws 8 - ceil(4 m) bits (4..7 for m in (0, 1], like USB);
* all geometry (flip, shift, rotate, shear, translate) is composed into ONE affine ``theta``
  and applied with ONE bilinear ``grid_sample``; pixels from outside the image are black
  (``padding_mode="zeros"``, PIL's fill for rotate/shear/translate; FixMatch-pytorch pads its
  pre-step shift by reflection). Rotation and shear are about the image centre (PIL's shear
  is about the top-left corner); translate_x/y shifts are not rounded to whole pixels
  (FixMatch-pytorch rounds them; USB does not);
* the colour ops then run on the warped image in the drawn order, so their statistics
  (autocontrast, contrast, equalize) include the fill, whatever the drawn order was;
* equalize and posterize quantise to 256 levels first; equalize is PIL's algorithm
  (per-channel 256-bin histogram, cumulative sum, same rounding) on the quantised image;
  the other colour ops work on floats without rounding to 8 bits;
* Cutout's square is clipped at every border (FixMatch-pytorch and USB keep the full side at
  the top and left borders and clip only at the bottom and right).

All randomness comes from the caller's generator (drawn on ``gen.device``, then moved to the
images' device), with a fixed number of draws per call, so a seed gives identical output.
The pixel work is batched: one pass per op kind over the rows that drew it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from camssl.checks import check_bool, in_range, integer_at_least, invalid, numbers, one_of
from camssl.geometry import compose, to_unit, warp

PADDING_MODES = ("zeros", "border", "reflection")

__all__ = ["COLOUR_OPS", "GEOMETRIC_OPS", "OPS", "RandAugmentConfig", "rand_augment"]

OPS = ("identity", "autocontrast", "brightness", "color", "contrast", "equalize", "posterize", "rotate",
       "sharpness", "shear_x", "shear_y", "solarize", "translate_x", "translate_y")
"""The ops of FixMatch-pytorch's ``fixmatch_augment_pool`` and USB's ``augment_list``."""
GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
COLOUR_OPS = tuple(op for op in OPS if op not in GEOMETRIC_OPS and op != "identity")

ROTATE_DEG = 30.0  # USB (Rotate, -30, 30)
SHEAR = 0.3  # USB (ShearX/ShearY, -0.3, 0.3)
TRANSLATE = 0.3  # USB (TranslateX/Y, -0.3, 0.3), a fraction of the side
MIN_FACTOR = 0.05  # USB's lower end of the brightness/color/contrast/sharpness factor
MIN_BITS = 4  # USB (Posterize, 4, 8)
CUTOUT_FILL = 0.5
_LUMA = (0.299, 0.587, 0.114)  # PIL's convert("L")
_SMOOTH = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))  # PIL ImageFilter.SMOOTH, divided by 13


@dataclass
class RandAugmentConfig:
    """RandAugment + Cutout settings (defaults: FixMatch-pytorch's RandAugmentMC(2, 10) with USB's ranges)."""

    n_ops: int = 2
    """Ops drawn per image (FixMatch-pytorch: 2; USB's CIFAR recipe: 3)."""
    ops: tuple[str, ...] = OPS
    """The op list to draw from (a subset of :data:`OPS`, e.g. :data:`GEOMETRIC_OPS`)."""
    apply_prob: float = 0.5
    """Probability that a drawn op is applied (FixMatch-pytorch: 0.5; USB: 1)."""
    magnitude: tuple[float, float] = (0.0, 1.0)
    """Range ``[a, b]`` within ``[0, 1]`` of the per-op magnitude; 1 = the strongest (see module doc)."""
    cutout: tuple[float, float] = (0.5, 0.5)
    """Range of Cutout's side as a fraction of the image side; ``(0, 0)`` turns it off."""
    translate_px: int = 4
    """Pre-step shift: an integer in ``[-t, t]`` pixels per axis (FixMatch: 4 at 32x32)."""
    flip: bool = True
    """Pre-step horizontal flip with probability 0.5."""
    padding_mode: str = "zeros"
    """Fill of pixels from outside the image: "zeros" (black), "border" or "reflection"."""

    prefix: ClassVar[str] = "augment.randaugment"  # where the settings sit in a config (for messages)

    def validate(self) -> None:
        """Raise :class:`~camssl.errors.ConfigError` naming the first invalid field."""
        p = self.prefix
        integer_at_least(f"{p}.n_ops", self.n_ops, 1)
        if isinstance(self.ops, str) or not isinstance(self.ops, tuple | list) or not self.ops \
                or any(op not in OPS for op in self.ops):
            raise invalid(f"{p}.ops", self.ops, f"must be a non-empty list of: {', '.join(OPS)}")
        in_range(f"{p}.apply_prob", self.apply_prob, 0.0, 1.0)
        for name in ("magnitude", "cutout"):
            lo, hi = numbers(f"{p}.{name}", getattr(self, name), 2)
            if not 0.0 <= lo <= hi <= 1.0:
                raise invalid(f"{p}.{name}", getattr(self, name), "must be a pair (a, b) with 0 <= a <= b <= 1")
        integer_at_least(f"{p}.translate_px", self.translate_px, 0)
        check_bool(f"{p}.flip", self.flip)
        one_of(f"{p}.padding_mode", self.padding_mode, PADDING_MODES)


@dataclass
class _Draws:
    kinds: Tensor  # B×n op index into OPS (identity where not applied)
    magnitude: Tensor  # B×n in [0, 1]
    sign: Tensor  # B×n ±1
    flip: Tensor  # B bool
    shift: Tensor  # B×2 integer pixels (x, y)
    cutout: Tensor  # B×3 uniform: side, centre x, centre y


def rand_augment(x: Tensor, gen: torch.Generator,
                 cfg: RandAugmentConfig | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """FixMatch's strong view of a batch: pre-step, RandAugment, Cutout (see the module doc).

    Args:
        x: ``B×3×H×W`` uint8 images, or float images in ``[0, 1]``, on any device.
        gen: the caller's generator (any device); the global RNG is never used.
        cfg: settings; ``None`` for the defaults.

    Returns:
        ``(images01, theta, flip)``: float32 ``B×3×H×W`` images in ``[0, 1]`` (not normalized),
        ``B×2×3`` float32 theta and ``B`` bool flip, as in :class:`camssl.augment.View`.
        Without colour ops and Cutout, ``images01`` equals
        ``grid_sample(x01, affine_grid(theta, size, align_corners=False), align_corners=False)``
        (with ``padding_mode``).

    Raises:
        ConfigError: an invalid ``cfg``.
    """
    cfg = cfg or RandAugmentConfig()
    cfg.validate()
    x01 = to_unit(x)
    b, _, h, w = x01.shape
    draws = _draw(b, cfg, gen, x01.device)
    theta = _pre_step_theta(draws, h, w)
    for slot in range(cfg.n_ops):
        theta = compose(theta, _op_theta(draws.kinds[:, slot], draws.sign[:, slot] * draws.magnitude[:, slot], h, w))
    images = warp(x01, theta, cfg.padding_mode)
    for slot in range(cfg.n_ops):
        for name in dict.fromkeys(cfg.ops):
            if name in COLOUR_OPS:
                rows = (draws.kinds[:, slot] == OPS.index(name)).nonzero().squeeze(1)
                if rows.numel():
                    images[rows] = _COLOUR[name](images[rows], draws.magnitude[rows, slot])
    images = _cutout(images, draws.cutout, cfg.cutout)
    return images.clamp(0.0, 1.0), theta, draws.flip


def _draw(b: int, cfg: RandAugmentConfig, gen: torch.Generator, device: torch.device) -> _Draws:
    """Every random number of one call, a fixed count of draws whatever the config."""
    n, t = cfg.n_ops, cfg.translate_px
    choice = torch.randint(0, len(cfg.ops), (b, n), generator=gen, device=gen.device).to(device)
    u = torch.rand(b, n, 3, generator=gen, device=gen.device).to(device)
    coin = torch.rand(b, generator=gen, device=gen.device).to(device) < 0.5
    shift = torch.randint(-t, t + 1, (b, 2), generator=gen, device=gen.device).to(device)
    cut = torch.rand(b, 3, generator=gen, device=gen.device).to(device)
    lookup = torch.tensor([OPS.index(op) for op in cfg.ops], device=device)
    kinds = torch.where(u[..., 2] < cfg.apply_prob, lookup[choice], OPS.index("identity"))
    lo, hi = cfg.magnitude
    sign = torch.where(u[..., 1] < 0.5, -1.0, 1.0)
    flip = coin if cfg.flip else torch.zeros_like(coin)
    return _Draws(kinds, lo + (hi - lo) * u[..., 0], sign, flip, shift, cut)


def _pre_step_theta(draws: _Draws, h: int, w: int) -> Tensor:
    """Flip, then an integer shift, exactly as :meth:`camssl.augment.Augmenter.weak`."""
    b = draws.flip.shape[0]
    theta = torch.zeros(b, 2, 3, device=draws.flip.device)
    theta[:, 0, 0] = 1.0 - 2.0 * draws.flip.float()
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = draws.shift[:, 0] * (2.0 / w)
    theta[:, 1, 2] = draws.shift[:, 1] * (2.0 / h)
    return theta


def _op_theta(kinds: Tensor, value: Tensor, h: int, w: int) -> Tensor:
    """``B×2×3`` theta of one op slot: view point -> point of the slot's input; identity for non-geometric ops.

    ``value`` is the signed magnitude in ``[-1, 1]``. A rotation by ``+a`` shows the content
    rotated counter-clockwise (like PIL's ``rotate(a)``); ``shear_x`` samples input
    ``x + s·y`` (PIL's ``(1, s, 0, 0, 1, 0)``, but about the centre); ``translate_x`` samples
    input ``x + t·W`` pixels (PIL's ``(1, 0, t·W, 0, 1, 0)``).
    """
    zero = torch.zeros_like(value)

    def pick(name: str, scale: float) -> Tensor:
        return torch.where(kinds == OPS.index(name), value * scale, zero)

    angle = pick("rotate", math.radians(ROTATE_DEG))
    shear_x, shear_y = pick("shear_x", SHEAR), pick("shear_y", SHEAR)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # rotation isotropic in pixels: D^-1 R D with D = diag(W/2, H/2); shears likewise
    rot = torch.stack([torch.stack([cos, -sin * (h / w)], -1), torch.stack([sin * (w / h), cos], -1)], -2)
    one = torch.ones_like(value)
    shx = torch.stack([torch.stack([one, shear_x * (h / w)], -1), torch.stack([zero, one], -1)], -2)
    shy = torch.stack([torch.stack([one, zero], -1), torch.stack([shear_y * (w / h), one], -1)], -2)
    shift = torch.stack([pick("translate_x", 2.0 * TRANSLATE), pick("translate_y", 2.0 * TRANSLATE)], -1)
    return torch.cat([rot @ shx @ shy, shift.unsqueeze(-1)], dim=-1)


def _cutout(images: Tensor, u: Tensor, frac: tuple[float, float]) -> Tensor:
    """Grey squares of side ``frac * min(H, W)`` at uniform centres, clipped at the border."""
    b, _, h, w = images.shape
    side = (frac[0] + (frac[1] - frac[0]) * u[:, 0]) * min(h, w)
    cx, cy = u[:, 1] * w, u[:, 2] * h
    cols = torch.arange(w, device=images.device) + 0.5
    rows = torch.arange(h, device=images.device) + 0.5
    inside_x = (cols[None, :] - cx[:, None]).abs() < side[:, None] / 2
    inside_y = (rows[None, :] - cy[:, None]).abs() < side[:, None] / 2
    mask = (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1)
    return torch.where(mask, torch.full_like(images, CUTOUT_FILL), images)


# ---------------------------------------------------------------- colour ops: (n×3×H×W in [0, 1], n magnitudes)


def _factor(m: Tensor) -> Tensor:
    return (1.0 - (1.0 - MIN_FACTOR) * m).view(-1, 1, 1, 1)


def _blend(images: Tensor, degenerate: Tensor, m: Tensor) -> Tensor:
    """PIL's ``Image.blend(degenerate, images, factor)``, clipped to [0, 1]."""
    f = _factor(m)
    return (degenerate + f * (images - degenerate)).clamp(0.0, 1.0)


def _gray(images: Tensor) -> Tensor:
    r, g, b = images.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _quantise(images: Tensor) -> Tensor:
    return (images * 255.0).round().clamp(0, 255).long()


def _autocontrast(images: Tensor, m: Tensor) -> Tensor:
    """Per-channel min -> 0, max -> 1 (PIL's autocontrast, cutoff 0); constant channels unchanged."""
    lo = images.amin(dim=(-2, -1), keepdim=True)
    hi = images.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    stretched = (images - lo) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, stretched, images)


def _brightness(images: Tensor, m: Tensor) -> Tensor:
    return _blend(images, torch.zeros_like(images), m)


def _color(images: Tensor, m: Tensor) -> Tensor:
    return _blend(images, _gray(images).expand_as(images), m)


def _contrast(images: Tensor, m: Tensor) -> Tensor:
    return _blend(images, _gray(images).mean(dim=(-2, -1), keepdim=True).expand_as(images), m)


def _sharpness(images: Tensor, m: Tensor) -> Tensor:
    """Blend with the SMOOTH-filtered image; border pixels are their own degenerate (as PIL)."""
    kernel = torch.tensor(_SMOOTH, dtype=images.dtype, device=images.device) / 13.0
    smooth = F.conv2d(images, kernel.expand(3, 1, 3, 3), groups=3)
    degenerate = images.clone()
    degenerate[..., 1:-1, 1:-1] = smooth
    return _blend(images, degenerate, m)


def _posterize(images: Tensor, m: Tensor) -> Tensor:
    """Keep the top ``8 - ceil(4 m)`` bits of each 8-bit value."""
    drop = torch.ceil((8 - MIN_BITS) * m - 1e-6).clamp(0, 8 - MIN_BITS).long().view(-1, 1, 1, 1)
    return ((_quantise(images) >> drop) << drop).float() / 255.0


def _solarize(images: Tensor, m: Tensor) -> Tensor:
    """Invert values at or above the threshold ``256 (1 - m)`` of 255 (PIL's solarize)."""
    threshold = ((1.0 - m) * (256.0 / 255.0)).view(-1, 1, 1, 1)
    return torch.where(images >= threshold, 1.0 - images, images)


def _equalize(images: Tensor, m: Tensor) -> Tensor:
    """PIL's equalize per channel on the 8-bit quantised image (256-bin histogram, cumulative sum)."""
    n, c, h, w = images.shape
    q = _quantise(images).view(n, c, h * w)
    hist = torch.zeros(n, c, 256, dtype=torch.long, device=images.device).scatter_add_(2, q, torch.ones_like(q))
    top = hist.gather(2, q.amax(dim=2, keepdim=True))
    step = (h * w - top) // 255
    below = hist.cumsum(dim=2) - hist
    lut = ((step // 2 + below) // step.clamp_min(1)).clamp(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=images.device).expand_as(lut))
    return (lut.gather(2, q).float() / 255.0).view(n, c, h, w)


_COLOUR = {"autocontrast": _autocontrast, "brightness": _brightness, "color": _color, "contrast": _contrast,
           "equalize": _equalize, "posterize": _posterize, "sharpness": _sharpness, "solarize": _solarize}
