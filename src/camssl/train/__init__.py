"""Training: the loop, the step, checkpoints, run directories, schedules and EMA.

- :func:`train` — a whole run from a config (what ``camssl train`` calls);
- :class:`Trainer` — a run built from a config, optionally with a given split and
  initial weights, for an outer loop (active learning, a notebook) to drive;
- :class:`Stepper` — the training step (``camssl bench`` times it).
"""

from camssl.train.evaluate import evaluate
from camssl.train.guards import TrainingError
from camssl.train.loop import RANK_SEED_STRIDE, Trainer, pick_device
from camssl.train.run import process_settings, train
from camssl.train.schedule import EMA, lr_factor
from camssl.train.state import TrainState
from camssl.train.step import Stepper

__all__ = ["EMA", "RANK_SEED_STRIDE", "Stepper", "TrainState", "Trainer", "TrainingError", "evaluate", "lr_factor",
           "pick_device", "process_settings", "train"]
