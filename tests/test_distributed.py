"""Multi-process training: 2 CPU processes with gloo, launched by torchrun as a user would.

What is checked, and why the tolerances are what they are:

- DDP's gradients for every method's step (Grad-CAM in both gradient modes included, i.e.
  with the double backward) equal the average of the ranks' own gradients, to float
  rounding, over two consecutive steps; and with BatchNorm in eval mode (samples
  independent) W processes reproduce ONE process's gradient of the whole global batch.
  This is the exact statement of "same global batch" (tests/ddp_grad_check.py).
- A real `camssl train` under torchrun finishes, only rank 0 prints and writes (one set of
  files, one TensorBoard event file with the scalars and the CAM images), the ranks took
  disjoint shares of every global batch, and together exactly the batches a one-process
  run takes (recorded from ``Batch.idx_l`` by the test method ``index_log``, which is
  ``supervised`` plus that record in its checkpointed state; tests/camssl_test_methods.py).
- Both ranks SIGKILLed after the first checkpoint: `torchrun ... --resume` reproduces the
  uninterrupted 2-process run to 1e-6 (every rank gets its own RNG state back, the EMA and a
  method's per-sample table): tests/test_lga_runs.py.
- Its numbers are close to a one-process run with the same global batch, but not equal:
  in train mode BatchNorm normalises each rank's 16 images with their own statistics
  instead of all 32 (measured: the first-step loss moves by ~0.02, and the tiny, chaotic
  runs drift apart from there). So the first epoch's mean training loss must agree within
  0.05 (measured differences 0.000-0.024 over seeds 0-2), and validation / test accuracy
  within 6 points on 500 images (measured differences 0.6-1.8 points; a broken shard,
  reduction or gradient sync gives chance-level or wildly different numbers).
"""

from __future__ import annotations

import json
import subprocess

import pytest

import torch

from camssl.config import load_config
from camssl.train import train
from conftest import (ONE_THREAD_PLUGINS, TESTS, TINY_DDP, process_settings_kept, records,
                      test_methods_registered, torchrun, torchrun_cmd, torchruns)


