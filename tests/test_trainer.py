"""The training loop end to end on the embedded mini set (tiny model, few steps)."""

from __future__ import annotations

import json

import pytest
import torch

from camssl.config import load_config
from camssl.data import Split
from camssl.errors import UserError
from camssl.train import lr_factor, train

TINY = [
    "model.width=0.125",
    "split.n_labeled=200",
    "split.ratio=1",
    "optim.batch_size=32",
    "optim.epochs=3",
    "cam_grid=false",
    "threads=1",  # two threads on a busy 2-core machine are several times slower than one
]


def tiny(method: str = "supervised", *extra: str):
    return load_config("demo", TINY + [f"method.name={method}", *extra])


class Stop(Exception):
    pass


@pytest.mark.parametrize("method", ["supervised", "pseudo_label"])
def test_smoke_run_writes_a_self_describing_run_dir(tmp_path, method):
    run = tmp_path / "run"
    result = train(tiny(method), run, log=lambda s: None)
    for name in ("config.yaml", "split.json", "metrics.jsonl", "last.pt", "best.pt", "result.json"):
        assert (run / name).exists(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    saved = json.loads((run / "result.json").read_text())
    assert saved["test_acc"] == result["test_acc"]
    for key in ("test_acc", "val_acc", "best_val_acc", "best_val_epoch", "test_acc_at_best_val",
                "per_class_test_acc", "wall_time_s", "images_per_s", "config"):
        assert key in saved, key
    assert set(saved["per_class_test_acc"]) == {"airplane", "automobile", "bird", "cat", "deer",
                                                 "dog", "frog", "horse", "ship", "truck"}
    assert saved["n_test"] == 500 and saved["n_labeled"] == 200
    assert saved["n_unlabeled"] == (200 if method == "pseudo_label" else 200)
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all("val_acc" in r and "loss_s" in r for r in records)
    if method == "pseudo_label":
        assert all(0 <= r["pl_acc"] <= 1 and r["mask_rate"] == 1.0 for r in records)
    assert 1 <= saved["best_val_epoch"] <= 3
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 3


def test_killed_run_resumes_from_its_checkpoint_and_matches(tmp_path):
    cfg = tiny("pseudo_label", "deterministic=true")
    full = train(cfg, tmp_path / "full", log=lambda s: None)

    def die_after_epoch_2(line: str) -> None:
        if line.startswith("epoch   2/"):
            raise Stop

    run = tmp_path / "killed"
    with pytest.raises(Stop):
        train(cfg, run, log=die_after_epoch_2)
    assert not (run / "result.json").exists()
    split_before = Split.load(run / "split.json")
    lines: list[str] = []
    resumed = train(None, run, resume=True, log=lines.append)
    assert any("resumed" in l and "after epoch 2" in l for l in lines)
    assert not any(l.startswith("epoch   1/") for l in lines)
    assert torch.equal(Split.load(run / "split.json").labeled, split_before.labeled)
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for key in ("test_acc", "val_acc", "best_val_acc", "test_acc_at_best_val"):
        assert resumed[key] == pytest.approx(full[key], abs=1e-6), key


def test_existing_run_is_not_overwritten(tmp_path):
    run = tmp_path / "run"
    cfg = tiny("supervised", "optim.epochs=1")
    train(cfg, run, log=lambda s: None)
    before = (run / "result.json").read_bytes()
    with pytest.raises(UserError, match="already holds a run"):
        train(cfg, run, log=lambda s: None)
    assert (run / "result.json").read_bytes() == before
    train(cfg, run, overwrite=True, log=lambda s: None)


def test_schedule_shapes():
    assert lr_factor(0, 100, "cosine", 0) == 1.0
    assert lr_factor(100, 100, "cosine", 0) == pytest.approx(0.0)
    assert lr_factor(50, 100, "cosine", 0) == pytest.approx(0.5)
    assert lr_factor(4, 100, "cosine", 10) == pytest.approx(0.5)
    assert lr_factor(30, 100, "onecycle", 0) == pytest.approx(1.0)
    assert lr_factor(70, 100, "constant", 0) == 1.0
