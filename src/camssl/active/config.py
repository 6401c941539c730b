"""The ``active:`` section of an active-learning config, and reading a config that has one.

An active-learning config is a training config (``base:``, ``data:``, ``model:``,
``method:``, ``optim:`` ... as for ``camssl train``) plus an ``active:`` section::

    base: cpu
    method: {name: pseudo_label}
    optim: {epochs: 4, steps_per_epoch: 200}
    active:
      strategy: revival
      initial: 500
      budget: 250
      cycles: 4
      revival: {k: 50, guard: cap}

Every default below that the issue and the slides do not fix is *camssl's choice*
(docs/methods.md §4 and docs/active-learning.md say which).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Literal

from camssl.config import TrainConfig, config_from_tree, from_dict, load_yaml_tree, parse_override, to_dict
from camssl.checks import in_range, integer_at_least
from camssl.errors import ConfigError

# the query strategies by name (filled by camssl.active.strategies.register; kept here so that
# checking a config's strategy needs no import of the strategies)
STRATEGIES: dict[str, Callable[..., Any]] = {}

Guard = Literal["cap", "kcenter", "none"]
Target = Literal["soft", "hard"]
Oracle = Literal["simulated", "files", "labelstudio"]


@dataclass
class RevivalConfig:
    """REVIVAL's graph, propagation, perturbation and diversity guard (all camssl's choices, after Iscen et al. 2019)."""

    k: int = 50  # neighbours per node of the kNN graph (fewer when the graph has fewer nodes)
    gamma: float = 3.0  # edge weight = max(cosine similarity, 0) ** gamma
    alpha: float = 0.99  # propagation: solve (I - alpha * W_hat) F = Y
    cg_tol: float = 1e-6  # conjugate gradient: relative residual tolerance, per class
    cg_maxiter: int = 50  # conjugate gradient: iterations per class at most
    xi: float = 1e-6  # VAT: finite-difference step of the power iteration
    eps: float = 6.0  # VAT: norm of the perturbation (normalised images, as in VAT for CIFAR-10)
    power_iters: int = 1  # VAT: power iterations
    target: Target = "soft"  # virtual label as VAT target and in the score: F_hat (soft) or one-hot argmax F (hard)
    guard: Guard = "cap"  # diversity guard: per-virtual-class cap | k-center among top candidates | none
    cap: float = 2.0  # guard=cap: at most ceil(cap * budget / classes) queries per virtual label
    candidates: float = 4.0  # guard=kcenter: k-center greedy among the top candidates * budget scores
    max_scored: int = 0  # > 0: perturb and score only this many pool images (the least confident virtual labels)

    def validate(self) -> None:
        integer_at_least("active.revival.k", self.k, 1)
        in_range("active.revival.gamma", self.gamma, 0, math.inf, low_open=True)
        in_range("active.revival.alpha", self.alpha, 0, 1, low_open=True, high_open=True)
        in_range("active.revival.cg_tol", self.cg_tol, 0, 1, low_open=True)
        integer_at_least("active.revival.cg_maxiter", self.cg_maxiter, 1)
        in_range("active.revival.xi", self.xi, 0, math.inf, low_open=True)
        in_range("active.revival.eps", self.eps, 0, math.inf)
        integer_at_least("active.revival.power_iters", self.power_iters, 0)
        in_range("active.revival.cap", self.cap, 1, math.inf)
        in_range("active.revival.candidates", self.candidates, 1, math.inf)
        integer_at_least("active.revival.max_scored", self.max_scored, 0)


@dataclass
class ActiveConfig:
    """The active-learning loop: what to query, how much, how often, and from whom."""

    strategy: str = "revival"  # one of camssl.active.STRATEGIES
    initial: int = 500  # class-balanced initial labeled set (at least one image per class)
    budget: int = 250  # images queried per cycle
    cycles: int = 4  # query rounds; the loop trains cycles + 1 times (cycle 0 on the initial set)
    oracle: Oracle = "simulated"  # simulated: the data's labels; files: a person fills in a CSV; labelstudio
    warm_start: bool = False  # start each cycle from the previous cycle's final weights (default: re-initialise)
    score_batch_size: int = 256  # images per forward when scoring the pool
    subset: int = 0  # > 0: each cycle scores a fresh random subset of this many pool images (+ the labeled set)
    revival: RevivalConfig = field(default_factory=RevivalConfig)

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose one of: {', '.join(STRATEGIES)}")
        if isinstance(self.initial, bool) or not isinstance(self.initial, int) or self.initial < 1:
            raise ConfigError(f"--initial {self.initial} is invalid: give the size of the initial labeled set (>= 1)")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise ConfigError(f"--budget {self.budget} is invalid: give the number of images to query per cycle (>= 1)")
        integer_at_least("--cycles", self.cycles, 0)
        integer_at_least("active.score_batch_size", self.score_batch_size, 1)
        integer_at_least("active.subset", self.subset, 0)
        if 0 < self.subset < self.budget:
            raise ConfigError(f"active.subset={self.subset} is smaller than --budget {self.budget}: score at least "
                              "as many pool images as are queried (or active.subset=0 for the whole pool)")
        self.revival.validate()

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def active_config(tree: dict[str, Any] | None, overrides: dict[str, Any] | None = None) -> ActiveConfig:
    """An :class:`ActiveConfig` from an ``active:`` section and ``{"key": value}`` changes (``revival.k``...)."""
    tree = dict(tree or {})
    revival = dict(tree.get("revival") or {})
    for key, value in (overrides or {}).items():
        if key.startswith("revival."):
            revival[key.split(".", 1)[1]] = value
        else:
            tree[key] = value
    if revival:
        tree["revival"] = revival
    cfg = from_dict(ActiveConfig, tree, "active")
    cfg.validate()
    return cfg


def load_active_config(
    preset: str, overrides: list[str] | dict[str, Any] | None = None, active: dict[str, Any] | None = None,
    default_method: str | None = None,
) -> tuple[TrainConfig, ActiveConfig]:
    """(training config, active config) of a preset or YAML file, with ``section.key=value`` overrides.

    Overrides of ``active.*`` go to the active config, the rest to the training config;
    ``active`` holds further active settings (the command line's --strategy, --budget ...).
    ``default_method``: the task model's method when the file has no ``active:`` section (a
    plain training preset such as ``cpu``) and the overrides do not name one.
    """
    tree = load_yaml_tree(preset)
    if "sweep" in tree:
        raise ConfigError(f"'{preset}' is a sweep spec; give a training or active-learning config to camssl active")
    section = tree.pop("active", None)
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"config '{preset}': the active: section must be a mapping (strategy:, initial:, ...)")
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    overrides = dict(overrides or {})
    act = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("active.")}
    act.update(active or {})
    train = {k: v for k, v in overrides.items() if not k.startswith("active.")}
    if section is None and default_method is not None and "method.name" not in train:
        train["method.name"] = default_method
    return config_from_tree(tree, train), active_config(section, act)