def test_ddp_gradients_are_those_of_data_parallel_sgd(tmp_path):
    out = tmp_path / "grads.json"
    proc = torchrun(str(TESTS / "ddp_grad_check.py"), str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for case in ("supervised", "pseudo_label", "gradcam_full_layer3", "gradcam_detach_layer3",
                 "gradcam_full_layer4_closed_form", "fixmatch_gradcam_full_layer3"):
        assert report[case] < 1e-5, (case, report[case])  # relative to the largest gradient entry
    assert report["global_batch_eval_bn"] < 1e-4, report


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same supervised run (unaugmented labeled view) with 2 processes and with 1."""
    root = tmp_path_factory.mktemp("ddp")
    args = [*TINY_DDP, "method.name=index_log", "labeled_view=original"]
    ddp = subprocess.Popen(torchrun_cmd(2, "-m", "camssl", "train", "--out", str(root / "ddp"), *args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD_PLUGINS)
    try:  # the one-process run trains here meanwhile
        with test_methods_registered(), process_settings_kept():
            train(load_config("demo", [*args, "cam_grid=false"]), root / "single", log=lambda s: None)
        out, err = ddp.communicate(timeout=300)
    finally:
        if ddp.poll() is None:
            ddp.kill()
    assert ddp.returncode == 0, err[-3000:]
    return root / "ddp", root / "single", subprocess.CompletedProcess(ddp.args, 0, out, err)


def test_two_processes_finish_and_only_rank_0_writes(runs):
    ddp, _, proc = runs
    result = json.loads((ddp / "result.json").read_text())
    assert result["world_size"] == 2 and result["epochs"] == 2 and result["steps"] == 12
    assert result["n_test"] == 500 and result["n_val"] == 500  # evaluation covers the whole sets
    assert proc.stdout.count("epoch   1/2") == 1 and proc.stdout.count("test accuracy") == 1
    assert "x 2 processes (gloo)" in proc.stdout
    assert sorted(p.name for p in ddp.iterdir()) == [
        "best.pt", "config.yaml", "figures", "last.pt", "metrics.jsonl", "result.json",
        "split.json", "tb",
    ]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((ddp / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(ddp / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert {"train/loss", "val/val_acc", "test/test_acc"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("val/val_acc")] == [1, 2]
    assert acc.Tags()["images"] == ["cam/layer3"] and len(acc.Images("cam/layer3")) == 2  # epoch 0 and final
    assert {p.name for p in (ddp / "figures").iterdir()} == {"cam_epoch_0.png", "cam_final.png"}


def test_ranks_take_disjoint_shares_of_the_same_global_batches(runs):
    ddp, single, _ = runs
    rec = torch.load(ddp / "last.pt", weights_only=True)["method"]["log"]
    one = torch.load(single / "last.pt", weights_only=True)["method"]["log"]
    assert rec["world"] == 2 and one["world"] == 1
    r0, r1 = rec["labeled"]
    (whole,) = one["labeled"]
    assert len(r0) == len(r1) == len(whole) == 6  # steps in epoch 1
    for step, (a, b, both) in enumerate(zip(r0, r1, whole)):
        assert len(a) == len(b) == 16, step  # each rank: half of the global batch of 32
        assert not set(a) & set(b), step
        assert sorted(a + b) == sorted(both), step  # together: the one-process run's batch
    seen0, seen1 = {i for s in r0 for i in s}, {i for s in r1 for i in s}
    assert not seen0 & seen1 and len(seen0) + len(seen1) == 192  # disjoint over the whole epoch
    split = json.loads((ddp / "split.json").read_text())
    assert seen0 | seen1 <= set(split["labeled"])


def test_result_is_close_to_one_process_with_the_same_global_batch(runs):
    ddp, single, _ = runs
    a, b = (json.loads((d / "result.json").read_text()) for d in (ddp, single))
    ha, hb = records(ddp), records(single)
    assert abs(ha[0]["loss"] - hb[0]["loss"]) < 0.05, (ha[0]["loss"], hb[0]["loss"])
    for key in ("val_acc", "test_acc"):
        assert abs(a[key] - b[key]) <= 0.06, (key, a[key], b[key])
    assert json.loads((ddp / "split.json").read_text())["labeled"] == json.loads(
        (single / "split.json").read_text())["labeled"]


def test_gradcam_full_mode_trains_in_two_processes(runs, tmp_path):
    """Grad-CAM (full mode, autograd layer: double backward) end to end; --resume of a finished 2-process run
    (the shared one, at the same time) keeps it."""
    run = tmp_path / "gc"
    args = ["--width", "0.125", "--labeled", "64", "--ratio", "1", "--epochs", "1", "--method", "gradcam",
            "--layer", "layer3", "optim.batch_size=32", "method.gradcam.grad_mode=full", "cam_grid=false", "threads=1"]
    finished, _, _ = runs
    before = {p.name: p.stat().st_mtime_ns for p in finished.iterdir()}
    proc, again = torchruns(["-m", "camssl", "train", "--out", str(run), *args],
                            ["-m", "camssl", "train", "--resume", str(finished)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["loss_g"] > 0 and 0 <= record["val_acc"] <= 1
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in finished.iterdir()} == before


def rank0_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line (printed by rank 0 only; torchrun then adds its own failure summary)."""
    assert proc.returncode != 0
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr.split("error:")[0]  # no worker traceback before it
    return errors[0]


def test_a_global_batch_that_cannot_be_shared_is_refused_on_one_line(tmp_path):
    proc = torchrun("-m", "camssl", "train", "--out", str(tmp_path / "r"), "--method", "supervised", "--width",
                    "0.125", "--labeled", "200", "--epochs", "1", "optim.batch_size=33", "threads=1", timeout=120)
    err = rank0_error(proc)
    assert "optim.batch_size = 33" in err and "multiple of 2" in err
    assert not (tmp_path / "r").exists()


def test_errors_found_by_rank_0_stop_every_rank(runs, tmp_path):
    """A check only rank 0 makes (the run directory; the data, loaded there first) ends all ranks."""
    ddp, _, _ = runs
    before = {p.name: p.stat().st_mtime_ns for p in ddp.iterdir()}
    busy, nowhere = torchruns(["-m", "camssl", "train", "--out", str(ddp), "threads=1"],
                              ["-m", "camssl", "train", "--data", str(tmp_path / "nowhere"), "--out",
                               str(tmp_path / "r"), "threads=1"], timeout=120)
    assert "already holds a run" in rank0_error(busy)
    assert {p.name: p.stat().st_mtime_ns for p in ddp.iterdir()} == before
    assert "does not exist" in rank0_error(nowhere) and not (tmp_path / "r").exists()
