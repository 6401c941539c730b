"""Pure loss functions, usable in any training loop (camssl's methods are built from them).

Nothing here owns state, optimisers or devices: every function maps tensors to a loss.

- :func:`soft_cross_entropy` — cross-entropy against a soft target (the paper's L_P).
- :func:`confidence_mask` — FixMatch-style selection of confident unlabeled samples.
- :func:`gradcam_targets` and :func:`gradcam_consistency` — Grad-CAM consistency L_G
  (Lee & Cho, arXiv 2108.13673) between an anchor view and a geometrically augmented view
  of the same images, on any model whose layer outputs you can record
  (:func:`camssl.cam.capture`).
- :func:`aligned_maps` / :func:`map_distance` — the two steps inside L_G, for users who
  build their own map losses.
- :func:`vat_loss` / :func:`vat_perturbation` — virtual adversarial training (Miyato et
  al., arXiv 1704.03976), with :func:`frozen_bn_stats` (passes that leave the BatchNorm
  running statistics alone) and :func:`kl_from_logits`.
- :func:`cam_loss`, :func:`caam_matching` and :func:`logit_kd` — CAM-loss and CAAM–CAM
  distillation (Wang et al., ICCV 2021, arXiv 2109.01359; the block at the end).

Example (any ``nn.Module``; ``theta`` are the views' 2×3 affine matrices, see
:mod:`camssl.augment`)::

    with capture(model, ["layer3"]) as feats_a:
        logits_a = model(anchor_images)
    with capture(model, ["layer3"]) as feats_s:
        logits_s = model(strong_images)
    loss_g = gradcam_consistency((logits_a, feats_a), logits_s, feats_s, theta_a, theta_s,
                                  size=strong_images.shape[-2:])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camssl.augment import carry
from camssl.cam import grad_cam, normalize_maps, upsample_maps

__all__ = [
    "aligned_maps",
    "confidence_mask",
    "gradcam_consistency",
    "gradcam_targets",
    "map_distance",
    "blank_targets",
    "entropy",
    "frozen_bn_stats",
    "kl_from_logits",
    "soft_cross_entropy",
    "target_logits",
    "vat_loss",
    "vat_perturbation",
]

DISTANCES: tuple[str, ...] = ("mse", "l1", "cosine")
"""Map distances accepted by :func:`map_distance`: per-pixel ``mse`` (the paper's), ``l1``, or ``cosine``
(1 − cosine similarity over the valid pixels: a blank or shrinking map gets no reward)."""


def soft_cross_entropy(target_probs: Tensor, logits: Tensor) -> Tensor:
    """Per-sample ``-sum_c q_c log softmax(logits)_c`` (B,), computed in float32.

    ``target_probs`` (B, C) is the soft target (e.g. the detached softmax of another view).
    """
    if target_probs.shape != logits.shape or logits.ndim != 2:
        raise ValueError(
            f"target_probs and logits must both be (batch, classes); got {tuple(target_probs.shape)} "
            f"and {tuple(logits.shape)}"
        )
    return -(target_probs.float() * F.log_softmax(logits.float(), dim=1)).sum(1)


def confidence_mask(probs: Tensor, threshold: float) -> Tensor:
    """(B,) bool: the samples whose largest class probability reaches ``threshold`` (0 keeps all)."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold={threshold} is invalid: must be in [0, 1) (0 keeps every sample)")
    if threshold <= 0:
        return torch.ones(probs.shape[0], dtype=torch.bool, device=probs.device)
    return probs.max(1).values >= threshold


def aligned_maps(
    anchor_maps: Tensor, strong_maps: Tensor, anchor_theta: Tensor, strong_theta: Tensor, size: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor]:
    """(target, prediction, valid), each B×1×H×W at input resolution in the strong view's frame.

    ``anchor_maps``/``strong_maps`` are B×h×w maps of the two views; the anchor's are
    carried through ``strong_theta`` (relative to ``anchor_theta``) with
    :func:`camssl.augment.carry`; ``valid`` marks the strong view's pixels that come from
    inside the anchor image.
    """
    target, valid = carry(anchor_maps[:, None], strong_theta, size, src_theta=anchor_theta)
    pred = upsample_maps(strong_maps, size)[:, None].float()
    return target, pred, valid


