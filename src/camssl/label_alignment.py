"""Label gradient alignment (LGA): impute labels for unlabeled data by aligning gradients.

After Jackson & Schulman, "Semi-Supervised Learning by Label Gradient Alignment" (arXiv
1902.02336). Only the paper's abstract is public: it maps a point (x, y) to the gradient of
the model at (x, y) and imputes labels by gradient descent on them, so that the unlabeled
data's gradient comes close to the labeled data's. Everything else here is *camssl's
choice* (docs/methods.md §3):

- imputed labels are logits Z (one row per unlabeled sample), q = softmax(Z / T);
- g_L = ∇_θ CE(f(x_L), y_L) and g_U(q) = ∇_θ mean_j CE(f(x_U,j), q_j), both batch means;
- D(g_L, g_U) = 1 − cos (``cosine``) or ‖g_L − g_U‖² (``sql2``);
- θ is the last linear layer (:class:`ClassifierGradient`, closed form) or every parameter
  (:class:`ParameterGradient`, through the forward's autograd graph);
- :func:`align_labels` takes K gradient steps on Z, each normalised to a root-mean-square
  change of ``lr`` logits per entry (D's gradient scales with 1/n, with 1/‖g_U‖ and, for
  ``sql2``, with the gradients' size: a fixed-length step keeps one ``lr`` meaningful
  across batch sizes, models and distances; it does not settle exactly at a minimum, so
  with many steps D wobbles near its floor).

Both gradient maps are affine in q: g_U(q) = J^T (p − q) / n with J the Jacobian of the
logits with respect to θ and p = softmax(f(x_U)), because CE(z, q) = logsumexp(z) − ⟨q, z⟩
for Σ_c q_c = 1. So ∂D/∂q = −J v / n with v = ∂D/∂g_U: one Jacobian–vector product,
never a Hessian. Example (any model whose logits are ``fc(h)``)::

    grad_u = ClassifierGradient(h_u, logits_u)            # features h_u feeding fc, logits fc(h_u)
    g_l = ClassifierGradient(h_l, logits_l)(F.one_hot(y_l, C).float())
    z = align_labels(logits_u.detach(), g_l, grad_u, steps=3, lr=1.0).z
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camssl.errors import ConfigError

__all__ = ["DISTANCES", "SCOPES", "AlignResult", "ClassifierGradient", "ParameterGradient", "align_labels",
           "alignment_step", "classifier_input", "find_classifier", "flat_gradient", "gradient_distance"]

DISTANCES: tuple[str, ...] = ("cosine", "sql2")
"""D between gradients: 1 − cosine similarity, or the squared L2 distance."""
SCOPES: tuple[str, ...] = ("classifier", "all")
"""The parameters whose gradients are aligned: the last linear layer, or all of them."""

_COS_FLOOR = 1e-20  # floor of ‖g_L‖·‖g_U‖ in the cosine (a zero gradient gives D = 1, no step)


def _f(t: Tensor) -> Tensor:
    """``t`` in float32, or float64 if it is (half precision from autocast is promoted)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def gradient_distance(g_l: Tensor, g_u: Tensor, distance: str = "cosine") -> Tensor:
    """D(g_L, g_U) of two flat gradients (differentiable; the reference for the closed forms)."""
    if distance == "cosine":
        return 1 - (g_l * g_u).sum() / (g_l.norm() * g_u.norm()).clamp_min(_COS_FLOOR)
    if distance == "sql2":
        return ((g_l - g_u) ** 2).sum()
    raise ValueError(f"unknown gradient distance {distance!r}; choose one of {', '.join(DISTANCES)}")


