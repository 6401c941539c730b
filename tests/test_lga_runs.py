"""``lga`` and ``vat`` as full runs: exact resume of the label table after SIGKILL (1 and 2 gloo
processes, with the machinery of tests/test_method_lifecycle.py) and the command line."""

from __future__ import annotations

import json

import pytest
import torch

from camssl.cli import main
from camssl_test_methods import table_of
from test_method_lifecycle import finish, killed_mid_epoch_2, launch, records

ARGS = ["--width", "0.125", "--labeled", "320", "--ratio", "0.5", "--epochs", "2", "--method", "lga",
        "method.vat_weight=0.3", "method.rampup_epochs=1", "optim.batch_size=32", "deterministic=true",
        "cam_grid=false", "threads=1"]
COMPARED = ("loss", "loss_s", "loss_u", "loss_vat", "d_before", "d_after", "pl_acc", "imputed_acc",
            "imputed_rows_pl_acc", "seen_unlabeled", "val_acc", "val_loss")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    run = tmp_path_factory.mktemp("lga") / "full1"
    finish(launch(1, "train", "--out", str(run), *ARGS))
    return run


@pytest.mark.parametrize("world", [1, 2])
def test_lga_with_vat_resumes_exactly_after_sigkill(world, one_process, tmp_path):
    if world == 1:
        full = one_process
    else:
        full = tmp_path / "full"
        finish(launch(world, "train", "--out", str(full), *ARGS))
    killed = tmp_path / "killed"
    killed_mid_epoch_2(world, killed, ARGS)
    out = finish(launch(world, "train", "--resume", str(killed)))
    assert "resumed from" in out and "after epoch 1" in out

    for a, b in zip(records(full), records(killed), strict=True):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], abs=1e-6), (a["epoch"], key)
    ta, tb = table_of(full / "last.pt"), table_of(killed / "last.pt")
    assert torch.equal(ta["values"], tb["values"]) and torch.equal(ta["stamp"], tb["stamp"])
    wa = torch.load(full / "last.pt", weights_only=True)["model"]
    wb = torch.load(killed / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(w, wb[k]) for k, w in wa.items())

    # each rank writes the rows of its share; after the merge the rows written and the step of
    # their last write are those of one process, and exactly the unlabeled images have rows
    assert torch.equal(ta["stamp"], table_of(one_process / "last.pt")["stamp"])
    split = json.loads((full / "split.json").read_text())
    assert set(torch.nonzero(ta["stamp"] >= 0).flatten().tolist()) == set(split["unlabeled"])
    assert records(full)[-1]["seen_unlabeled"] == 1.0


def test_lga_and_vat_train_from_the_command_line(tmp_path, capsys):
    tiny = ["--width", "0.125", "--labeled", "200", "--ratio", "1", "--epochs", "1", "optim.batch_size=32",
            "cam_grid=false", "threads=1"]
    cases = {"lga": ["--method", "lga"], "vat": ["--method", "vat", "method.entmin_weight=0.06"],
             "lga_vat": ["--method", "lga", "method.vat_weight=0.3", "method.view=strong"]}
    for name, argv in cases.items():
        run = tmp_path / name
        assert main(["train", "--out", str(run), *argv, *tiny]) == 0
        printed = capsys.readouterr().out
        result = json.loads((run / "result.json").read_text())
        record = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
        assert result["method"] == argv[1] and 0.0 <= result["test_acc"] <= 1.0
        if argv[1] == "lga":
            assert {"loss_u", "d_before", "d_after", "imputed_acc", "imputed_rows_pl_acc", "seen_unlabeled"} <= set(record)
            assert "imputed_acc" in printed and "d_after" in printed
            assert (record.get("loss_vat", 0.0) > 0) == (name == "lga_vat")
        else:
            assert record["loss_vat"] > 0 and "loss_vat" in printed
