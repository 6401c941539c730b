"""Splitting the training data into labeled, unlabeled and validation indices.

:func:`make_split` is a pure function of (labels, config): it draws from
``numpy.random.Generator(PCG64(seed))``, whose streams are stable across platforms and
numpy versions, so the same inputs always give the same split. Steps, per class in label
order:

1. validation: ``round(val_fraction × n_c)`` images of class ``c`` (stratified);
2. labeled: ``n_labeled // C`` images of each class from the rest; the ``n_labeled % C``
   extra images go one each to classes picked by a seeded choice (class-balanced);
3. unlabeled: ``round(ratio × n_labeled)`` images drawn uniformly (not stratified) from
   everything left.

The three index sets are disjoint and sorted; the test set is never involved.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camssl.errors import ConfigError, DataError
from camssl.io import atomic_path

SPLIT_FORMAT = "camssl-split"
SPLIT_VERSION = 1
_PARTS = ("labeled", "unlabeled", "val")


@dataclass
class SplitConfig:
    """How the training data is divided."""

    val_fraction: float = 0.2  # share of each class held out for validation
    n_labeled: int = 5000  # class-balanced labeled images
    ratio: float = 1.0  # unlabeled = round(ratio × n_labeled), uniform from the rest (0: none)
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`ConfigError` on an invalid value."""
        if not _is_number(self.val_fraction) or not 0 <= self.val_fraction < 1:
            raise ConfigError(f"split.val_fraction must be a number in [0, 1); got {self.val_fraction!r}")
        if not _is_int(self.n_labeled) or self.n_labeled < 1:
            raise ConfigError(f"split.n_labeled must be a positive integer; got {self.n_labeled!r}")
        if not _is_number(self.ratio) or not (0 <= self.ratio < math.inf):
            raise ConfigError(f"split.ratio must be a number >= 0; got {self.ratio!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ConfigError(f"split.seed must be a non-negative integer; got {self.seed!r}")


@dataclass
class Split:
    """Index sets into the training data (``int64``, sorted, disjoint)."""

    labeled: torch.Tensor
    unlabeled: torch.Tensor
    val: torch.Tensor
    config: SplitConfig
    fingerprint: str  # the DataBundle's fingerprint, to check the split matches its data
    counts: dict[str, list[int]] = field(default_factory=dict)  # per-class counts of each part

    def save(self, path: str | Path) -> None:
        """Write the split as JSON (atomically): config, fingerprint, counts per class, indices."""
        path = Path(path)
        record: dict[str, Any] = {
            "format": SPLIT_FORMAT,
            "version": SPLIT_VERSION,
            "config": asdict(self.config),
            "fingerprint": self.fingerprint,
            "counts": self.counts,
            **{part: getattr(self, part).tolist() for part in _PARTS},
        }
        # One line per key: the header stays readable and the index lists stay compact.
        text = "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items()) + "\n}\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """Read a split written by :meth:`save`; :class:`DataError` if missing or malformed."""
        path = Path(path)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise DataError(f"split file '{path}' does not exist; check the path or make a new split") from exc
        except (OSError, ValueError) as exc:
            raise _bad_split(path, str(exc)) from exc
        if not isinstance(record, dict) or record.get("format") != SPLIT_FORMAT:
            raise _bad_split(path, "not a camssl split file")
        if record.get("version") != SPLIT_VERSION:
            raise _bad_split(path, f"format version {record.get('version')!r}, expected {SPLIT_VERSION}")
        try:
            config_fields = {f.name for f in fields(SplitConfig)}
            config = SplitConfig(**{k: v for k, v in record["config"].items() if k in config_fields})
            config.validate()
            indices = {part: _index_tensor(record[part]) for part in _PARTS}
            counts = {str(k): [int(c) for c in v] for k, v in record["counts"].items()}
            fingerprint = str(record["fingerprint"])
        except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as exc:
            raise _bad_split(path, f"{type(exc).__name__}: {exc}") from exc
        return cls(config=config, fingerprint=fingerprint, counts=counts, **indices)