def _distance_and_grad(g_l: Tensor, g_u: Tensor, distance: str) -> tuple[Tensor, Tensor]:
    """D and ∂D/∂g_U in closed form."""
    if distance == "cosine":
        n_l, n_u = g_l.norm(), g_u.norm()
        denom = (n_l * n_u).clamp_min(_COS_FLOOR)
        cos = (g_l * g_u).sum() / denom
        return 1 - cos, -(g_l / denom - cos * g_u / (n_u * n_u).clamp_min(_COS_FLOOR))
    if distance == "sql2":
        return ((g_l - g_u) ** 2).sum(), 2 * (g_u - g_l)
    raise ValueError(f"unknown gradient distance {distance!r}; choose one of {', '.join(DISTANCES)}")


class ClassifierGradient:
    """g(q) = ∂ mean_j CE(W h_j + b, q_j) / ∂(W, b) of a linear classifier, in closed form.

    With p = softmax(W h + b) and h̃ = [h, 1]: g(q) = (1/n) Σ_j (p_j − q_j) h̃_jᵀ, a (C, K+1)
    matrix (weight columns, then the bias), returned flat. ``h`` (n, K) are the classifier's
    inputs and ``logits`` (n, C) its outputs from the same forward; both are detached.
    """

    def __init__(self, h: Tensor, logits: Tensor) -> None:
        h = _f(h.detach()).flatten(1)
        self.h1 = torch.cat([h, h.new_ones(h.shape[0], 1)], 1)
        self.p = F.softmax(_f(logits.detach()), dim=1)
        self.n = h.shape[0]

    def __call__(self, q: Tensor) -> Tensor:
        return ((self.p - q).T @ self.h1 / self.n).flatten()

    def pullback(self, v: Tensor) -> Tensor:
        """∂D/∂q (n, C) from v = ∂D/∂g (flat): −(1/n) h̃ Vᵀ."""
        return -(self.h1 @ v.view(self.p.shape[1], -1).T) / self.n


class ParameterGradient:
    """g(q) = ∂ mean_j CE(f_θ(x_j), q_j) / ∂θ for the parameters ``params``, through ``logits``' graph.

    ``logits`` (n, C) must come from a forward with the graph kept; ``g(q)`` is one
    vector–Jacobian product J^T (p − q)/n (the graph is retained), and :meth:`pullback` one
    Jacobian–vector product J v, taken as the derivative of the graph of J^T u with respect
    to the cotangent u (built once, ``create_graph=True``). Parameters that do not reach
    the logits count as zero. Needs a double backward through the network (not possible
    through SyncBatchNorm).
    """

    def __init__(self, logits: Tensor, params: Sequence[Tensor]) -> None:
        self.logits = logits
        self.p = F.softmax(_f(logits.detach()), dim=1)
        self.n = logits.shape[0]
        params = list(params)
        self._u = torch.zeros_like(logits, requires_grad=True)
        ju = torch.autograd.grad(logits, params, grad_outputs=self._u, create_graph=True, allow_unused=True)
        self.used = [i for i, g in enumerate(ju) if g is not None]
        self.params = [params[i] for i in self.used]
        self._ju = [ju[i] for i in self.used]

    def flat(self, grads: Sequence[Tensor | None]) -> Tensor:
        """Gradients of :attr:`params` (the given parameters that reach the logits) as one vector."""
        return flat_gradient(grads, self.params)

    def __call__(self, q: Tensor) -> Tensor:
        cot = ((self.p - q) / self.n).to(self.logits.dtype)
        return self.flat(torch.autograd.grad(self.logits, self.params, grad_outputs=cot, retain_graph=True))

    def pullback(self, v: Tensor) -> Tensor:
        parts = [t.view_as(p) for t, p in zip(torch.split(v, [p.numel() for p in self.params]), self.params)]
        (jv,) = torch.autograd.grad(self._ju, self._u, grad_outputs=[t.to(p.dtype) for t, p in zip(parts, self.params)],
                                    retain_graph=True)
        return -_f(jv) / self.n

    def labeled(self, loss: Tensor) -> Tensor:
        """g_L for :attr:`params`: the flat gradient of ``loss`` (graph retained)."""
        return self.flat(torch.autograd.grad(loss, self.params, retain_graph=True, allow_unused=True))


