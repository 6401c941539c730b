"""Batched, geometry-tracking image augmentation on tensors.

Every augmented view records the affine transform that produced it, so a spatial map
computed on one view (for example a Grad-CAM map) can be carried into the frame of any
other view of the same image (:func:`carry`).

Conventions
-----------
*Normalized coordinates* are those of :func:`torch.nn.functional.affine_grid` /
:func:`~torch.nn.functional.grid_sample` with ``align_corners=False``: ``x`` runs along the
width and ``y`` along the height, ``(-1, -1)`` is the top-left corner of the top-left pixel
and ``(1, 1)`` the bottom-right corner of the bottom-right pixel, so the centre of pixel
column ``j`` of an image ``W`` pixels wide is at ``x = (2j + 1) / W - 1`` (likewise for rows).

*theta* (``B×2×3``, float32) of a :class:`View` maps a point ``p = (x, y)`` of that view to the
point ``q = theta[:, :, :2] @ p + theta[:, :, 2]`` of the ORIGINAL image it was sampled from,
both in normalized coordinates; the view is exactly
``grid_sample(original, affine_grid(theta, size, align_corners=False), align_corners=False)``
before any colour change.  The original view has the identity theta.  The linear part is

    ``A = s · D⁻¹ R(α) D · F``

where ``F = diag(-1, 1)`` for a horizontal flip (else the identity), ``D = diag(W/2, H/2)``
converts normalized to pixel units (so the rotation is isotropic in pixels for non-square
images), ``R(α) = [[cos α, -sin α], [sin α, cos α]]`` and ``s`` is the side scale of the crop
window.  Because image rows grow downwards, a view whose theta rotates by ``+α`` shows the
content rotated counter-clockwise by ``α`` on screen.  The translation ``theta[:, :, 2]`` is
the centre of the crop window in the original image.  Weak views have ``s = 1``, ``α = 0``
and translation ``(2·dx/W, 2·dy/H)`` for integer shifts ``dx, dy``: view pixel ``(i, j)`` shows
original pixel ``(i + dy, (W - 1 - j if flipped else j) + dx)`` exactly.

:func:`compose` and :func:`invert` treat thetas as ``3×3`` homogeneous matrices with the
last row ``(0, 0, 1)``; ``compose(a, b)`` is ``a ∘ b`` (apply ``b`` first).

Images enter as ``uint8`` ``B×3×H×W`` tensors (float tensors in ``[0, 1]`` are accepted too)
on the training device.  Random parameters are drawn from the caller's
:class:`torch.Generator` on the generator's device and then moved to the images' device; the
global RNG is never used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from camssl.checks import check_bool, in_range, integer_at_least, invalid, numbers, one_of
from camssl.geometry import carry, compose, invert, to_unit, warp
from camssl.randaugment import RandAugmentConfig, rand_augment

__all__ = ["AugmentConfig", "Augmenter", "StrongAugConfig", "View", "WeakAugConfig", "carry", "compose", "invert"]

PADDING_MODES = ("zeros", "border", "reflection")

# ITU-R 601-2 luma weights, as used by torchvision's ColorJitter.
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class WeakAugConfig:
    """Random crop with padding (an integer pixel shift) plus horizontal flip."""

    translate_px: int = 4
    """Shift drawn uniformly from the integers in ``[-t, t]`` on each axis (== pad-``t`` crop)."""
    flip: bool = True
    """Flip horizontally with probability 0.5."""
    padding_mode: str = "reflection"
    """How pixels shifted in from outside are filled: "zeros", "border" or "reflection"."""


@dataclass
class StrongAugConfig:
    """The strong view: camssl's zoom-in crop, rotation, flip and colour jitter, or RandAugment + Cutout."""

    policy: Literal["auto", "camssl", "randaugment"] = "auto"
    """``camssl``: the fields below; ``randaugment``: FixMatch's RandAugment + Cutout
    (``augment.randaugment``, :mod:`camssl.randaugment`); ``auto``: the method's own
    (``Method.strong_policy``: randaugment for fixmatch, camssl for the others)."""

    scale: tuple[float, float] = (0.6, 1.0)
    """Side of the crop window relative to the image side, drawn uniformly from ``[a, b]``."""
    translate: float = 0.125
    """Maximum shift of the crop window's centre as a fraction of the image side, drawn uniformly
    per axis; it is clipped to ``|1 - scale|`` (half-sides) so that an unrotated window smaller
    than the image stays inside it (and a larger one still covers it)."""
    rotate_deg: float = 30.0
    """Rotation angle drawn uniformly from ``[-r, r]`` degrees."""
    flip: bool = True
    """Flip horizontally with probability 0.5."""
    brightness: float = 0.4
    """Brightness factor drawn from ``[max(0, 1 - b), 1 + b]`` (like torchvision's ColorJitter)."""
    contrast: float = 0.4
    """Contrast factor drawn from ``[max(0, 1 - c), 1 + c]``."""
    saturation: float = 0.4
    """Saturation factor drawn from ``[max(0, 1 - s), 1 + s]``."""
    hue: float = 0.1
    """Hue shift drawn from ``[-h, h]`` turns of the colour wheel, ``h <= 0.5``."""
    padding_mode: str = "zeros"
    """How pixels sampled from outside the image are filled: "zeros", "border" or "reflection"."""


