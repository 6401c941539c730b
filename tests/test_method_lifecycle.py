"""The method lifecycle: a stateful method (per-sample table written in after_step, merged in
end_epoch, saved in the checkpoint) resumes exactly after SIGKILL, in one process and in two
gloo processes; and the merged table of two processes is the one-process table.

The method is ``seen_table`` of tests/camssl_test_methods.py (loss depends on the table, so
a resume that lost or mangled the state would train differently). Each uninterrupted
reference run trains beside the run that is killed.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import KILL, Background, finish, killed_mid_epoch_2, launch, records, same_weights, table_of

ARGS = ["--method", "seen_table", *KILL]
COMPARED = ("loss", "loss_s", "seen", "table_rows", "table_sum", "val_acc", "val_loss")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The uninterrupted one-process run, started when first asked for (wait() before reading it)."""
    run = tmp_path_factory.mktemp("seen") / "full1"
    reference = Background(1, "train", "--out", str(run), *ARGS)
    yield run, reference
    reference.stop()


@pytest.mark.parametrize("world", [1, 2])
def test_stateful_method_resumes_exactly_after_sigkill(world, one_process, tmp_path):
    single, single_run = one_process
    full, reference = (single, single_run) if world == 1 else \
        (tmp_path / "full", Background(world, "train", "--out", str(tmp_path / "full"), *ARGS))
    try:
        killed = tmp_path / "killed"
        state = killed_mid_epoch_2(world, killed, ARGS)
        assert state["method"]["table"]["stamp"].max() >= 0  # the table is in the checkpoint
        out = finish(launch(world, "train", "--resume", str(killed)))
        reference.wait()
        single_run.wait()
    finally:
        reference.stop()
    assert "resumed from" in out and "after epoch 1" in out

    for a, b in zip(records(full), records(killed), strict=True):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], abs=1e-6), (a["epoch"], key)
    ta, tb = table_of(full / "last.pt"), table_of(killed / "last.pt")
    assert torch.equal(ta["values"], tb["values"]) and torch.equal(ta["stamp"], tb["stamp"])
    assert same_weights(full / "last.pt", killed / "last.pt")

    # every rank wrote its own share; the merge keeps each row's latest write, so the rows
    # written and the step of their last write are those of the one-process run
    assert torch.equal(ta["stamp"], table_of(single / "last.pt")["stamp"])
    split = json.loads((full / "split.json").read_text())
    written = set(torch.nonzero(ta["stamp"] >= 0).flatten().tolist())
    assert written == set(split["unlabeled"])  # every unlabeled sample was drawn, nothing else