def map_distance(target: Tensor, pred: Tensor, valid: Tensor, norm: str = "minmax", distance: str = "mse") -> Tensor:
    """Per-sample distance (B,) between maps, both normalised over the valid pixels only."""
    if distance not in DISTANCES:
        raise ValueError(f"unknown map distance {distance!r}; choose one of {', '.join(DISTANCES)}")
    t = normalize_maps(target.float(), norm, mask=valid)
    p = normalize_maps(pred.float(), norm, mask=valid)
    if distance == "cosine":  # a blank map has cosine 0 with anything: the largest distance for non-negative maps
        dot = (p * t * valid).sum((1, 2, 3))
        # clamped before the square root: a blank map (norm 0) gets cosine 0 and a zero gradient, not NaN
        norms = ((p * p * valid).sum((1, 2, 3)) * (t * t * valid).sum((1, 2, 3))).clamp_min(1e-24).sqrt()
        return 1.0 - dot / norms
    diff = (p - t).abs() if distance == "l1" else (p - t) ** 2
    return (diff * valid).sum((1, 2, 3)) / valid.sum((1, 2, 3)).clamp_min(1.0)


def blank_targets(target: Tensor, valid: Tensor, norm: str = "minmax") -> Tensor:
    """(B,) bool: the carried target maps that are blank on the valid pixels once normalised.

    A blank target (all zero where the views overlap: a Grad-CAM map that the ReLU
    zeroed, or one carried from outside the object) can only be matched by a blank
    prediction, so it pulls the strong view's map towards zero.
    """
    return normalize_maps(target.float(), norm, mask=valid).flatten(1).amax(1) <= 0


class MapLoss(NamedTuple):
    """:func:`gradcam_consistency` with ``details=True``."""

    loss: Tensor  # the scalar L_G
    distances: Tensor  # (B,) per-sample distance (mean over layers of the kept pairs)
    blank: Tensor  # (B, layers) bool: pairs whose target map is blank


def gradcam_targets(
    logits: Tensor, feats: Mapping[str, Tensor], classes: Tensor, *, model: nn.Module | None = None
) -> dict[str, Tensor]:
    """The anchor view's Grad-CAM maps of ``classes`` as detached targets of L_G.

    Computed in ``detach-weights`` mode (the target gets no gradient anyway); with
    ``model`` a camssl model, its last stage uses the closed form. Calling this before the
    strong view's forward lets the anchor's graph be freed early.
    """
    maps = grad_cam(logits, feats, classes, mode="detach-weights", model=model)
    return {name: m.detach() for name, m in maps.items()}


