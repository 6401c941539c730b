"""A run killed with SIGKILL in the middle of an epoch resumes exactly (CPU, deterministic=true).

The run is a real `python -m camssl train` subprocess. It is killed once its first
checkpoint (after epoch 1) exists and while epoch 2 runs; `camssl train --resume DIR`
then finishes it, and every number of result.json and metrics.jsonl must equal those of
an uninterrupted run (trained beside it) to 1e-6 (they are in fact bit-identical: the
checkpoint holds the weights, EMA, optimiser, scaler, step, every RNG state and the batch
streams' positions). A temporary file of an interrupted checkpoint write is planted before
resuming: it must be ignored and cleaned up, never taken for the checkpoint.

The in-process variant (a stop between writing last.pt and best.pt) is
tests/test_trainer.py::test_killed_run_resumes_from_its_checkpoint_and_matches.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
import torch

from conftest import Background, finish, launch, records, wait_for_file

# 10 steps per epoch: the kill, 0.1 s after the epoch-1 checkpoint, falls in epoch 2
ARGS = ["--width", "0.125", "--labeled", "320", "--ratio", "1", "--epochs", "3", "--method", "pseudo_label",
        "optim.batch_size=32", "optim.ema_decay=0.9", "split.val_fraction=0.04", "deterministic=true", "threads=1",
        "cam_grid=false"]
COMPARED = ("test_acc", "test_acc_online", "val_acc", "best_val_acc", "best_val_epoch", "test_acc_at_best_val", "test_loss",
            "epochs", "steps", "n_labeled", "n_unlabeled")


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    reference = Background(1, "train", "--out", str(full), *ARGS)
    try:
        proc = launch(1, "train", "--out", str(killed), *ARGS)
        wait_for_file(killed / "last.pt", proc)
        time.sleep(0.1)  # into epoch 2
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        assert not (killed / "result.json").exists()
        state = torch.load(killed / "last.pt", weights_only=True)
        assert state["train_state"]["epoch"] == 1, "the kill came too late to be mid-epoch 2"
        (killed / ".last.pt.ab12cd34.tmp").write_bytes(b"PK\x03\x04 a checkpoint cut short")

        out = finish(launch(1, "train", "--resume", str(killed)))
        reference.wait()
    finally:
        reference.stop()
    assert "removed 1 unfinished temporary file" in out and "resumed from" in out and "after epoch 1" in out
    assert "epoch   1/3" not in out and "epoch   2/3" in out
    assert not list(killed.glob(".*.tmp"))

    a, b = (json.loads((d / "result.json").read_text()) for d in (full, killed))
    for key in COMPARED:
        assert b[key] == pytest.approx(a[key], abs=1e-6), key
    for cls, acc in a["per_class_test_acc"].items():
        assert b["per_class_test_acc"][cls] == pytest.approx(acc, abs=1e-6), cls
    ra, rb = records(full), records(killed)
    assert [r["epoch"] for r in rb] == [1, 2, 3]
    for x, y in zip(ra, rb):
        for key in ("loss", "loss_s", "loss_p", "pl_acc", "val_acc", "val_loss", "map_agreement", "lr"):
            assert y[key] == pytest.approx(x[key], abs=1e-6), (x["epoch"], key)
    final_a = torch.load(full / "last.pt", weights_only=True)
    final_b = torch.load(killed / "last.pt", weights_only=True)
    for name, w in final_a["model"].items():
        assert torch.equal(w, final_b["model"][name]), name
    for name, w in final_a["ema"].items():
        assert torch.equal(w, final_b["ema"][name]), name
    assert final_b["train_state"]["history"] == rb
