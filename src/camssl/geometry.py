"""Per-sample geometry of image views: affine matrices, composing and inverting them, warping, carrying maps.

A view's ``theta`` (``B×2×3``, float32) maps a point ``p = (x, y)`` of that view to the point
``q = theta[:, :, :2] @ p + theta[:, :, 2]`` of the ORIGINAL image it was sampled from, both in
normalized coordinates (``align_corners=False``: the centre of the left-most pixel of an image
``W`` pixels wide is at ``x = -1 + 1/W``); :mod:`camssl.augment` has the full convention.
:func:`compose` and :func:`invert` treat thetas as ``3×3`` homogeneous matrices with the last
row ``(0, 0, 1)``; ``compose(a, b)`` is ``a ∘ b`` (apply ``b`` first). A leaf module: torch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _homogeneous(theta: Tensor) -> Tensor:
    bottom = torch.zeros_like(theta[..., :1, :])
    bottom[..., 0, 2] = 1.0
    return torch.cat([theta, bottom], dim=-2)


def compose(theta_a: Tensor, theta_b: Tensor) -> Tensor:
    """``theta_a ∘ theta_b`` for ``B×2×3`` affines: a point is mapped by ``theta_b``, then ``theta_a``."""
    return (_homogeneous(theta_a) @ _homogeneous(theta_b))[..., :2, :]


def invert(theta: Tensor) -> Tensor:
    """Inverse of ``B×2×3`` affines."""
    linear_inv = torch.linalg.inv(theta[..., :2])
    return torch.cat([linear_inv, -linear_inv @ theta[..., 2:]], dim=-1)


def carry(
    maps: Tensor,
    dst_theta: Tensor,
    out_size: tuple[int, int],
    src_theta: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Carry spatial maps from the frame of one view into the frame of another.

    Args:
        maps: ``B×C×h×w`` maps (any resolution and float dtype) in the coordinates of the view
            with ``src_theta``.
        dst_theta: ``B×2×3`` theta of the destination view.
        out_size: ``(H, W)`` of the result, usually the input resolution.
        src_theta: ``B×2×3`` theta of the view the maps live in; ``None`` for the original image.

    Returns:
        ``(carried, valid)``, both float32: ``carried`` is ``B×C×H×W``, bilinearly sampled
        (border padding, differentiable w.r.t. ``maps``); ``valid`` is ``B×1×H×W``, 1 where the
        destination pixel's centre maps inside the source view (``|u| <= 1`` and ``|v| <= 1``)
        and 0 elsewhere.  With an identity relative transform ``carried`` equals
        ``F.interpolate(maps, out_size, mode="bilinear", align_corners=False)``.
    """
    maps = maps.float()
    rel = dst_theta.to(device=maps.device, dtype=torch.float32)
    if src_theta is not None:
        rel = compose(invert(src_theta.to(device=maps.device, dtype=torch.float32)), rel)
    size = (maps.shape[0], maps.shape[1], *out_size)
    grid = F.affine_grid(rel, list(size), align_corners=False)
    carried = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    valid = (grid.abs() <= 1.0 + 1e-6).all(dim=-1).unsqueeze(1).float()
    return carried, valid


def to_unit(x: Tensor) -> Tensor:
    """Check the image batch's shape and return it as float32 in ``[0, 1]``."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape B×3×H×W, got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if x.is_floating_point():
        return x.float()
    raise TypeError(f"expected uint8 or float images, got {x.dtype}")


def warp(x01: Tensor, theta: Tensor, padding_mode: str) -> Tensor:
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    return F.grid_sample(x01, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