def make_split(
    labels: torch.Tensor,
    num_classes: int,
    cfg: SplitConfig,
    fingerprint: str = "",
    *,
    class_names: Sequence[str] | None = None,
) -> Split:
    """Split training indices into labeled / unlabeled / validation (see the module doc).

    ``class_names`` only makes error messages name classes; :class:`DataError` when the data
    cannot supply what ``cfg`` asks for (the message gives the largest value that fits).
    """
    cfg.validate()
    if num_classes < 2:
        raise DataError(f"a split needs at least 2 classes; got {num_classes}")
    if cfg.n_labeled < num_classes:
        raise ConfigError(
            f"split.n_labeled={cfg.n_labeled} is fewer than the {num_classes} classes; "
            f"use split.n_labeled >= {num_classes}"
        )
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    y = labels.detach().cpu().numpy().astype(np.int64, copy=False)
    if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= num_classes)):
        raise DataError(f"labels must be a 1-D tensor of class ids in [0, {num_classes}); check the data")
    rng = np.random.Generator(np.random.PCG64(cfg.seed))

    val_parts, pools = [], []
    for c in range(num_classes):
        members = rng.permutation(np.flatnonzero(y == c))
        n_val = round(cfg.val_fraction * len(members))
        val_parts.append(members[:n_val])
        pools.append(members[n_val:])

    per_class = cfg.n_labeled // num_classes
    wanted = np.full(num_classes, per_class)
    wanted[rng.choice(num_classes, size=cfg.n_labeled % num_classes, replace=False)] += 1
    smallest = min(range(num_classes), key=lambda c: len(pools[c]))
    if any(len(pool) < want for pool, want in zip(pools, wanted, strict=True)):
        short = next(c for c in range(num_classes) if len(pools[c]) < wanted[c])
        need = f"{per_class}" if cfg.n_labeled % num_classes == 0 else f"{per_class}-{per_class + 1}"
        raise DataError(
            f"split.n_labeled={cfg.n_labeled} needs {need} images per class but class '{names[short]}' has only "
            f"{len(pools[short])} left after validation; use at most {len(pools[smallest]) * num_classes} labeled "
            "(or lower split.val_fraction)"
        )
    labeled = np.concatenate([pool[:want] for pool, want in zip(pools, wanted, strict=True)])
    rest = np.concatenate([pool[want:] for pool, want in zip(pools, wanted, strict=True)])

    n_unlabeled = round(cfg.ratio * cfg.n_labeled)
    if n_unlabeled > len(rest):
        max_ratio = math.floor(len(rest) * 100 / cfg.n_labeled) / 100
        raise DataError(
            f"split.ratio={cfg.ratio:g} asks for {n_unlabeled} unlabeled images but only {len(rest)} remain "
            f"after validation and labeled; use split.ratio <= {max_ratio:g}"
        )
    unlabeled = rng.choice(rest, size=n_unlabeled, replace=False)

    parts = {"labeled": labeled, "unlabeled": unlabeled, "val": np.concatenate(val_parts)}
    return Split(
        config=cfg,
        fingerprint=fingerprint,
        counts={k: np.bincount(y[v], minlength=num_classes).tolist() for k, v in parts.items()},
        **{k: torch.from_numpy(np.sort(v).astype(np.int64)) for k, v in parts.items()},
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _index_tensor(values: object) -> torch.Tensor:
    if not isinstance(values, list) or not all(_is_int(v) and v >= 0 for v in values):
        raise ValueError("index lists must hold non-negative integers")
    return torch.tensor(values, dtype=torch.int64)


def _bad_split(path: Path, reason: str) -> DataError:
    reason = " ".join(reason.split())
    return DataError(f"split file '{path}' is not a valid camssl split ({reason}); delete it to make a new split")
