"""A run killed with SIGKILL in the middle of an epoch resumes exactly (CPU, deterministic=true).

The run is a real `python -m camssl train` subprocess. It is killed once its first
checkpoint (after epoch 1) exists and while epoch 2 runs; `camssl train --resume DIR`
then finishes it, and every number of result.json and metrics.jsonl must equal those of
an uninterrupted run to 1e-6 (they are in fact bit-identical: the checkpoint holds the
weights, EMA, optimiser, scaler, step, every RNG state and the batch streams' positions).
A temporary file of an interrupted checkpoint write is planted before resuming: it must be
ignored and cleaned up, never taken for the checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ARGS = ["--width", "0.125", "--labeled", "640", "--ratio", "1", "--epochs", "3", "--method", "pseudo_label",
        "optim.batch_size=32", "optim.ema_decay=0.9", "deterministic=true", "threads=1", "cam_grid=false"]
COMPARED = ("test_acc", "val_acc", "best_val_acc", "best_val_epoch", "test_acc_at_best_val", "test_loss",
            "epochs", "steps", "n_labeled", "n_unlabeled")


def camssl(*args: str, **kw) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "camssl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def finish(proc: subprocess.Popen[str], timeout: int = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def records(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    finish(camssl("train", "--out", str(full), *ARGS))

    proc = camssl("train", "--out", str(killed), *ARGS)
    deadline = time.time() + 300
    while not (killed / "last.pt").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "no checkpoint after 5 minutes"
        time.sleep(0.01)
    time.sleep(0.1)  # well into epoch 2 (20 steps per epoch)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "result.json").exists()
    state = torch.load(killed / "last.pt", weights_only=True)
    assert state["epoch"] == 1, "the kill came too late to be mid-epoch 2"
    (killed / ".last.pt.ab12cd34.tmp").write_bytes(b"PK\x03\x04 a checkpoint cut short")

    out = finish(camssl("train", "--resume", str(killed)))
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


def test_interrupted_best_write_is_repaired_on_resume(tmp_path):
    """A kill between writing last.pt and best.pt: best.pt must not keep an older epoch's weights."""
    from camssl.config import load_config
    from camssl.train import train

    cfg = load_config("demo", ["method.name=supervised", "model.width=0.125", "split.n_labeled=100", "split.ratio=1",
                               "optim.epochs=2", "optim.batch_size=50", "cam_grid=false", "threads=1"])
    run = tmp_path / "run"

    class Stop(Exception):
        pass

    def stop_after_epoch_1(line: str) -> None:
        if line.startswith("epoch   1/"):
            raise Stop

    with pytest.raises(Stop):
        train(cfg, run, log=stop_after_epoch_1)
    (run / "best.pt").unlink()  # as if the kill fell right after last.pt was renamed into place
    lines: list[str] = []
    train(None, run, resume=True, log=lines.append)
    assert any("rewrote" in l and "best.pt" in l for l in lines)
    result = json.loads((run / "result.json").read_text())
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == result["best_val_epoch"]