def flat_gradient(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    """``grads`` (None: zero) of ``params`` concatenated into one float32 (or float64) vector."""
    return torch.cat([_f(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


@dataclass
class AlignResult:
    """:func:`align_labels`' result."""

    z: Tensor  # the updated logits (n, C), detached
    d_before: Tensor  # D at the given z
    d_after: Tensor  # D at the returned z


def alignment_step(z: Tensor, g_l: Tensor, grad_u: ClassifierGradient | ParameterGradient, *,
                   temperature: float = 1.0, distance: str = "cosine") -> tuple[Tensor, Tensor]:
    """D(g_L, g_U(softmax(z/T))) and ∂D/∂z (n, C), without autograd through z."""
    q = F.softmax(_f(z) / temperature, dim=1)
    d, v = _distance_and_grad(_f(g_l), grad_u(q), distance)
    dq = grad_u.pullback(v)
    return d.detach(), (q * (dq - (q * dq).sum(1, keepdim=True)) / temperature).detach()


def align_labels(z: Tensor, g_l: Tensor, grad_u: ClassifierGradient | ParameterGradient, *, steps: int = 1,
                 lr: float = 1.0, temperature: float = 1.0, distance: str = "cosine") -> AlignResult:
    """``steps`` gradient-descent steps on the imputed logits z minimising D(g_L, g_U(softmax(z/T))).

    Each step moves z by ``lr · G / rms(G)``, G = ∂D/∂z (camssl's choice, see the module doc).
    ``g_l`` is the flat labeled gradient of the same parameters as ``grad_u``.
    """
    if steps < 0 or lr < 0 or temperature <= 0:
        raise ValueError(f"align_labels: need steps >= 0, lr >= 0, temperature > 0; got {steps}, {lr}, {temperature}")
    z = _f(z.detach())
    d_before, dz = alignment_step(z, g_l, grad_u, temperature=temperature, distance=distance)
    d_after = d_before
    for k in range(steps):
        if k:
            _, dz = alignment_step(z, g_l, grad_u, temperature=temperature, distance=distance)
        z = z - lr * dz / dz.pow(2).mean().sqrt().clamp_min(torch.finfo(dz.dtype).tiny)
    if steps:
        q = F.softmax(z / temperature, dim=1)
        d_after = _distance_and_grad(_f(g_l), grad_u(q), distance)[0].detach()
    return AlignResult(z, d_before, d_after)


def find_classifier(model: nn.Module, name: str = "fc") -> nn.Linear:
    """The linear classifier at module path ``name``, looking through DDP / torch.compile wrappers.

    Raises:
        ConfigError: no such module, or not an ``nn.Linear``.
    """
    inner = model
    while True:
        try:
            module = inner.get_submodule(name)
            break
        except AttributeError:
            inner = next((getattr(inner, a) for a in ("_orig_mod", "module") if isinstance(getattr(inner, a, None), nn.Module)),
                         None)
            if inner is None:
                raise ConfigError(f"method.classifier={name!r} is not a module of {type(model).__name__}; "
                                  "give the module path of the last linear layer (camssl models: fc)") from None
    if not isinstance(module, nn.Linear):
        raise ConfigError(f"method.classifier={name!r} is a {type(module).__name__}, not a linear layer (nn.Linear)")
    return module


@contextlib.contextmanager
def classifier_input(model: nn.Module, name: str = "fc") -> Iterator[dict[str, Tensor]]:
    """Record the input of the linear classifier ``name`` (:func:`find_classifier`) in the block.

    The yielded dict holds ``"h"``, the classifier's input in the latest forward inside the
    block (graph kept). The model's logits must be the classifier's output, unchanged.
    """
    out: dict[str, Tensor] = {}
    handle = find_classifier(model, name).register_forward_pre_hook(lambda m, args: out.__setitem__("h", args[0]))
    try:
        yield out
    finally:
        handle.remove()
