"""The method lifecycle: a stateful method (per-sample table written in after_step, merged in
end_epoch, saved in the checkpoint) resumes exactly after SIGKILL, in one process and in two
gloo processes; and the merged table of two processes is the one-process table.

The method is ``seen_table`` of tests/camssl_test_methods.py (loss depends on the table, so
a resume that lost or mangled the state would train differently).
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

from camssl_test_methods import PLUGIN_ENV, table_of

ARGS = ["--width", "0.125", "--labeled", "320", "--ratio", "0.5", "--epochs", "2", "--method", "seen_table",
        "optim.batch_size=32", "deterministic=true", "cam_grid=false", "threads=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", **PLUGIN_ENV}
COMPARED = ("loss", "loss_s", "seen", "table_rows", "table_sum", "val_acc", "val_loss")


def launch(world: int, *args: str) -> subprocess.Popen[str]:
    head = [sys.executable, "-m", "camssl"] if world == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world), "-m", "camssl"]
    return subprocess.Popen([*head, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def finish(proc: subprocess.Popen[str], timeout: int = 400) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def workers_of(pid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(proc.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def killed_mid_epoch_2(world: int, run: Path, args: list[str] = ARGS) -> None:
    """Train with ``args``, SIGKILL every process as soon as the epoch-1 checkpoint exists."""
    proc = launch(world, "train", "--out", str(run), *args)
    deadline = time.time() + 300
    while not (run / "last.pt").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "no checkpoint after 5 minutes"
        time.sleep(0.01)
    for pid in ([proc.pid] if world == 1 else workers_of(proc.pid)):
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and not (run / "result.json").exists()
    assert state["method"]["table"]["stamp"].max() >= 0  # the table is in the checkpoint


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("seen") / "full1"
    finish(launch(1, "train", "--out", str(run), *ARGS))
    return run


@pytest.mark.parametrize("world", [1, 2])
def test_stateful_method_resumes_exactly_after_sigkill(world, one_process, tmp_path):
    if world == 1:
        full = one_process
    else:
        full = tmp_path / "full"
        finish(launch(world, "train", "--out", str(full), *ARGS))
    killed = tmp_path / "killed"
    killed_mid_epoch_2(world, killed)
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

    # every rank wrote its own share; the merge keeps each row's latest write, so the rows
    # written and the step of their last write are those of the one-process run
    single = table_of(one_process / "last.pt")
    assert torch.equal(ta["stamp"], single["stamp"])
    split = json.loads((full / "split.json").read_text())
    written = set(torch.nonzero(ta["stamp"] >= 0).flatten().tolist())
    assert written == set(split["unlabeled"])  # every unlabeled sample was drawn, nothing else
