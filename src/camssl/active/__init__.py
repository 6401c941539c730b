"""Active learning for semi-supervised models: the loop, pool scoring and query strategies.

``camssl active --data DIR --strategy revival --initial 500 --budget 250 --cycles 4 --out runs/al``
runs :func:`run_active`: train a camssl method (default ``pseudo_label``) on the labeled
set and the unlabeled pool, score the pool, query ``budget`` images, reveal their labels
(simulated from the data, or by a person through a CSV or Label Studio), retrain; ``OUT/active.json``
records every labeled image's cycle and strategy and every cycle's results.

- :mod:`.loop` — the cycles (:func:`run_active`); :mod:`.state` — active.json;
- :mod:`.strategies` — ``random``, ``entropy``, ``coreset``, ``revival`` (registry :data:`STRATEGIES`);
- :mod:`.propagation` — kNN graph and label propagation by conjugate gradient;
- :mod:`.pool` — features and logits of the pool, the strategies' context, diagnostics;
- :mod:`.oracle` — the simulated and the files oracle; :mod:`.labelstudio` — the Label Studio oracle;
- :mod:`.curves` — accuracy-vs-labels tables and figure (``camssl active-table``);
- :mod:`.probe` — the fixed-feature experiment (a frozen model, a linear-probe task model);
- :mod:`.config` — the ``active:`` config section.

REVIVAL (Guo et al., ICCV 2021) is implemented as camssl formulates it (docs/methods.md §4):
no public code exists and only slides are available, so every formula here is camssl's.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The names below are imported when first used (PEP 562), so that the command line, which imports
# camssl.active.cli for its parser, does not pay for scipy and the strategies at every start.
_WHERE = {
    "ActiveConfig": "config", "RevivalConfig": "config", "load_active_config": "config",
    "run_active": "loop",
    "features_and_logits": "pool", "pool_context": "pool", "virtual_label_accuracy": "pool",
    "Propagation": "propagation", "knn_graph": "propagation", "label_propagation": "propagation",
    "normalized_adjacency": "propagation", "propagate": "propagation",
    "ActiveState": "state",
    "STRATEGIES": "strategies", "PoolContext": "strategies", "Selection": "strategies",
    "k_center_greedy": "strategies", "register": "strategies", "select": "strategies",
}

if TYPE_CHECKING:
    from camssl.active.config import ActiveConfig, RevivalConfig, load_active_config
    from camssl.active.loop import run_active
    from camssl.active.pool import features_and_logits, pool_context, virtual_label_accuracy
    from camssl.active.propagation import Propagation, knn_graph, label_propagation, normalized_adjacency, propagate
    from camssl.active.state import ActiveState
    from camssl.active.strategies import STRATEGIES, PoolContext, Selection, k_center_greedy, register, select


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'camssl.active' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"camssl.active.{_WHERE[name]}"), name)
    globals()[name] = value
    return value

__all__ = sorted(_WHERE)  # the public names are exactly those resolved lazily above
