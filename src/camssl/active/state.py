"""``OUT/active.json``: the whole state of an active-learning run, rewritten atomically after every step.

Keys (one per line, values as compact JSON)::

    format, version   "camssl-active", 1
    active            the active-learning settings (ActiveConfig)
    train_config      the task model's training config (the cycles' config.yaml differ only in split.*)
    fingerprint       the training data's fingerprint; classes; n_train
    val               the validation indices (fixed for every cycle)
    labeled           {"index": [...], "cycle": [...], "strategy": [...], "label": [...]}: every labeled
                      image, the cycle it was first trained in (0 = the initial set), the strategy
                      that chose it ("initial" for the initial set) and the label the oracle gave
    cycles            one record per trained cycle: results (test accuracy ...), the query made
                      with its model (indices, class histogram, virtual-label accuracy before and
                      after), and "time" (training, features, selection, diagnostics, in seconds)
    pending           the query waiting for its labels ({"cycle", "index", "csv"}), else null
    finished          true when the last cycle is trained

Only the "time" records depend on the machine and on interruptions: a run killed at any
point and resumed writes the same file as an uninterrupted one, apart from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from camssl.errors import UserError
from camssl.io import atomic_path

STATE_FORMAT = "camssl-active"
STATE_VERSION = 1
STATE_FILE = "active.json"
_KEYS = ("format", "version", "active", "train_config", "fingerprint", "classes", "n_train", "val", "labeled",
         "cycles", "pending", "finished")


@dataclass
class ActiveState:
    active: dict[str, Any]
    train_config: dict[str, Any]
    fingerprint: str
    classes: list[str]
    n_train: int
    val: list[int]
    labeled: dict[str, list[Any]] = field(default_factory=lambda: {"index": [], "cycle": [], "strategy": [], "label": []})
    cycles: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[str, Any] | None = None
    finished: bool = False

    # ------------------------------------------------------------ labeled images

    def add_labels(self, indices: list[int], labels: list[int], cycle: int, strategy: str) -> None:
        known = set(self.labeled["index"])
        if known & set(indices) or len(set(indices)) != len(indices):
            raise RuntimeError("an image was labeled twice")  # the strategies' checks make this a bug
        self.labeled["index"] += list(indices)
        self.labeled["label"] += list(labels)
        self.labeled["cycle"] += [cycle] * len(indices)
        self.labeled["strategy"] += [strategy] * len(indices)

    def labeled_until(self, cycle: int) -> tuple[Tensor, Tensor]:
        """(indices ascending, labels) of the images labeled for training cycle ``cycle``."""
        rows = sorted((i, y) for i, y, c in zip(self.labeled["index"], self.labeled["label"], self.labeled["cycle"],
                                                strict=True) if c <= cycle)
        return torch.tensor([i for i, _ in rows], dtype=torch.long), torch.tensor([y for _, y in rows], dtype=torch.long)

    # ------------------------------------------------------------ the file

    def record(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "version": STATE_VERSION, **{k: getattr(self, k) for k in _KEYS[2:]}}

    def save(self, out: Path) -> None:
        rec = self.record()
        lines = []
        for k, v in rec.items():
            if k == "cycles":
                body = ",\n".join(f"    {json.dumps(c)}" for c in v)
                lines.append(f'  "cycles": [\n{body}\n  ]' if v else '  "cycles": []')
            else:
                lines.append(f"  {json.dumps(k)}: {json.dumps(v)}")
        path = Path(out) / STATE_FILE
        with atomic_path(path) as tmp:
            tmp.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")

    @classmethod
    def load(cls, out: Path) -> ActiveState:
        path = Path(out) / STATE_FILE
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"cannot resume '{out}': it holds no active-learning run (no {STATE_FILE}); "
                            "start one without --resume") from None
        except (OSError, ValueError) as e:
            raise UserError(f"'{path}' is unreadable ({type(e).__name__}); it is not a camssl active-learning "
                            "state; choose another --out") from None
        if not isinstance(rec, dict) or rec.get("format") != STATE_FORMAT or rec.get("version") != STATE_VERSION:
            raise UserError(f"'{path}' is not a camssl active-learning state (format {STATE_FORMAT} v{STATE_VERSION})")
        try:
            return cls(**{k: rec[k] for k in _KEYS[2:]})
        except (KeyError, TypeError) as e:
            raise UserError(f"'{path}' lacks {e}; it is not a complete camssl active-learning state") from None


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """An active.json record without its "time" entries (what must match between a resumed and an uninterrupted run)."""
    out = dict(record)
    out["cycles"] = [{k: v for k, v in c.items() if k != "time"} for c in record.get("cycles", [])]
    return out
