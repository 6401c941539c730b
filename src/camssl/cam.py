"""Class activation maps: batched, differentiable Grad-CAM and map utilities.

Grad-CAM (Selvaraju et al., 2017) of an input for class ``c`` at a layer whose output
is ``A`` (K channels, h x w) is

    alpha_k = (1 / hw) * sum_ij d y_c / d A_kij,      E = ReLU(sum_k alpha_k * A_k),

where ``y_c`` is the logit of class ``c``. :func:`grad_cam` computes it for a whole
batch from a forward pass that has already been done (``logits, feats = model(x,
taps=[...])``), so a training step that needs Grad-CAM maps pays no second forward
pass, and the maps can be part of a loss (Grad-CAM consistency, Lee & Cho 2021):

    >>> logits, feats = model(images, taps=["layer3"])
    >>> maps = grad_cam(logits, feats, logits.argmax(1), mode="full", model=model)
    >>> maps["layer3"].shape                      # (B, h, w) at layer3's resolution

:func:`grad_cam_model` runs the forward itself (for visualisation), :func:`cam` is the
plain class activation map of Zhou et al. (2016), :func:`caam` the class-agnostic
activation map of CAM-loss (Wang et al., 2021), and :func:`normalize_maps` /
:func:`upsample_maps` prepare maps for a distance or for display.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camssl.errors import ConfigError

__all__ = [
    "GRAD_MODES",
    "NORMALIZATIONS",
    "auto_layer",
    "caam",
    "cam",
    "cam_layer",
    "fc_weight",
    "capture",
    "grad_cam",
    "grad_cam_model",
    "normalize_maps",
    "upsample_maps",
]

GRAD_MODES: tuple[str, ...] = ("full", "detach-weights")
"""How gradients flow through Grad-CAM maps; see :func:`grad_cam`."""

NORMALIZATIONS: tuple[str, ...] = ("max", "minmax", "l2", "none")
"""Per-map normalisations accepted by :func:`normalize_maps`."""

_WRAPPER_ATTRS = ("_orig_mod", "module")  # torch.compile; DDP / DataParallel / AveragedModel
_BLANK_EPS = 1e-6  # relative scale below which normalize_maps treats a map as blank


@contextmanager
def capture(model: nn.Module, layers: str | Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of named modules of any ``nn.Module`` during the forward passes in the block.

    ``layers`` are module paths as in ``model.named_modules()`` (``"layer3"``,
    ``"features.7"``, ``"blocks.11.norm1"``). The yielded dict maps each name to that
    module's output in the latest forward pass inside the block (part of the autograd
    graph, neither detached nor copied), ready for :func:`grad_cam`::

        with capture(model, ["layer4"]) as feats:
            logits = model(images)
        maps = grad_cam(logits, feats, logits.argmax(1))

    The hooks are removed when the block ends, also on an exception.

    Raises:
        ConfigError: a name that is not a module of ``model`` (the message lists its
            top-level modules).
    """
    names = [layers] if isinstance(layers, str) else list(dict.fromkeys(layers))
    modules = {}
    for name in names:
        try:
            modules[name] = model.get_submodule(name) if isinstance(name, str) and name else None
        except AttributeError:
            modules[name] = None
        if modules[name] is None:
            children = ", ".join(n for n, _ in model.named_children()) or "none"
            raise ConfigError(f"{name!r} is not a module of {type(model).__name__}; give a module path as in "
                              f"model.named_modules() (top-level modules: {children})")
    feats: dict[str, Tensor] = {}
    handles = [module.register_forward_hook(_recorder(feats, name)) for name, module in modules.items()]
    try:
        yield feats
    finally:
        for handle in handles:
            handle.remove()


def _recorder(store: dict[str, Tensor], name: str):  # type: ignore[no-untyped-def]
    def hook(module: nn.Module, inputs: object, output: Tensor) -> None:
        store[name] = output

    return hook


