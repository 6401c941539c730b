"""The benchmark rig (one model, optimiser, augmenter and batch) and the step types it times."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camssl.bench.options import IMAGE_SIZE, MODEL, NUM_CLASSES, BenchOptions
from camssl.methods import Method


def load_images(n: int, seed: int) -> tuple[Tensor, Tensor, str]:
    """``n`` uint8 images and labels of the embedded mini CIFAR-10 (random images if it is unreadable)."""
    gen = torch.Generator().manual_seed(seed)
    try:
        from camssl.data.mini import load_mini

        train = load_mini(IMAGE_SIZE).train
        index = torch.randperm(len(train.images), generator=gen)[:n]
        while len(index) < n:  # more images asked for than the set holds: repeat it
            index = torch.cat([index, index])[:n]
        return train.images[index].contiguous(), train.labels[index].clone(), "embedded mini CIFAR-10 images"
    except Exception:  # noqa: BLE001 - the benchmark only needs pixels
        images = torch.randint(0, 256, (n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=gen)
        return images, torch.randint(0, NUM_CLASSES, (n,), generator=gen), "random uint8 images"


class Rig:
    """A model, its SGD optimiser, an augmenter and one fixed batch on ``device``.

    :meth:`train_step` is the trainer's own step (:class:`camssl.train.Stepper`: ``method.step``
    under autocast, ``zero_grad``, ``backward``, SGD step). All step types of a table share one rig, so
    they run on the same weights, which keep training (at a small learning rate) as
    steps are timed.
    """

    def __init__(self, width: float, batch: Any, device: torch.device, channels_last: bool, seed: int, *,
                 model_args: dict[str, Any] | None = None, amp_dtype: torch.dtype | str | None = "auto") -> None:
        from camssl.augment import AugmentConfig, Augmenter
        from camssl.models import build_model

        torch.manual_seed(seed)
        self.width = width
        self.device = device
        self.channels_last = channels_last
        args = dict(model_args or {"name": MODEL, "width": width})
        model = build_model(args.pop("name"), NUM_CLASSES, **args).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model: nn.Module = model.train()
        self.base_model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        self.augmenter = Augmenter(AugmentConfig(), device)
        self.generator = torch.Generator().manual_seed(seed + 2)  # like the trainer's aug_gen (CPU)
        self.batch = batch
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.amp_dtype = (torch.bfloat16 if cuda_bf16 else None) if amp_dtype == "auto" else amp_dtype

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def stepper(self, method: Any, model: nn.Module | None = None) -> Any:
        """The trainer's own step (:class:`camssl.train.Stepper`) with ``method`` on this rig."""
        from camssl.train import Stepper

        return Stepper(model if model is not None else self.model, method, self.optimizer, self.augmenter,
                       self.generator, net=self.base_model, amp_dtype=self.amp_dtype, labeled_view="weak",
                       channels_last=self.channels_last)

    def init_optimizer_state(self) -> None:
        """Create the momentum buffers now, so that no step type pays for them."""
        for p in self.model.parameters():
            p.grad = torch.zeros_like(p)
        lr = [g["lr"] for g in self.optimizer.param_groups]
        for g in self.optimizer.param_groups:
            g["lr"] = 0.0
        self.optimizer.step()
        for g, value in zip(self.optimizer.param_groups, lr):
            g["lr"] = value
        self.optimizer.zero_grad(set_to_none=True)

    def run_info(self) -> Any:
        """What :meth:`Method.setup` gets on this rig: its batch is the whole training set
        (labeled images first, then the unlabeled ones), no validation images."""
        from camssl.data import Split, SplitConfig
        from camssl.distributed import Dist
        from camssl.methods import RunInfo

        b = self.batch
        n_l, n = len(b.y_l), len(b.y_l) + len(b.y_u)
        idx = torch.arange(n)
        split = Split(idx[:n_l], idx[n_l:], idx[:0], SplitConfig(n_labeled=n_l), "bench")

        def no_teacher(path: Any) -> nn.Module:
            raise ValueError("the benchmark has no frozen models")

        return RunInfo(NUM_CLASSES, [str(c) for c in range(NUM_CLASSES)], n, split, self.device, Dist(),
                       self.base_model, Path("."), torch.cat([b.y_l, b.y_u]), no_teacher)

    def train_step(self, method: Any, model: nn.Module | None = None) -> Callable[[bool], None]:
        """The trainer's step with ``method`` (set up on this rig first, as the trainer does);
        ``step(True)`` marks its phases for the profiler."""
        from torch.profiler import record_function

        if isinstance(method, Method):
            method.setup(self.run_info())
        stepper = self.stepper(method, model)

        def step(profiled: bool = False) -> None:
            stepper(self.batch, epoch=1.0, mark=record_function if profiled else None,
                    wrap=_MarkedViews if profiled else None)

        return step

    def views_step(self, anchor: str) -> Callable[[bool], None]:
        """The three views of one ``pseudo_label``/``gradcam`` step (labeled weak, anchor, strong)."""

        ctx = self.stepper(None).context(epoch=1.0)

        def step(profiled: bool = False) -> None:
            ctx.ssl_views(self.batch, anchor)

        return step