def gradcam_consistency(
    anchor: Mapping[str, Tensor] | tuple[Tensor, Mapping[str, Tensor]],
    strong_logits: Tensor,
    strong_feats: Mapping[str, Tensor],
    anchor_theta: Tensor,
    strong_theta: Tensor,
    *,
    size: tuple[int, int],
    classes: Tensor | None = None,
    mask: Tensor | None = None,
    first_row: int = 0,
    mode: str = "full",
    norm: str = "minmax",
    distance: str = "mse",
    model: nn.Module | None = None,
    skip_blank_targets: bool = False,
    details: bool = False,
) -> Tensor | MapLoss:
    """Grad-CAM consistency L_G between an anchor view and a strong view of the same B images.

    L_G = mean over samples (and target layers) of ``d(N(E_strong), N(T(E_anchor)))``:
    the class of both maps is the anchor's pseudo-label; the anchor's map is carried
    into the strong view's frame through the views' geometry and detached; the strong
    view's map is differentiable (``mode``: ``full`` or ``detach-weights``, see
    :func:`camssl.cam.grad_cam`); both are normalised (``norm``) over the pixels the two
    views share and compared with ``distance`` (``mse`` or ``l1``).

    Args:
        anchor: the anchor's ``(logits, feats)`` from a forward with gradients enabled,
            or its target maps from :func:`gradcam_targets` (then ``classes`` is required).
        strong_logits, strong_feats: the forward that contains the strong views, as rows
            ``first_row .. first_row + B`` (earlier rows, e.g. a labeled batch sharing the
            forward, get no map); ``strong_feats`` holds the same layers as the anchor's.
        anchor_theta, strong_theta: (B, 2, 3) affine matrices of the two views relative to
            the original image (:attr:`camssl.augment.View.theta`).
        size: the input resolution (H, W) at which the maps are compared (the images' size).
        classes: (B,) class of both maps; default: the anchor logits' argmax.
        mask: (B,) bool/float weights of the samples (e.g. :func:`confidence_mask`);
            masked samples count as zero in the mean.
        model: the camssl model (closed form at its last stage); optional.
        skip_blank_targets: leave out the pairs whose carried target map is blank
            (:func:`blank_targets`): they count as zero, like masked samples, instead of
            pulling the strong view's map to zero (camssl's guard against collapsed maps;
            not in the paper).
        details: return a :class:`MapLoss` (loss, per-sample distances, blank pairs).
    """
    if isinstance(anchor, tuple):
        logits_a, feats_a = anchor
        if classes is None:
            classes = logits_a.detach().argmax(1)
        targets = gradcam_targets(logits_a, feats_a, classes, model=model)
    else:
        if classes is None:
            raise ValueError("gradcam_consistency: give classes= when anchor is a dict of target maps")
        targets = dict(anchor)
    b = classes.shape[0]
    missing = sorted(set(targets) - set(strong_feats))
    if missing:
        raise ValueError(f"strong_feats lacks the anchor's layer(s) {', '.join(missing)}; record the same layers")
    rows = torch.full((strong_logits.shape[0],), -1, device=classes.device, dtype=classes.dtype)
    rows[first_row : first_row + b] = classes
    strong_maps = grad_cam(strong_logits, {k: strong_feats[k] for k in targets}, rows, mode=mode, model=model)
    size = (int(size[0]), int(size[1]))
    per_layer, blank = [], []
    for name, target_maps in targets.items():
        pred_maps = strong_maps[name][first_row : first_row + b]
        target, pred, valid = aligned_maps(target_maps, pred_maps, anchor_theta, strong_theta, size)
        per_layer.append(map_distance(target, pred, valid, norm, distance))
        blank.append(blank_targets(target, valid, norm))
    d, is_blank = torch.stack(per_layer, 1), torch.stack(blank, 1)
    if skip_blank_targets:
        kept = (~is_blank).float()
        dist = (d * kept).sum(1) / kept.sum(1).clamp_min(1.0)
    else:
        dist = d.mean(1)
    loss = (dist * mask).mean() if mask is not None else dist.mean()
    return MapLoss(loss, dist, is_blank) if details else loss



# ---------------------------------------------------------------- virtual adversarial training


def kl_from_logits(target_logits: Tensor, logits: Tensor) -> Tensor:
    """Per-sample ``KL(softmax(target_logits) || softmax(logits))`` (B,), in float32; the target is detached."""
    log_p = F.log_softmax(target_logits.detach().float(), dim=1)
    return (log_p.exp() * (log_p - F.log_softmax(logits.float(), dim=1))).sum(1)


def target_logits(probs: Tensor) -> Tensor:
    """Logits (float32) whose softmax is the distribution ``probs`` (B, C): its log, zeros clamped to the tiniest float.

    Lets a fixed target distribution stand where :func:`kl_from_logits` takes target logits.
    """
    return probs.detach().float().clamp_min(torch.finfo(torch.float32).tiny).log()