def grad_cam(
    logits: Tensor,
    feats: Mapping[str, Tensor],
    classes: Tensor,
    *,
    mode: str = "full",
    model: nn.Module | None = None,
    closed_form: bool = True,
) -> dict[str, Tensor]:
    """Grad-CAM maps of a batch, per layer, from an already computed forward pass.

    Every sample ``i`` gets the map of its own class ``classes[i]``. The gradients
    ``d y_c / d A`` of all samples and all layers come from ONE call of
    :func:`torch.autograd.grad` (the sum over the batch of each sample's class logit,
    differentiated w.r.t. every requested feature tensor). No ``.backward()`` is used,
    so the parameters' ``.grad`` are left untouched, and no forward pass is repeated,
    so BatchNorm running statistics are not updated again: calling this in train mode
    is fine. The forward graph is retained, so a loss built from ``logits`` and the
    maps can be back-propagated afterwards.

    In train mode, a BatchNorm layer after the target layer normalises with the
    statistics of the batch, which couples the samples: ``d y_c[i] / d A[j]`` is not
    zero for ``j != i``, and the gradient of sample ``i``'s feature map includes these
    batch-statistics terms from the other samples' logits. This is exactly what any
    autograd Grad-CAM (e.g. captum's ``LayerGradCam``) computes on the same batch in
    train mode; in eval mode the samples are independent.

    Args:
        logits: (B, C) class scores of the forward pass that produced ``feats``,
            with its autograd graph (not computed under ``torch.no_grad()``).
        feats: layer name -> that layer's output (B, K, h, w) in the same forward pass,
            e.g. the second output of ``model(x, taps=[...])``. One map per entry.
        classes: (B,) integer class per sample (e.g. pseudo-labels ``logits.argmax(1)``).
            A negative class excludes the sample: its logit is left out of the gradient
            and its map is all zero. Use it to take maps of part of a batch, e.g. the
            unlabeled rows of one forward pass over labeled and unlabeled images.
        mode: ``"full"``: the gradients are computed with ``create_graph=True``, so the
            maps are differentiable w.r.t. everything they depend on, and a loss on them
            trains every parameter, including those after the target layer and the
            classifier (through ``alpha``). ``"detach-weights"``: ``alpha`` is computed
            without a graph and treated as constant (what the Grad-CAM consistency
            authors' code effectively does); the maps remain differentiable w.r.t.
            ``A``, hence w.r.t. the layers up to the target layer.
        model: the model that computed ``logits`` (wrappers such as
            DistributedDataParallel or ``torch.compile`` are looked through). Only used
            for the closed form.
        closed_form: at the layer named ``model.cam_layer``, whose output goes through
            global average pooling straight into the linear classifier ``model.fc``
            (weight W), ``d y_c / d A_kij = W[c, k] / hw``, so the map is computed as
            ``ReLU(sum_k W[c, k] * A_k) / hw`` without any backward pass. It is exact
            (gradients included: w.r.t. ``A`` and W in ``"full"`` mode, w.r.t. ``A``
            with W constant in ``"detach-weights"`` mode). Set False to force the
            autograd route. Ignored without ``model``.

    Returns:
        Layer name -> (B, h, w) maps at the layer's own resolution, in the order of
        ``feats``. The arithmetic is done in at least float32 (float32 for features or
        logits computed under bf16/fp16 autocast; float64 stays float64).

    Raises:
        ConfigError: unknown ``mode``; a feature that is not a (B, K, h, w) map of this
            batch or that does not influence ``logits`` (a bad layer choice).
        ValueError: ``logits``/``classes`` of the wrong shape, or a forward pass without
            autograd graph where the autograd route is needed.
    """
    _check_mode(mode)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}")
    batch = logits.shape[0]
    classes = _check_classes(classes, batch, logits.device)
    keep = classes >= 0
    classes = classes.clamp_min(0)
    for name, feat in feats.items():
        if feat.ndim != 4 or feat.shape[0] != batch:
            raise ConfigError(f"layer {name!r} gives shape {tuple(feat.shape)}; Grad-CAM needs a "
                              f"({batch}, channels, height, width) feature map, choose a convolutional stage")

    maps: dict[str, Tensor] = {}
    inner = _unwrap(model) if model is not None and closed_form else None
    cam_layer = getattr(inner, "cam_layer", None) if inner is not None else None
    if inner is not None and cam_layer in feats:
        weight = _classifier_weight(inner, feats[cam_layer])
        if mode == "detach-weights":
            weight = weight.detach()
        feat = feats[cam_layer]
        maps[cam_layer] = F.relu(cam(feat, weight, classes)) / (feat.shape[2] * feat.shape[3])
        maps[cam_layer] = maps[cam_layer] * keep[:, None, None]

    names = [name for name in feats if name != cam_layer]
    if names:
        grads = _class_score_grads(logits, classes, keep, names, [feats[name] for name in names],
                                   create_graph=mode == "full")
        for name, grad in zip(names, grads):
            feat = feats[name]
            alpha = grad.to(_map_dtype(feat, grad)).mean(dim=(2, 3))
            maps[name] = F.relu(_weighted_channel_sum(alpha, feat)) * keep[:, None, None]
    return {name: maps[name] for name in feats}


