"""The training loop end to end on the embedded mini set (tiny model, few steps)."""

from __future__ import annotations

import json

import pytest
import torch

import shutil

from camssl.config import load_config
from camssl.data import Split
from camssl.errors import UserError
from camssl.train import lr_factor, train
from conftest import CLASSES, TINY, TINY_EPOCHS, records


def tiny(method: str = "supervised", *extra: str):
    """3 epochs of 6 steps (200 labeled + 200 unlabeled images)."""
    return load_config("demo", TINY_EPOCHS + [f"method.name={method}", *extra])


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
    assert saved["n_unlabeled"] == 200  # the split does not depend on the method
    recs = records(run)
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert all("val_acc" in r and "loss_s" in r for r in recs)
    if method == "pseudo_label":
        assert all(0 <= r["pl_acc"] <= 1 and r["mask_rate"] == 1.0 for r in recs)
    assert 1 <= saved["best_val_epoch"] <= 3
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert set(ckpt) == {"format", "model_spec", "classes", "preprocess", "config", "world", "model", "ema",
                         "optimizer", "scaler", "rng_ranks", "streams", "method", "train_state"}
    state = ckpt["train_state"]
    assert state["epoch"] == 3 and state["step"] == 18 and [r["epoch"] for r in state["history"]] == [1, 2, 3]
    assert state["best"] == {"val_acc": saved["best_val_acc"], "epoch": saved["best_val_epoch"]}
    assert ckpt["world"] == 1 and len(ckpt["rng_ranks"]) == 1 and ckpt["classes"] == CLASSES

    # best.pt alone (no config.yaml beside it) is enough to rebuild and use the model
    from camssl.models.saved import load_model

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run / "best.pt", alone / "weights.pt")
    model = load_model(alone / "weights.pt")
    assert model.classes == CLASSES and model.spec == {"name": "resnet18", "num_classes": 10, "width": 0.125,
                                                       "resize_to": None}
    assert model.preprocess["image_size"] == [32, 32] and len(model.preprocess["mean"]) == 3
    trained = torch.load(run / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(v, trained[k]) for k, v in model.model.state_dict().items())
    assert not model.model.training


def test_killed_run_resumes_from_its_checkpoint_and_matches(tmp_path):
    """Stopped after epoch 1, and killed between writing last.pt and best.pt: the resumed run rewrites best.pt
    (which must not keep an older epoch's weights) and ends exactly where an uninterrupted run ends."""
    cfg = tiny("pseudo_label", "deterministic=true")
    full = train(cfg, tmp_path / "full", log=lambda s: None)

    def die_after_epoch_1(line: str) -> None:
        if line.startswith("epoch   1/"):
            raise Stop

    run = tmp_path / "killed"
    with pytest.raises(Stop):
        train(cfg, run, log=die_after_epoch_1)
    assert not (run / "result.json").exists()
    (run / "best.pt").unlink()  # as if the kill fell right after last.pt was renamed into place
    split_before = Split.load(run / "split.json")
    lines: list[str] = []
    resumed = train(None, run, resume=True, log=lines.append)
    assert any("resumed" in l and "after epoch 1" in l for l in lines)
    assert any("rewrote" in l and "best.pt" in l for l in lines)
    assert not any(l.startswith("epoch   1/") for l in lines)
    assert torch.equal(Split.load(run / "split.json").labeled, split_before.labeled)
    assert [r["epoch"] for r in records(run)] == [1, 2, 3]
    for key in ("test_acc", "val_acc", "best_val_acc", "best_val_epoch", "test_acc_at_best_val"):
        assert resumed[key] == pytest.approx(full[key], abs=1e-6), key
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == resumed["best_val_epoch"]


def test_existing_run_is_not_overwritten(tmp_path):
    run = tmp_path / "run"
    cfg = load_config("demo", [*TINY, "method.name=supervised"])
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


# ---------------------------------------------------------------- a trainer an outer loop drives


def test_trainer_is_driven_with_a_given_split_initial_weights_and_a_fixed_budget(tmp_path):
    from camssl.data import load_data, make_split
    from camssl.train import Trainer

    cfg = tiny("supervised", "optim.epochs=1", "optim.steps_per_epoch=4")
    data = load_data(cfg.data, seed=0)
    split = make_split(data.train.labels, 10, cfg.split, data.fingerprint, class_names=data.train.classes)
    grown = Split(labeled=split.labeled[:96], unlabeled=split.unlabeled, val=split.val, config=split.config,
                  fingerprint=split.fingerprint)

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    rng = torch.get_rng_state()
    first = Trainer(cfg, tmp_path / "a", data=data, split=grown, log=lambda s: None)
    # the constructor changes nothing process-wide
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), rng)
    result = first.fit()
    assert result["steps"] == 4 and result["n_labeled"] == 96  # budget fixed, not 96 // 32 = 3 steps
    assert Split.load(tmp_path / "a" / "split.json").labeled.tolist() == grown.labeled.tolist()

    # a second run starts from the first one's fitted weights: its run directory (best.pt,
    # here the only epoch) or a state_dict
    fitted = {k: v.clone() for k, v in first.net.state_dict().items()}
    for init in (tmp_path / "a", fitted):
        second = Trainer(cfg, tmp_path / "b", data=data, split=grown, init=init, log=lambda s: None)
        assert all(torch.equal(v, fitted[k]) for k, v in second.net.state_dict().items())
    fresh = Trainer(cfg, tmp_path / "c", data=data, split=grown, log=lambda s: None)
    assert not all(torch.equal(v, fitted[k]) for k, v in fresh.net.state_dict().items())


def test_a_split_of_other_data_is_refused(tmp_path):
    from camssl.data import load_data, make_split
    from camssl.train import Trainer

    cfg = tiny("supervised")
    data = load_data(cfg.data, seed=0)
    split = make_split(data.train.labels, 10, cfg.split, "another-fingerprint")
    with pytest.raises(UserError, match="belongs to other data"):
        Trainer(cfg, tmp_path / "r", data=data, split=split, log=lambda s: None)


def test_weight_decay_can_spare_batchnorm_and_biases(tmp_path):
    from camssl.train import Trainer

    plain = Trainer(tiny("supervised"), tmp_path / "a", log=lambda s: None)
    assert [g["weight_decay"] for g in plain.optimizer.param_groups] == [5e-4]
    spared = Trainer(tiny("supervised", "optim.no_decay_bn_bias=true"), tmp_path / "b", log=lambda s: None)
    decay, plain_group = spared.optimizer.param_groups
    assert decay["weight_decay"] == 5e-4 and plain_group["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in plain_group["params"])
    bn = {id(p) for m in spared.net.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert bn and bn <= {id(p) for p in plain_group["params"]}
    assert len(decay["params"]) + len(plain_group["params"]) == len(list(spared.net.parameters()))


def test_eval_every_validates_only_every_nth_epoch_and_after_the_last(tmp_path):
    lines: list[str] = []
    result = train(tiny("supervised", "optim.steps_per_epoch=2", "eval_every=2"), tmp_path / "run", log=lines.append)
    # validated at epoch 2, and at epoch 3 as the last
    assert ["val_acc" in r for r in records(tmp_path / "run")] == [False, True, True]
    epochs = [l for l in lines if l.startswith("epoch ")]
    assert "val — (not validated yet: eval_every)" in epochs[0] and "best" not in epochs[0]
    assert "(best " in epochs[1] and result["best_val_epoch"] in (2, 3)