class _MarkedViews:
    """A StepContext whose ``view`` calls show up as ``bench.views`` in a profile."""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def view(self, kind: str, x: Tensor) -> Any:
        from torch.profiler import record_function

        with record_function("bench.views"):
            return self._ctx.view(kind, x)


class CaptumReference(Method):
    """Grad-CAM consistency built the way a user would without camssl: captum's LayerGradCam.

    Same objective as :class:`camssl.methods.gradcam.GradCAMConsistency` (L_S + L_P on one
    forward of labeled + strong images, the anchor's argmax as the class of both maps, the
    anchor's map carried into the strong view, the same normalisation and distance), but
    each map comes from ``LayerGradCam.attribute(..., relu_attributions=True,
    grad_kwargs={"create_graph": True})``, which runs its own forward pass and gradient;
    the anchor's prediction comes from one more (no-grad) forward pass.
    """

    name = "reference"
    uses_unlabeled = True

    def __init__(self, cfg: Any, model: nn.Module, layer: str) -> None:
        from captum.attr import LayerGradCam

        super().__init__(cfg)
        self.layer_gradcam = LayerGradCam(model, model.get_submodule(layer))

    def step(self, ctx: Any, batch: Any) -> Any:
        from camssl.losses import aligned_maps, map_distance, soft_cross_entropy
        from camssl.methods import StepOutput

        cfg = self.cfg
        n_l = batch.x_l.shape[0]
        size = (batch.x_u.shape[2], batch.x_u.shape[3])
        labeled, anchor, strong = ctx.ssl_views(batch, cfg.pseudo.anchor)
        with torch.no_grad():
            probs = F.softmax(ctx.model(anchor.images).float(), dim=1)
        classes = probs.argmax(1)
        logits = ctx.model(torch.cat([labeled.images, strong.images]))
        loss_s = F.cross_entropy(logits[:n_l].float(), batch.y_l)
        loss_p = soft_cross_entropy(probs, logits[n_l:]).mean()
        grad_kwargs = {"create_graph": True}
        map_anchor = self.layer_gradcam.attribute(anchor.images, target=classes, relu_attributions=True,
                                                  grad_kwargs=grad_kwargs)
        map_strong = self.layer_gradcam.attribute(strong.images, target=classes, relu_attributions=True,
                                                  grad_kwargs=grad_kwargs)
        target, pred, valid = aligned_maps(map_anchor.detach()[:, 0], map_strong[:, 0], anchor.theta, strong.theta, size)
        g = cfg.gradcam
        loss_g = map_distance(target, pred, valid, g.norm, g.distance).mean()
        return StepOutput(cfg.alpha * loss_s + cfg.pseudo.weight * loss_p + g.weight * loss_g)


# ---------------------------------------------------------------- step types


@dataclass
class StepType:
    key: str  # e.g. "gradcam@layer3/full"
    label: str  # for tables
    kind: str  # a registered method's name | reference | views
    layer: str | None = None
    mode: str | None = None
    images: int = 0  # images consumed per step (0: not a training step)
    fields: dict[str, Any] = field(default_factory=dict)  # the method's config fields (other than defaults)


CORE = ("supervised", "pseudo_label")  # always timed: the reference steps of every ratio


def method_steps(o: BenchOptions, names: tuple[str, ...] | None = None) -> list[StepType]:
    """The step variants the registered methods declare (``Method.bench_variants``), or those of ``names``."""
    from camssl.methods import METHODS

    n = o.batch + o.unlabeled
    out = []
    for name in names if names is not None else sorted(set(METHODS) - set(CORE)):
        m = METHODS[name]
        for key, fields in m.bench_variants.items():
            label = key + (f" ({', '.join(f'{k}={v}' for k, v in fields.items())})" if fields else "")
            out.append(StepType(key, label, name, images=n if m.uses_unlabeled else o.batch, fields=dict(fields)))
    return out


def step_types(o: BenchOptions, captum_ok: bool) -> list[StepType]:
    n = o.batch + o.unlabeled
    out = [*method_steps(o, CORE), StepType("views", "views only (augmentation of a pseudo_label step)", "views")]
    for layer in o.layers:
        for mode in o.modes:
            closed = " (closed form)" if layer == "layer4" else ""
            out.append(StepType(f"gradcam@{layer}/{mode}", f"gradcam @ {layer} {mode}{closed}", "gradcam", layer, mode, n))
        if o.reference and captum_ok:
            out.append(StepType(f"reference@{layer}", f"reference (captum) @ {layer} full", "reference", layer,
                                "full", n))
    if o.methods:
        out += method_steps(o)
    return out


def build_step(rig: Rig, st: StepType, model: nn.Module | None = None) -> Callable[[bool], None]:
    from camssl.methods import METHODS

    from camssl.methods.config import method_config

    gradcam = method_config("gradcam", gradcam={"layers": [st.layer or "layer3"], "grad_mode": st.mode or "full"})
    if st.kind == "views":
        return rig.views_step(gradcam.pseudo.anchor)
    if st.kind == "reference":
        return rig.train_step(CaptumReference(gradcam, model if model is not None else rig.model, st.layer or "layer3"),
                              model)
    cfg = gradcam if st.layer is not None else method_config(st.kind, **st.fields)
    return rig.train_step(METHODS[st.kind](cfg), model)