def grad_cam_model(
    model: nn.Module,
    images: Tensor,
    layers: str | Sequence[str],
    classes: Tensor | int | None = None,
    *,
    mode: str = "detach-weights",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Run ``model`` on ``images`` and return its logits and Grad-CAM maps.

    A convenience for users and visualisation, built on :func:`grad_cam`. The forward
    pass runs with gradients enabled even under ``torch.no_grad()`` (and with the images
    marked as requiring grad, so that frozen models work too) in whatever train/eval
    mode the model is in; eval mode is the usual choice for visualisation.

    Args:
        model: a camssl model (or a wrapper of one) whose forward accepts ``taps``.
        images: (B, 3, H, W) batch.
        layers: one layer name or several (stage names such as ``"layer3"`` or module
            paths).
        classes: (B,) class per sample, one class for all samples, or None for each
            sample's predicted class (argmax of the logits).
        mode: see :func:`grad_cam`.

    Returns:
        ``(logits, maps)`` with ``maps[layer]`` of shape (B, h, w) at the layer's
        resolution (see :func:`upsample_maps` to bring it to the image size). Called
        under ``torch.no_grad()`` both are detached; otherwise they carry the graph as
        described in :func:`grad_cam`.

    Raises:
        ConfigError: unknown mode, no layers, or an unknown layer name.
    """
    _check_mode(mode)
    names = [layers] if isinstance(layers, str) else list(dict.fromkeys(layers))
    if not names:
        raise ConfigError("grad_cam_model needs at least one layer name, e.g. 'layer3'")
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        inputs = images if images.requires_grad else images.detach().requires_grad_()
        logits, feats = model(inputs, taps=names)
        if classes is None:
            classes = logits.detach().argmax(dim=1)
        elif isinstance(classes, int):
            classes = torch.full((logits.shape[0],), classes, dtype=torch.long, device=logits.device)
        maps = grad_cam(logits, feats, classes, mode=mode, model=model)
    if not keep_graph:
        logits = logits.detach()
        maps = {name: m.detach() for name, m in maps.items()}
    return logits, maps


def cam(feats: Tensor, fc_weight: Tensor, classes: Tensor) -> Tensor:
    """Class activation map (Zhou et al., 2016): ``M_c = sum_k W[c, k] * A_k``.

    No ReLU and no scaling are applied. At a layer followed only by global average
    pooling and the linear classifier, Grad-CAM equals ``ReLU(M_c) / hw``.

    Args:
        feats: (B, K, h, w) last feature map.
        fc_weight: (C, K) weight of the linear classifier (detach it to keep the
            classifier out of a loss on the map).
        classes: (B,) integer class per sample.

    Returns:
        (B, h, w) maps, in at least float32.

    Raises:
        ValueError: shapes that do not fit together.
    """
    if feats.ndim != 4 or fc_weight.ndim != 2 or fc_weight.shape[1] != feats.shape[1]:
        raise ValueError(f"cam needs (B, K, h, w) features and a (classes, K) weight, "
                         f"got {tuple(feats.shape)} and {tuple(fc_weight.shape)}")
    classes = _check_classes(classes, feats.shape[0], fc_weight.device)
    return _weighted_channel_sum(fc_weight[classes], feats)


def caam(feats: Tensor) -> Tensor:
    """Class-agnostic activation map (CAM-loss, Wang et al. 2021): ``A = sum_k A_k``.

    The sum over channels of the last feature map, i.e. :func:`cam` with every
    classifier weight 1; no ReLU and no scaling.

    Args:
        feats: (B, K, h, w) feature map (at a camssl model's ``cam_layer``).

    Returns:
        (B, h, w) maps, in at least float32; differentiable w.r.t. ``feats``.
    """
    if feats.ndim != 4:
        raise ValueError(f"caam needs (B, K, h, w) features, got shape {tuple(feats.shape)}")
    return feats.to(_map_dtype(feats)).sum(dim=1)


def fc_weight(model: nn.Module) -> Tensor:
    """The (C, K) weight W of the linear classifier fed by ``model.cam_layer`` (wrappers looked through).

    With ``feats`` the output of ``model.cam_layer``, ``cam(feats, fc_weight(model), y)``
    is the CAM of class ``y``. The tensor is the parameter itself (detach it to keep the
    classifier out of a loss on the map).
    """
    inner = _unwrap(model)
    fc = getattr(inner, "fc", None)
    if not isinstance(fc, nn.Linear) or not getattr(inner, "cam_layer", None):
        raise ValueError(f"{type(inner).__name__} has no cam_layer followed by a linear classifier fc; "
                         "CAM and CAAM need a camssl model")
    return fc.weight


def normalize_maps(maps: Tensor, kind: str, mask: Tensor | None = None) -> Tensor:
    """Normalise each map over its last two (spatial) dimensions.

    With ``mask`` (same shape as ``maps`` or broadcastable, 1 = pixel counts), the
    scale is computed over the masked-in pixels only and masked-out pixels become 0,
    so two maps compared on the same pixels are normalised on the same pixels (this
    is what makes map alignment exact when a crop cuts part of a map away).

    Kinds:
        ``"max"``: divide by the map's largest absolute value; a non-negative map (any
            Grad-CAM map) lands in [0, 1] with maximum 1.
        ``"minmax"``: subtract the minimum, divide by the range; values in [0, 1] with
            minimum 0 and maximum 1.
        ``"l2"``: divide by the map's L2 norm (over h*w); norm 1.
        ``"none"``: unchanged (cast only).

    The arithmetic is done in at least float32. Blank maps are guarded: a map whose
    scale (the divisor above) is at most ``1e-6`` times the largest scale among all
    maps passed in (or zero, or below the dtype's smallest normal number) becomes all
    zero and passes zero gradient, so all-zero or constant maps never produce NaN or
    inf, in the values or in the gradients. Other maps are normalised exactly, with
    gradient magnitudes bounded by ``1e6`` over that largest scale.

    Args:
        maps: (..., h, w) maps, e.g. (B, h, w) from :func:`grad_cam`.
        kind: one of :data:`NORMALIZATIONS`.

    Returns:
        Normalised maps of the same shape.

    Raises:
        ConfigError: unknown ``kind``.
    """
    if kind not in NORMALIZATIONS:
        raise ConfigError(f"unknown map normalization {kind!r}; choose one of {', '.join(NORMALIZATIONS)}")
    if maps.ndim < 2:
        raise ValueError(f"maps must have at least two (spatial) dimensions, got shape {tuple(maps.shape)}")
    maps = maps.to(_map_dtype(maps))
    if kind == "none":
        return maps
    spatial = (-2, -1)
    inside = None if mask is None else (mask > 0).expand_as(maps)
    if inside is not None:
        maps = torch.where(inside, maps, torch.zeros_like(maps))
    if kind == "max":
        numerator, scale = maps, maps.abs().amax(dim=spatial, keepdim=True)
    elif kind == "minmax":
        if inside is None:
            low, high = maps.amin(dim=spatial, keepdim=True), maps.amax(dim=spatial, keepdim=True)
        else:
            inf = torch.full_like(maps, float("inf"))
            low = torch.where(inside, maps, inf).amin(dim=spatial, keepdim=True)
            high = torch.where(inside, maps, -inf).amax(dim=spatial, keepdim=True)
            low = torch.where(torch.isfinite(low), low, torch.zeros_like(low))
            high = torch.where(torch.isfinite(high), high, torch.zeros_like(high))
        numerator, scale = maps - low, high - low
    else:
        numerator, scale = maps, torch.linalg.vector_norm(maps, dim=spatial, keepdim=True)
    largest = scale.detach().amax()
    blank = (scale <= _BLANK_EPS * largest) | (scale < torch.finfo(maps.dtype).tiny)
    safe_scale = torch.where(blank, torch.ones_like(scale), scale)
    out = torch.where(blank, torch.zeros_like(numerator), numerator / safe_scale)
    return out if inside is None else torch.where(inside, out, torch.zeros_like(out))


def upsample_maps(maps: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Resize (..., h, w) maps to ``size`` (an int for square, or (H, W)).

    Bilinear interpolation with ``align_corners=False`` (pixel centres aligned, the
    convention of image resizing), in at least float32; differentiable.
    """
    if maps.ndim < 2:
        raise ValueError(f"maps must have at least two (spatial) dimensions, got shape {tuple(maps.shape)}")
    height, width = maps.shape[-2:]
    flat = maps.to(_map_dtype(maps)).reshape(-1, 1, height, width)
    resized = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return resized.reshape(*maps.shape[:-2], *resized.shape[-2:])


def _check_mode(mode: str) -> None:
    if mode not in GRAD_MODES:
        raise ConfigError(f"unknown Grad-CAM gradient mode {mode!r}; choose one of {', '.join(GRAD_MODES)}")


def _check_classes(classes: Tensor, batch: int, device: torch.device) -> Tensor:
    if not isinstance(classes, Tensor) or classes.shape != (batch,) or classes.is_floating_point() \
            or classes.is_complex() or classes.dtype == torch.bool:
        shape = tuple(classes.shape) if isinstance(classes, Tensor) else type(classes).__name__
        raise ValueError(f"classes must be a ({batch},) integer tensor (one class per sample), got {shape}")
    return classes.to(device=device, dtype=torch.long)


def _map_dtype(*tensors: Tensor) -> torch.dtype:
    """At least float32: half/bfloat16 (autocast) maps are computed in float32."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _weighted_channel_sum(weights: Tensor, feats: Tensor) -> Tensor:
    """``sum_k weights[b, k] * feats[b, k]`` -> (B, h, w), in at least float32.

    Element-wise product and sum rather than a matmul/einsum, which autocast would run
    in half precision.
    """
    dtype = _map_dtype(weights, feats)
    return (weights.to(dtype)[:, :, None, None] * feats.to(dtype)).sum(dim=1)


@torch.no_grad()
def auto_layer(model: nn.Module, image_size: tuple[int, int] = (32, 32)) -> str:
    """The last spatial stage of any model: of the modules whose output is a 4-D map larger than
    1×1, the one whose forward finishes last in a probe forward (as torch-cam locates its target
    layer). For a ResNet that is ``layer4``, for airnet ``layer3``.

    Raises:
        ConfigError: the model has no module with a spatial output.
    """
    inner = _unwrap(model)
    order: list[str] = []
    hooks = []
    for name, module in inner.named_modules():
        if name:
            def hook(m: nn.Module, inputs: object, output: object, name: str = name) -> None:
                if isinstance(output, Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1:
                    order.append(name)
            hooks.append(module.register_forward_hook(hook))
    was = inner.training
    try:
        param = next(inner.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        inner.eval()(torch.zeros(2, 3, *image_size, device=device))
    finally:
        inner.train(was)
        for h in hooks:
            h.remove()
    if not order:
        raise ConfigError(f"{type(inner).__name__} has no layer with a spatial (N×C×H×W) output for Grad-CAM; "
                          "name a layer yourself")
    return order[-1]


def cam_layer(model: nn.Module) -> str | None:
    """The layer where closed-form Grad-CAM is exact (``model.cam_layer``), looking through wrappers."""
    return getattr(_unwrap(model), "cam_layer", None)


def _unwrap(model: nn.Module) -> nn.Module:
    """The camssl model inside DDP / DataParallel / torch.compile / AveragedModel."""
    while not hasattr(model, "cam_layer"):
        inner = next((getattr(model, attr) for attr in _WRAPPER_ATTRS
                      if isinstance(getattr(model, attr, None), nn.Module)), None)
        if inner is None:
            break
        model = inner
    return model


def _classifier_weight(model: nn.Module, feat: Tensor) -> Tensor:
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Linear) or fc.in_features != feat.shape[1]:
        raise ValueError(f"closed-form Grad-CAM needs model.fc to be an nn.Linear on the {feat.shape[1]} channels "
                         f"of model.cam_layer {model.cam_layer!r}; pass closed_form=False for other models")
    return fc.weight


def _class_score_grads(logits: Tensor, classes: Tensor, keep: Tensor, names: list[str], feats: list[Tensor], *,
                       create_graph: bool) -> tuple[Tensor, ...]:
    """``d (sum_{i kept} logits[i, classes[i]]) / d feat`` for every feature, in one autograd call."""
    detached = [name for name, feat in zip(names, feats) if not feat.requires_grad]
    if not logits.requires_grad or detached:
        raise ValueError("Grad-CAM needs the autograd graph of the forward pass: run it with gradients enabled "
                         "(not under torch.no_grad()), with images.requires_grad_() if the model is frozen")
    score = (logits.gather(1, classes[:, None]).squeeze(1) * keep).sum()
    grads = torch.autograd.grad(score, feats, retain_graph=True, create_graph=create_graph, allow_unused=True)
    unused = [name for name, grad in zip(names, grads) if grad is None]
    if unused:
        raise ConfigError(f"layer(s) {', '.join(unused)} do not influence the logits; choose layers that the "
                          f"forward pass goes through before the classifier")
    return grads