@dataclass
class AugmentConfig:
    """Weak and strong view settings and the normalization statistics."""

    weak: WeakAugConfig = field(default_factory=WeakAugConfig)
    strong: StrongAugConfig = field(default_factory=StrongAugConfig)
    randaugment: RandAugmentConfig = field(default_factory=RandAugmentConfig)
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

    def validate(self) -> None:
        """Raise :class:`~camssl.errors.ConfigError` naming the first invalid field."""
        w, s = self.weak, self.strong
        integer_at_least("augment.weak.translate_px", w.translate_px, 0)
        check_bool("augment.weak.flip", w.flip)
        one_of("augment.weak.padding_mode", w.padding_mode, PADDING_MODES)

        scale = numbers("augment.strong.scale", s.scale, 2)
        if not 0.0 < scale[0] <= scale[1]:
            raise invalid("augment.strong.scale", s.scale, "must be a pair (a, b) with 0 < a <= b")
        in_range("augment.strong.translate", s.translate, 0.0, math.inf)
        in_range("augment.strong.rotate_deg", s.rotate_deg, 0.0, 180.0)
        check_bool("augment.strong.flip", s.flip)
        for name in ("brightness", "contrast", "saturation"):
            in_range(f"augment.strong.{name}", getattr(s, name), 0.0, math.inf)
        in_range("augment.strong.hue", s.hue, 0.0, 0.5)
        one_of("augment.strong.padding_mode", s.padding_mode, PADDING_MODES)
        self.randaugment.validate()

        numbers("augment.mean", self.mean, 3)
        if any(v <= 0.0 for v in numbers("augment.std", self.std, 3)):
            raise invalid("augment.std", self.std, "must be three numbers > 0")


@dataclass
class View:
    """One (possibly augmented) view of a batch of images."""

    images: Tensor
    """``B×3×H×W`` float32, normalized with the config's mean and std."""
    theta: Tensor
    """``B×2×3`` float32: maps a point of this view to the original image (see module doc)."""
    flip: Tensor
    """``B`` bool: whether ``theta`` includes a horizontal flip."""


