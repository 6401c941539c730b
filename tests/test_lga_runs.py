"""``lga`` and ``vat`` as full runs: the method lifecycle under SIGKILL, and the command line.

A stateful method (lga's per-sample label table: written in after_step, merged over ranks in
end_epoch, saved in the checkpoint; its loss depends on the table, so a resume that lost or
mangled the state would train differently) with VAT and an EMA of the weights is killed with
SIGKILL as soon as its epoch-1 checkpoint exists, in one process and in two gloo processes,
and resumed: every record, the table, the weights, the EMA and the result equal those of an
uninterrupted run (trained beside it). With two processes this needs every rank's own RNG
state back (augmentations and VAT's random directions come from each rank's generator), the
averaged BatchNorm statistics and the EMA; and the merged table of two processes is the
one-process table. (These were three tests: a test method's table in tests/test_method_lifecycle.py,
pseudo_label with EMA in tests/test_distributed.py, and this one; they checked the same machinery.)
"""

from __future__ import annotations

import json

import pytest
import torch

from camssl.cli import main
from conftest import (KILL, TINY, Background, finish, killed_mid_epoch_2, launch, records, result, same_weights,
                      table_of)

ARGS = ["--method", "lga", "method.vat.weight=0.3", "method.ramp_epochs=1", "method.vat.ramp_epochs=1",
        "optim.ema_decay=0.9", *KILL]
COMPARED = ("loss", "loss_s", "loss_u", "loss_vat", "d_before", "d_after", "pl_acc", "imputed_acc",
            "imputed_rows_pl_acc", "seen_unlabeled", "val_acc", "val_loss", "map_agreement", "lr")
RESULT = ("test_acc", "val_acc", "best_val_acc", "best_val_epoch", "test_acc_at_best_val", "test_loss", "steps")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The uninterrupted one-process run, started when first asked for (wait() before reading it)."""
    run = tmp_path_factory.mktemp("lga") / "full1"
    reference = Background(1, "train", "--out", str(run), *ARGS)
    yield run, reference
    reference.stop()


@pytest.mark.parametrize("world", [1, 2])
def test_lga_with_vat_resumes_exactly_after_sigkill(world, one_process, tmp_path):
    single, single_run = one_process
    full, reference = (single, single_run) if world == 1 else \
        (tmp_path / "full", Background(world, "train", "--out", str(tmp_path / "full"), *ARGS))
    try:
        killed = tmp_path / "killed"
        state = killed_mid_epoch_2(world, killed, ARGS)
        assert state["method"]["table"]["stamp"].max() >= 0  # the label table is in the checkpoint
        assert len(state["rng_ranks"]) == world and state["ema"] is not None
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
    assert same_weights(full / "last.pt", killed / "last.pt", "ema")
    a, b = result(full), result(killed)
    for key in RESULT:
        assert b[key] == pytest.approx(a[key], abs=1e-6), key
    assert b["world_size"] == world

    # each rank writes the rows of its share; after the merge the rows written and the step of
    # their last write are those of one process, and exactly the unlabeled images have rows
    assert torch.equal(ta["stamp"], table_of(single / "last.pt")["stamp"])
    split = json.loads((full / "split.json").read_text())
    assert set(torch.nonzero(ta["stamp"] >= 0).flatten().tolist()) == set(split["unlabeled"])
    assert records(full)[-1]["seen_unlabeled"] == 1.0


@pytest.mark.parametrize("name, argv", [
    ("lga", ["--method", "lga"]),
    ("vat", ["--method", "vat", "method.vat.entmin_weight=0.06"]),
    ("lga_vat", ["--method", "lga", "method.vat.weight=0.3", "method.view=strong"]),
])
def test_lga_and_vat_train_from_the_command_line(name, argv, tmp_path, capsys):
    run = tmp_path / name
    assert main(["train", "--out", str(run), *argv, *TINY]) == 0
    printed = capsys.readouterr().out
    done = result(run)
    record = records(run)[-1]
    assert done["method"] == argv[1] and 0.0 <= done["test_acc"] <= 1.0
    if argv[1] == "lga":
        assert {"loss_u", "d_before", "d_after", "imputed_acc", "imputed_rows_pl_acc", "seen_unlabeled"} <= set(record)
        assert "imputed_acc" in printed and "d_after" in printed
        assert (record.get("loss_vat", 0.0) > 0) == (name == "lga_vat")
    else:
        assert record["loss_vat"] > 0 and "loss_vat" in printed
        assert record["loss_ent"] > 0
