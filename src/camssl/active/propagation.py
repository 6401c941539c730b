"""Graph-based label propagation (after Iscen et al., CVPR 2019): REVIVAL's virtual labels.

camssl's formulation (docs/methods.md §4; the REVIVAL slides give no formulas):

1. features are L2-normalised; s_ij = cosine similarity;
2. kNN graph: each node keeps its k most similar other nodes (exact search, a chunked
   matrix product in torch), weight ``max(s_ij, 0) ** gamma``; the graph is made symmetric
   as ``W + W^T`` and its diagonal is zero;
3. ``W_hat = D^-1/2 W D^-1/2`` with D the degrees;
4. Y: one column per class, ``Y_ic = 1 / |L_c|`` for the labeled nodes of class c (so every
   class pushes with the same total mass, whatever its number of labels), 0 elsewhere;
5. ``(I - alpha W_hat) F = Y`` solved per class by conjugate gradient
   (:func:`scipy.sparse.linalg.cg`; the matrix is symmetric positive definite);
6. virtual label = argmax of the row of F; its distribution ``F_hat`` is the row of
   ``max(F, 0)`` normalised to sum 1 (uniform for a row with no mass: a node that no
   labeled node reaches); confidence = ``1 - H(F_hat) / log C``.

The exact kNN search costs O(N² D) multiply-adds. faiss-cpu's exact index is faster, but
the search is a small part of REVIVAL's selection (the perturbation of every pool image
dominates), so camssl keeps the torch product: no extra dependency, and it runs on the GPU
with the model. The measurement behind this choice is in docs/active-learning.md
(``scripts/active_select_bench.py --faiss`` repeats it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import cg
from torch import Tensor


def knn_search(features: Tensor, k: int, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """(similarities, indices), each (N, k): every row's k most similar other rows by inner product.

    ``features`` should be L2-normalised (then the inner product is the cosine similarity).
    Exact (``torch.topk`` over each block of similarities); rows are processed ``chunk`` at a
    time so memory stays at ``chunk × N`` floats.
    """
    n = features.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"knn_search: need 1 <= k < number of rows ({n}); got k={k}")
    feats = features.float()
    sims, idx = [], []
    for start in range(0, n, chunk):
        block = feats[start : start + chunk] @ feats.T
        rows = torch.arange(start, min(start + chunk, n), device=block.device)
        block[rows - start, rows] = -math.inf  # no self-loops
        top = torch.topk(block, k, dim=1)
        sims.append(top.values)
        idx.append(top.indices)
    return torch.cat(sims), torch.cat(idx)


def knn_graph(features: Tensor, k: int = 50, gamma: float = 3.0, chunk: int = 2048) -> sp.csr_matrix:
    """The symmetric kNN affinity matrix W (N×N, zero diagonal) of L2-normalised ``features``.

    ``k`` is capped at N - 1 (small pools). Edge weight ``max(s, 0) ** gamma``; W = A + Aᵀ
    where A holds each node's k neighbours, so a pair that are each other's neighbours gets
    twice the weight.
    """
    n = features.shape[0]
    k = min(k, n - 1)
    sims, idx = knn_search(F.normalize(features.float(), dim=1), k, chunk)
    weights = sims.clamp_min(0).pow(gamma).cpu().numpy().astype(np.float64).ravel()
    rows = np.repeat(np.arange(n), k)
    a = sp.csr_matrix((weights, (rows, idx.cpu().numpy().ravel())), shape=(n, n))
    w = (a + a.T).tocsr()
    w.setdiag(0)
    w.eliminate_zeros()
    return w


def normalized_adjacency(w: sp.spmatrix) -> sp.csr_matrix:
    """``D^-1/2 W D^-1/2`` (a node without edges keeps a zero row)."""
    degree = np.asarray(w.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    np.divide(1.0, np.sqrt(degree), out=inv_sqrt, where=degree > 0)
    d = sp.diags(inv_sqrt)
    return (d @ w @ d).tocsr()


@dataclass
class Propagation:
    """The outcome of label propagation over N nodes and C classes."""

    scores: np.ndarray  # F (N, C), the solution of (I - alpha W_hat) F = Y
    probs: Tensor  # F_hat (N, C): rows of max(F, 0) normalised to sum 1 (uniform where a row is all zero)
    labels: Tensor  # (N,) virtual label = argmax F
    confidence: Tensor  # (N,) 1 - H(F_hat) / log C, in [0, 1]
    cg_iterations: list[int]  # conjugate-gradient iterations per class


def class_balanced_targets(labeled: Tensor, labels: Tensor, n: int, num_classes: int) -> np.ndarray:
    """Y (n, C): ``1 / |L_c|`` at the labeled nodes of class c, 0 elsewhere."""
    y = np.zeros((n, num_classes))
    lab, cls = labeled.cpu().numpy(), labels.cpu().numpy()
    counts = np.bincount(cls, minlength=num_classes)
    y[lab, cls] = 1.0 / counts[cls]
    return y


def propagate(w_hat: sp.spmatrix, labeled: Tensor, labels: Tensor, num_classes: int, *, alpha: float = 0.99,
              tol: float = 1e-6, maxiter: int = 50) -> Propagation:
    """Solve ``(I - alpha W_hat) F = Y`` per class by conjugate gradient; see the module doc.

    ``labeled`` (L,) are node positions with ``labels`` (L,) in ``[0, num_classes)``.
    """
    n = w_hat.shape[0]
    if len(labeled) != len(labels) or len(labeled) == 0:
        raise ValueError("propagate: give one label per labeled node, and at least one labeled node")
    y = class_balanced_targets(labeled, labels, n, num_classes)
    a = (sp.identity(n, format="csr") - alpha * w_hat).tocsr()
    scores = np.zeros((n, num_classes))
    iterations = []
    for c in range(num_classes):
        if not y[:, c].any():
            iterations.append(0)
            continue
        count = [0]

        def step(_: np.ndarray, count: list[int] = count) -> None:
            count[0] += 1

        scores[:, c], _ = cg(a, y[:, c], rtol=tol, atol=0.0, maxiter=maxiter, callback=step)
        iterations.append(count[0])
    return Propagation(scores, *virtual_labels(scores), iterations)


def virtual_labels(scores: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
    """(F_hat, argmax, confidence) of propagation scores F (N, C); see the module doc."""
    f = torch.from_numpy(np.clip(scores, 0.0, None)).float()
    mass = f.sum(1, keepdim=True)
    c = f.shape[1]
    probs = torch.where(mass > 0, f / mass.clamp_min(1e-30), torch.full_like(f, 1.0 / c))
    ent = -(probs * probs.clamp_min(1e-30).log()).sum(1)
    confidence = (1.0 - ent / math.log(c)).clamp(0.0, 1.0) if c > 1 else torch.ones(len(f))
    return probs, torch.from_numpy(scores.argmax(1)).long(), confidence


def label_propagation(features: Tensor, labeled: Tensor, labels: Tensor, num_classes: int, *, k: int = 50,
                      gamma: float = 3.0, alpha: float = 0.99, tol: float = 1e-6, maxiter: int = 50) -> Propagation:
    """Virtual labels of every row of ``features`` from the labeled rows ``labeled`` (positions) and their ``labels``.

    The whole pipeline of the module doc: kNN graph, normalisation, conjugate gradient.
    """
    w_hat = normalized_adjacency(knn_graph(features, k, gamma))
    return propagate(w_hat, labeled, labels, num_classes, alpha=alpha, tol=tol, maxiter=maxiter)