class Augmenter:
    """Makes original, weak and strong views of uint8 image batches, all batched on-device.

    ``method_policy``: the strong view ``augment.strong.policy=auto`` stands for (the run's
    method's ``strong_policy``; camssl's when not given).
    """

    def __init__(self, cfg: AugmentConfig, device: torch.device | str = "cpu", method_policy: str = "camssl") -> None:
        cfg.validate()
        self.cfg = cfg
        self.device = torch.device(device)
        self.strong_policy = method_policy if cfg.strong.policy == "auto" else cfg.strong.policy
        self._mean = torch.tensor(cfg.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(cfg.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 (or ``[0, 1]`` float) ``B×3×H×W`` images -> normalized float32."""
        return self._normalize01(to_unit(x))

    def denormalize(self, images: Tensor) -> Tensor:
        """Normalized images -> float32 in ``[0, 1]`` for visualisation."""
        images = images.float()
        mean, std = self._mean.to(images.device), self._std.to(images.device)
        return (images * std + mean).clamp(0.0, 1.0)

    def original(self, x: Tensor) -> View:
        """The un-augmented view: normalized images and identity thetas."""
        b = x.shape[0]
        theta = torch.eye(2, 3, device=x.device).expand(b, 2, 3).clone()
        return View(self.normalize(x), theta, torch.zeros(b, dtype=torch.bool, device=x.device))

    def weak(self, x: Tensor, gen: torch.Generator) -> View:
        """Integer-pixel random shift (pad-and-crop) and horizontal flip."""
        cfg = self.cfg.weak
        x01 = to_unit(x)
        b, _, h, w = x01.shape
        t = cfg.translate_px
        shift = torch.randint(-t, t + 1, (b, 2), generator=gen, device=gen.device).to(x01.device)
        flip = _draw_flip(b, cfg.flip, gen).to(x01.device)

        theta = torch.zeros(b, 2, 3, device=x01.device)
        theta[:, 0, 0] = 1.0 - 2.0 * flip.float()
        theta[:, 1, 1] = 1.0
        theta[:, 0, 2] = shift[:, 0] * (2.0 / w)
        theta[:, 1, 2] = shift[:, 1] * (2.0 / h)
        images = warp(x01, theta, cfg.padding_mode)
        return View(self._normalize01(images), theta, flip)

    def strong(self, x: Tensor, gen: torch.Generator) -> View:
        """The strong view of the run's policy: camssl's (:meth:`strong_camssl`) or RandAugment + Cutout."""
        if self.strong_policy == "randaugment":
            images, theta, flip = rand_augment(x, gen, self.cfg.randaugment)
            return View(self._normalize01(images), theta, flip)
        return self.strong_camssl(x, gen)

    def strong_camssl(self, x: Tensor, gen: torch.Generator) -> View:
        """Zoom-in crop, rotation, flip, then colour jitter (brightness, contrast, saturation, hue)."""
        cfg = self.cfg.strong
        x01 = to_unit(x)
        b, _, h, w = x01.shape
        # One draw of fixed width, so the geometry for a given seed does not depend on which
        # colour jitters are enabled.
        u = torch.rand(b, 8, generator=gen, device=gen.device).to(x01.device)
        flip = _draw_flip(b, cfg.flip, gen).to(x01.device)

        lo, hi = cfg.scale
        scale = lo + (hi - lo) * u[:, 0]
        limit = (1.0 - scale).abs().unsqueeze(1)
        centre = (2.0 * cfg.translate * (2.0 * u[:, 1:3] - 1.0)).clamp(-limit, limit)
        angle = math.radians(cfg.rotate_deg) * (2.0 * u[:, 3] - 1.0)

        cos, sin = torch.cos(angle), torch.sin(angle)
        sign = 1.0 - 2.0 * flip.float()
        theta = torch.empty(b, 2, 3, device=x01.device)
        theta[:, 0, 0] = scale * cos * sign
        theta[:, 0, 1] = -scale * sin * (h / w)
        theta[:, 1, 0] = scale * sin * (w / h) * sign
        theta[:, 1, 1] = scale * cos
        theta[:, :, 2] = centre

        images = warp(x01, theta, cfg.padding_mode)
        images = self._jitter(images, u[:, 4:8])
        return View(self._normalize01(images), theta, flip)

    def _jitter(self, images: Tensor, u: Tensor) -> Tensor:
        """Colour jitter in a fixed order; ``u`` is ``B×4`` uniform [0, 1) draws."""
        cfg = self.cfg.strong
        if cfg.brightness > 0:
            images = (images * _factor(u[:, 0], cfg.brightness)).clamp(0.0, 1.0)
        if cfg.contrast > 0:
            mean = _gray(images).mean(dim=(-2, -1), keepdim=True)
            images = _blend(images, mean, _factor(u[:, 1], cfg.contrast))
        if cfg.saturation > 0:
            images = _blend(images, _gray(images), _factor(u[:, 2], cfg.saturation))
        if cfg.hue > 0:
            shift = (2.0 * u[:, 3] - 1.0) * cfg.hue * (2.0 * math.pi)
            import kornia.enhance  # here, not at the top: its import costs ~0.3 s at every start

            images = kornia.enhance.adjust_hue(images, shift).clamp(0.0, 1.0)
        return images

    def _normalize01(self, x01: Tensor) -> Tensor:
        return (x01 - self._mean.to(x01.device)) / self._std.to(x01.device)


def _draw_flip(b: int, enabled: bool, gen: torch.Generator) -> Tensor:
    coin = torch.rand(b, generator=gen, device=gen.device) < 0.5
    return coin if enabled else torch.zeros_like(coin)


def _factor(u: Tensor, strength: float) -> Tensor:
    """Map uniform draws to ColorJitter factors in ``[max(0, 1 - s), 1 + s]``, shaped ``B×1×1×1``."""
    lo = max(0.0, 1.0 - strength)
    return (lo + (1.0 + strength - lo) * u).view(-1, 1, 1, 1)


def _gray(images: Tensor) -> Tensor:
    r, g, b = images.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    return (factor * images + (1.0 - factor) * other).clamp(0.0, 1.0)
