"""Where a run stands: the epoch and step, the best validation so far, the history and the timers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

SAVED = ("epoch", "step", "best", "history", "train_time", "train_images", "elapsed_before")


@dataclass
class TrainState:
    """Everything of a run's progress that is not a tensor; saved in ``last.pt`` and restored on resume.

    The wall time is counted per segment (a resumed run is a new segment): ``elapsed()`` is
    the earlier segments' time plus this one's.
    """

    epoch: int = 0  # epochs finished
    step: int = 0  # global training steps taken
    best: dict[str, Any] = field(default_factory=lambda: {"val_acc": -1.0, "epoch": 0})
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch (metrics.jsonl)
    train_time: float = 0.0  # seconds inside training epochs (all segments)
    train_images: int = 0  # images trained on (all segments, all ranks)
    elapsed_before: float = 0.0  # wall time of the earlier segments
    segment_start: float = field(default_factory=time.time)  # not saved: when this segment began
    segment_epochs: int = 0  # not saved: epochs finished in this segment

    def elapsed(self) -> float:
        """Wall time of the run so far, summed over resumed segments."""
        return self.elapsed_before + time.time() - self.segment_start

    def seconds_per_epoch(self) -> float:
        """Mean wall time of this segment's epochs (evaluation and checkpoints included)."""
        return (time.time() - self.segment_start) / max(1, self.segment_epochs)

    def state_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in SAVED}
        out["elapsed_before"] = self.elapsed()  # what the next segment starts from
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in SAVED:
            setattr(self, k, state[k])
        self.segment_start, self.segment_epochs = time.time(), 0
