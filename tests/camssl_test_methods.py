"""Methods used by the tests to exercise the method lifecycle (state, after_step, end_epoch, resume).

Registered on import; subprocesses get them with ``CAMSSL_METHODS=camssl_test_methods`` and
this folder on ``PYTHONPATH`` (``PLUGIN_ENV`` in tests/conftest.py); the test process itself only
inside ``conftest.test_methods_registered()``. Like any plugin, it imports the method API from
``camssl.methods`` (``camssl.config`` imports the plugins).

- ``index_log``: exactly ``supervised``, plus a record of the sample indices each rank
  used in the first epoch (gathered to every rank at the epoch's end, kept in the
  checkpoint's method state).
- ``seen_table``: supervised, with a per-sample table (:class:`camssl.methods.state.SampleTable`)
  written from ``idx_u`` after every step (how often and when each unlabeled sample was
  drawn); the loss depends on the table, so a resume that lost it would train differently.
"""

from __future__ import annotations

from dataclasses import dataclass

from camssl.methods import MethodConfig, register
from camssl.methods.state import SampleTable
from camssl.methods.supervised import Supervised


@dataclass
class IndexLogConfig(MethodConfig):
    name: str = "index_log"


@dataclass
class SeenTableConfig(MethodConfig):
    name: str = "seen_table"
    weight: float = 0.05  # loss = L_S * (1 + weight * mean count of the batch's unlabeled rows)


@register
class IndexLog(Supervised):
    name = "index_log"
    Config = IndexLogConfig

    def setup(self, run):
        self.dist = run.dist
        self.epoch = 0
        self.mine: dict[str, list[list[int]]] = {"labeled": []}
        self.log: dict[str, list] = {}

    def after_step(self, ctx, batch, out):
        if self.epoch == 0:
            self.mine["labeled"].append(batch.idx_l.tolist())

    def end_epoch(self):
        if self.epoch == 0:
            gathered = self.dist.all_gather_object(self.mine)
            self.log = {"world": self.dist.world, "labeled": [g["labeled"] for g in gathered]}
        self.epoch += 1
        return {}

    def state_dict(self):
        return {"epoch": self.epoch, "log": self.log}

    def load_state_dict(self, state):
        self.epoch, self.log = state["epoch"], state["log"]


@register
class SeenTable(Supervised):
    name = "seen_table"
    Config = SeenTableConfig
    uses_unlabeled = True

    def setup(self, run):
        self.dist = run.dist
        self.table = SampleTable(run.n_train, (2,), device=run.device)  # [times drawn, last step]

    def step(self, ctx, batch):
        out = super().step(ctx, batch)
        seen = self.table.values[batch.idx_u, 0].mean()
        out.loss = out.loss * (1 + self.cfg.weight * seen)
        out.metrics["seen"] = seen
        return out

    def after_step(self, ctx, batch, out):
        rows = self.table.values[batch.idx_u].clone()
        rows[:, 0] += 1
        rows[:, 1] = ctx.step
        self.table.write(batch.idx_u, rows, ctx.step)

    def end_epoch(self):
        self.table.merge(self.dist)
        return {"table_rows": float(self.table.written().sum()), "table_sum": float(self.table.values.sum())}

    def state_dict(self):
        return {"table": self.table.state_dict()}

    def load_state_dict(self, state):
        self.table.load_state_dict(state["table"])