def entropy(logits: Tensor) -> Tensor:
    """Per-sample entropy of ``softmax(logits)`` (B,), in float32 (entropy minimisation, Grandvalet & Bengio)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(1)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Forward passes in the block leave every BatchNorm's running statistics unchanged.

    Each BatchNorm layer (also SyncBatchNorm) that tracks running statistics is switched to
    ``track_running_stats=False`` for the block: in train mode it still normalises with the
    batch's statistics (the gradient is that of a train-mode pass) but neither its running
    mean/var nor ``num_batches_tracked`` move; in eval mode it keeps using the running
    statistics. Restored on exit, also on an exception. (InstanceNorm layers are not touched.)
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in layers:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in layers:
            m.track_running_stats = True


def _unit(d: Tensor) -> Tensor:
    """``d`` scaled to unit L2 norm per sample (over all non-batch dimensions); zero rows stay zero."""
    shape = (-1, *([1] * (d.ndim - 1)))
    d = d / d.flatten(1).abs().amax(1).clamp_min(torch.finfo(d.dtype).tiny).view(shape)  # first to max 1 (Miyato)
    return d / d.flatten(1).norm(dim=1).clamp_min(torch.finfo(d.dtype).eps).view(shape)


def vat_perturbation(
    model: nn.Module,
    x: Tensor,
    logits_clean: Tensor | None = None,
    *,
    xi: float = 1e-6,
    eps: float = 6.0,
    power_iters: int = 1,
    generator: torch.Generator | None = None,
    target_probs: Tensor | None = None,
) -> Tensor:
    """The virtual adversarial perturbation r_adv (detached, same shape as ``x``, norm ``eps`` per sample).

    Miyato et al.: d ~ N(0, I) from ``generator`` (drawn on the generator's device, then
    moved to ``x``'s); ``power_iters`` times: r = xi * d/||d||, d <- grad_r KL(p(x) || p(x + r))
    (``torch.autograd.grad`` with respect to r only: no parameter's ``.grad`` is written);
    then r_adv = eps * d/||d||. Norms are per sample over all of C×H×W (as in USB). The
    perturbed passes run inside :func:`frozen_bn_stats`.

    ``x`` is the normalised image batch; ``logits_clean`` the model's logits on exactly this
    batch in the same mode (with BatchNorm in train mode the batch's composition changes the
    logits, so they must come from a forward of ``x`` alone); None computes them here. Under
    autocast the power iteration runs in float32 with its own float32 reference forward
    (camssl's choice: a half-precision reference would swamp the xi-sized difference).

    ``target_probs`` (B, C): a fixed target distribution q in place of p(x), so that the
    power iteration climbs KL(q || p(x + r)) (e.g. REVIVAL's virtual labels from label
    propagation, :mod:`camssl.active`); ``logits_clean`` is then ignored and no reference
    forward runs. Zero entries of q are clamped to the smallest positive float32.
    """
    if power_iters < 0 or eps < 0 or xi <= 0:
        raise ValueError(f"vat: need power_iters >= 0, eps >= 0, xi > 0; got {power_iters}, {eps}, {xi}")
    if target_probs is not None:
        logits_clean = target_logits(target_probs)
    device = generator.device if generator is not None else x.device
    d = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device, x.dtype)
    autocast = torch.is_autocast_enabled(x.device.type)
    with contextlib.ExitStack() as stack:
        stack.enter_context(frozen_bn_stats(model))
        stack.enter_context(torch.enable_grad())
        if autocast:
            stack.enter_context(torch.autocast(x.device.type, enabled=False))
        if power_iters > 0 and target_probs is None and (logits_clean is None or autocast):
            with torch.no_grad():
                logits_clean = model(x)
        for _ in range(power_iters):
            r = (xi * _unit(d)).requires_grad_(True)
            kl = kl_from_logits(logits_clean, model(x + r)).sum()  # type: ignore[arg-type]
            (d,) = torch.autograd.grad(kl, r)
    return (eps * _unit(d)).detach()


def vat_loss(
    model: nn.Module,
    x: Tensor,
    logits_clean: Tensor | None = None,
    *,
    xi: float = 1e-6,
    eps: float = 6.0,
    power_iters: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """VAT's local distributional smoothness loss: mean over the batch of KL(p(x) || p(x + r_adv)).

    ``r_adv`` is :func:`vat_perturbation` (see there for ``xi``, ``eps``, ``power_iters``,
    ``generator`` and ``logits_clean``); p(x) is detached, so the loss trains the model
    through the perturbed pass only, which runs inside :func:`frozen_bn_stats`. Defaults
    as in Miyato et al. / Oliver et al. 2018 / USB for CIFAR-10: xi=1e-6, eps=6, one power
    iteration. Example::

        logits_u = model(x_u)                      # the unlabeled batch alone
        loss = ce(model(x_l), y_l) + 0.3 * vat_loss(model, x_u, logits_u, generator=g)
    """
    if logits_clean is None:
        with torch.no_grad(), frozen_bn_stats(model):
            logits_clean = model(x)
    r_adv = vat_perturbation(model, x, logits_clean, xi=xi, eps=eps, power_iters=power_iters, generator=generator)
    with frozen_bn_stats(model):
        logits_adv = model(x + r_adv)
    return kl_from_logits(logits_clean, logits_adv).mean()
# ---------------------------------------------------------------- CAM-loss and CAAM–CAM distillation
#
# Wang et al., "CAM-loss: towards learning spatially discriminative feature representations"
# (ICCV 2021, arXiv 2109.01359). Only the abstract is public; what it does not fix is
# camssl's decision, marked as such below (docs/methods.md §2).

from camssl.cam import caam, cam  # noqa: E402  (kept with the block it serves)

__all__ += ["CAM_TARGETS", "caam_cam_distance", "caam_matching", "cam_loss", "logit_kd", "teacher_cams"]

CAM_TARGETS: tuple[str, ...] = ("detach", "detach-w")
"""How the CAM side of L_cam is detached; see :func:`caam_cam_distance`."""


def caam_cam_distance(feats: Tensor, weight: Tensor, classes: Tensor, *, norm: str = "minmax",
                      target: str = "detach") -> Tensor:
    """Per-sample L_cam (B,): the mean over pixels of ``|N(CAAM) - N(CAM_y)|``.

    ``CAAM = sum_k F_k`` and ``CAM_y = sum_k W[y, k] F_k`` at the last stage F (B, K, h, w),
    the tensor that global pooling feeds into the linear classifier W (C, K). The distance
    is L1, the paper's. *camssl decisions* (the paper's text is not available):

    - N: per-sample normalisation over the whole map, min–max by default (``norm``: any of
      :data:`camssl.cam.NORMALIZATIONS`; blank maps are guarded, see
      :func:`camssl.cam.normalize_maps`). The one public, unofficial implementation
      normalises per column, which camssl takes for a mistake.
    - The CAM side is the target and carries no gradient to W in any mode: if it did, a
      classifier that makes CAM_y proportional to the CAAM would lower the loss without
      improving any feature. ``target="detach"`` (default): features and W detached, the
      loss trains the backbone through the CAAM only. ``"detach-w"``: only W detached
      (what the unofficial code does), so the features also get a gradient through CAM_y.

    Args:
        feats: (B, K, h, w) output of the model's ``cam_layer`` (with its graph).
        weight: (C, K) classifier weight (:func:`camssl.cam.fc_weight`); detached here.
        classes: (B,) class of each sample's CAM (ground truth, or a pseudo-label).
    """
    if target not in CAM_TARGETS:
        raise ValueError(f"unknown CAM target mode {target!r}; choose one of {', '.join(CAM_TARGETS)}")
    side = feats.detach() if target == "detach" else feats
    cam_y = normalize_maps(cam(side, weight.detach(), classes), norm)
    return (normalize_maps(caam(feats), norm) - cam_y).abs().mean(dim=(1, 2))


def cam_loss(feats: Tensor, weight: Tensor, classes: Tensor, *, norm: str = "minmax", target: str = "detach",
             mask: Tensor | None = None) -> Tensor:
    """L_cam, the scalar: :func:`caam_cam_distance` averaged over the batch.

    ``mask`` (B,) bool/float selects samples (e.g. confident pseudo-labels,
    :func:`confidence_mask`); masked samples count as zero in the mean, as in L_P.
    """
    dist = caam_cam_distance(feats, weight, classes, norm=norm, target=target)
    return (dist * mask).mean() if mask is not None else dist.mean()


def teacher_cams(feats: Tensor, weight: Tensor, classes: Tensor) -> Tensor:
    """A (frozen) teacher's CAM of ``classes`` (B, h, w), detached: the target of :func:`caam_matching`."""
    return cam(feats.detach(), weight.detach(), classes).detach()


def caam_matching(student_feats: Tensor, teacher_maps: Tensor, *, norm: str = "minmax") -> Tensor:
    """Per-sample CAAM–CAM distillation distance (B,): mean over pixels of ``|N(CAAM_s) - N(resize(M_t))|``.

    ``teacher_maps`` (B, h', w'), e.g. :func:`teacher_cams` of the true class, are detached
    and, when their size differs from the student's map, resized bilinearly to it
    (*camssl decision*: the teacher's map is brought to the student's resolution, not the
    other way round, so the student's loss is computed on its own pixels).
    """
    a = caam(student_feats)
    t = teacher_maps.detach()
    if tuple(t.shape[-2:]) != tuple(a.shape[-2:]):
        t = upsample_maps(t, (int(a.shape[-2]), int(a.shape[-1])))
    return (normalize_maps(a, norm) - normalize_maps(t, norm)).abs().mean(dim=(1, 2))


def logit_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton et al.'s logit distillation: ``T^2 * KL(softmax(t / T) || softmax(s / T))``, mean over the batch.

    The T² factor keeps the gradient's scale independent of T. Computed in float32; the
    teacher's logits are detached.
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} is invalid: must be > 0")
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean() * t * t
