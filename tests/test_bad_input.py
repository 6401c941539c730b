"""Every mistake a user can make with `camssl train`: one line naming the problem and the fix,
exit status 2, no traceback (unless --debug), no new run directory, existing runs intact.

Cases already covered elsewhere (not repeated here): unknown config key, unknown method,
missing data path, --labeled too large, unknown target layer of resnet18, unknown preset,
an --out holding a run (tests/test_cli.py); the data layer's own messages
(tests/test_data.py, tests/test_splits.py); a global batch that W processes cannot share
(tests/test_distributed.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from camssl.cli import main
from camssl.config import load_config
from camssl.distributed import Dist
from camssl.errors import ConfigError, DataError, UserError
from camssl.methods import METHODS, Batch, StepContext, StepOutput
from camssl.methods.supervised import Supervised
from camssl.models import build_model
from camssl.train.ddp import check_sync_bn, check_world
from conftest import TINY, fails, image_folder, snapshot

SUPERVISED = ["--method", "supervised", *TINY]


@pytest.fixture
def finished_run(supervised_run) -> Path:
    """The session's finished tiny supervised run (trained with SUPERVISED)."""
    return supervised_run


# ---------------------------------------------------------------- data


def test_empty_and_non_image_folders(tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    fails(["train", "--data", str(tmp_path / "empty"), "--out", str(out)], capsys, "no class folders", "root/<class>")
    for name in ("a", "b"):
        (tmp_path / "texts" / name).mkdir(parents=True)
        (tmp_path / "texts" / name / "notes.txt").write_text("not an image")
    fails(["train", "--data", str(tmp_path / "texts"), "--out", str(out)], capsys, "has no images", ".png")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "x.png")
    fails(["train", "--data", str(tmp_path / "flat"), "--out", str(out)], capsys, "no class folders")
    fails(["train", "--data", str(Path(__file__)), "--out", str(out)], capsys, "not a .tar.gz archive")
    assert not out.exists()  # a failed start leaves no half-made run behind


def test_class_folder_without_images(tmp_path, capsys):
    data = image_folder(tmp_path / "fruit")
    (data / "plum").mkdir()
    (data / "plum" / "readme.txt").write_text("no images here")
    fails(["train", "--data", str(data), "--out", str(tmp_path / "out")], capsys, "plum", "has no images")
    assert not (tmp_path / "out").exists()


def test_corrupt_image_is_named_and_skip_bad_counts_it(tmp_path, capsys):
    data = image_folder(tmp_path / "fruit")
    bad = data / "pear" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    args = ["train", "--data", str(data), "--out", str(out), "--method", "supervised", "--width", "0.125",
            "--labeled", "4", "--ratio", "1", "--epochs", "1", "optim.batch_size=4", "eval_batch_size=8", "cam_grid=false", "threads=1"]
    fails(args, capsys, str(bad), "--skip-bad")
    assert not out.exists()
    assert main([*args, "--skip-bad"]) == 0
    stdout = capsys.readouterr().out
    assert "skipped 1 unreadable image(s)" in stdout and "broken.jpg" in stdout
    assert json.loads((out / "result.json").read_text())["skipped_images"] == 1


def test_labeled_or_unlabeled_asking_for_more_than_exists(tmp_path, capsys):
    fails(["train", "--labeled", "200", "--ratio", "50", "--out", str(tmp_path / "r")], capsys,
          "split.ratio=50", "only 1800 remain", "split.ratio <= 9")
    fails(["train", "--labeled", "2400", "--out", str(tmp_path / "r")], capsys, "split.n_labeled")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "override, needles",
    [
        ("optim.lr=-1", ("optim.lr=-1.0", "> 0")),
        ("optim.lr=fast", ("optim.lr='fast'", "expected a number")),
        ("optim.epochs=1.5", ("optim.epochs", "integer")),
        ("sync_bn=maybe", ("sync_bn", "true or false")),
        ("optim.schedule=linear", ("cosine, onecycle, constant",)),
        ("val_tta=3", ("val_tta=3", "[0, 2]")),
        ("method.gradcam.grad_mode=half", ("method.gradcam.grad_mode='half'", "full, detach-weights")),
        ("method.gamma=2", ("config key method.gamma was renamed: write method.gradcam.weight instead",)),
    ],
)
def test_invalid_config_values(override, needles, tmp_path, capsys):
    fails(["train", override, "--out", str(tmp_path / "r")], capsys, *needles)
    assert not (tmp_path / "r").exists()


def test_exponent_values_are_numbers_not_errors(capsys):
    assert main(["config", "optim.lr=1e-3", "optim.weight_decay=5e-4"]) == 0  # YAML 1.1 reads these as strings
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 0.001 and cfg["optim"]["weight_decay"] == 0.0005


def test_unknown_key_in_a_config_file(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("base: demo\noptim:\n  lrr: 0.1\n")
    fails(["train", "--config", str(path), "--out", str(tmp_path / "r")], capsys, "unknown config key optim.lrr",
          "valid keys in optim")


def test_unknown_model_and_layer_list_the_valid_ones(tmp_path, capsys):
    fails(["train", "--model", "resnet9", "--out", str(tmp_path / "r")], capsys, "resnet18, resnet34", "wrn28_2")
    fails(["train", "--model", "wrn28_2", "--method", "gradcam", "--layer", "layer4", "--width", "0.125",
           "--out", str(tmp_path / "r")], capsys, "unknown layer 'layer4' for wrn28_2", "layer1, layer2, layer3")
    assert not (tmp_path / "r").exists()


def test_user_errors_are_value_errors_for_library_callers():
    assert issubclass(UserError, ValueError) and issubclass(ConfigError, UserError) and issubclass(DataError, UserError)
    with pytest.raises(ValueError, match="unknown model 'resnet9'"):
        build_model("resnet9", 10)


def test_sync_bn_cases_are_refused_before_training():
    cfg = load_config("demo", ["sync_bn=true"])
    with pytest.raises(ConfigError, match="needs CUDA"):
        check_world(cfg, Dist(rank=0, world=2), torch.device("cpu"))
    check_world(cfg, Dist(), torch.device("cpu"))  # one process: sync_bn has nothing to do
    with pytest.raises(ConfigError, match="multiple of 4"):
        check_world(load_config("demo", ["optim.batch_size=66"]), Dist(rank=0, world=4), torch.device("cpu"))
    with pytest.raises(ConfigError, match="unlabeled batch"):
        check_world(load_config("demo", ["method.name=pseudo_label", "optim.unlabeled_multiplier=1.1"]),
                    Dist(rank=0, world=4), torch.device("cpu"))
    net = build_model("resnet18", 10, width=0.125)
    full = load_config("demo", ["sync_bn=true", "method.name=gradcam", "method.gradcam.layers=layer3",
                                "method.gradcam.grad_mode=full"])
    with pytest.raises(ConfigError, match="double backward through SyncBatchNorm"):
        check_sync_bn(full, net)
    check_sync_bn(load_config("demo", ["sync_bn=true", "method.name=gradcam", "method.gradcam.layers=layer4"]), net)
    check_sync_bn(load_config("demo", ["sync_bn=true", "method.name=gradcam", "method.gradcam.layers=layer3",
                                       "method.gradcam.grad_mode=detach-weights"]), net)
    # the same L_G on FixMatch needs the same double backward
    fixmatch = load_config("demo", ["sync_bn=true", "method.name=fixmatch", "method.gradcam.weight=1",
                                    "method.gradcam.grad_mode=full"])
    with pytest.raises(ConfigError, match="double backward through SyncBatchNorm"):
        check_sync_bn(fixmatch, net)
    check_sync_bn(load_config("demo", ["sync_bn=true", "method.name=fixmatch", "method.gradcam.grad_mode=full"]),
                  net)  # L_G off (fixmatch's default): nothing to refuse


# ---------------------------------------------------------------- run directories and checkpoints


def test_output_dirs_in_use_are_refused(finished_run, tmp_path, capsys):
    before = snapshot(finished_run)
    fails(["train", "--out", str(finished_run), *SUPERVISED], capsys, "already holds a run", "--resume", "--overwrite")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    fails(["train", "--out", str(other), *SUPERVISED], capsys, "holds no camssl run", "--overwrite")
    (tmp_path / "file").write_text("x")
    fails(["train", "--out", str(tmp_path / "file"), *SUPERVISED], capsys, "is a file")
    fails(["train", "--resume", str(tmp_path / "nothing")], capsys, "holds no run")
    fails(["train", "--resume", str(finished_run), "--epochs", "3"], capsys, "--resume continues a run")
    assert snapshot(finished_run) == before
    assert (other / "todo.txt").read_text() == "mine"


def unfinished_copy(run: Path, dest: Path, **config_changes) -> Path:
    shutil.copytree(run, dest)
    (dest / "result.json").unlink()
    cfg = yaml.safe_load((dest / "config.yaml").read_text())
    for key, value in config_changes.items():
        section, field = key.split("__")
        cfg[section][field] = value
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def test_checkpoint_of_another_model_or_config_is_refused(finished_run, tmp_path, capsys):
    wider = unfinished_copy(finished_run, tmp_path / "wider", model__width=0.25)
    before = snapshot(wider)
    fails(["train", "--resume", str(wider)], capsys, "different config", "model.width: 0.125 in the checkpoint",
          "0.25 in config.yaml", "start a new run with --out")
    assert snapshot(wider) == before

    other_model = unfinished_copy(finished_run, tmp_path / "wrn", model__name="wrn28_2")
    fails(["train", "--resume", str(other_model)], capsys, "is for resnet18", "builds wrn28_2")

    # a checkpoint without the saved config (older format): the weights themselves do not fit
    state = torch.load(wider / "last.pt", weights_only=True)
    del state["config"]
    torch.save(state, wider / "last.pt")
    fails(["train", "--resume", str(wider)], capsys, "does not fit this run", "size mismatch")

    other_seed = unfinished_copy(finished_run, tmp_path / "seed", optim__lr=0.5)
    fails(["train", "--resume", str(other_seed)], capsys, "optim.lr: 0.1 in the checkpoint")


def test_corrupt_checkpoint_is_named(finished_run, tmp_path, capsys):
    run = unfinished_copy(finished_run, tmp_path / "cut")
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    fails(["train", "--resume", str(run)], capsys, "cannot read checkpoint", "corrupt")
    assert (run / "last.pt").read_bytes() == data[: len(data) // 2]  # left as found


# ---------------------------------------------------------------- divergence


class ExplodesInEpoch2(Supervised):
    """The supervised step, whose loss turns NaN from the second epoch on."""

    name = "test_explodes"

    def step(self, ctx: StepContext, batch: Batch) -> StepOutput:
        out = super().step(ctx, batch)
        if ctx.epoch >= 1:
            nan = torch.tensor(float("nan"))
            return StepOutput(out.loss * nan, {**out.metrics, "loss_s": out.metrics["loss_s"] * nan})
        return out


def test_nan_loss_stops_names_step_and_term_and_keeps_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(METHODS, "test_explodes", ExplodesInEpoch2)
    run = tmp_path / "run"
    err = fails(["train", "--out", str(run), *SUPERVISED, "--epochs", "3", "--method", "test_explodes"], capsys,
                "the loss became nan at epoch 2, step 1", "term: loss_s", "lower optim.lr",
                "last good checkpoint (epoch 1)")
    assert str(run) in err
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["train_state"]["epoch"] == 1 and state["train_state"]["step"] == 2
    assert all(bool(torch.isfinite(w).all()) for w in state["model"].values())
    net = build_model("resnet18", 10, width=0.125)
    net.load_state_dict(state["model"])
    assert not (run / "result.json").exists()


def test_exploding_learning_rate_from_the_command_line(tmp_path):
    """As a new user would meet it: a real divergence, one line on stderr, exit 2; --debug raises instead."""
    from camssl.train import TrainingError

    args = ["train", "--out", str(tmp_path / "r"), "--method", "supervised", "--width", "0.125", "--labeled", "200",
            "--epochs", "2", "optim.batch_size=32", "optim.lr=1e6", "cam_grid=false", "threads=1"]
    proc = subprocess.run([sys.executable, "-m", "camssl", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: the loss became nan at epoch 1, step ")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "term: loss_s" in proc.stderr
    args[2] = str(tmp_path / "r2")
    with pytest.raises(TrainingError, match="the loss became nan at epoch 1"):  # the traceback Python prints
        main(["--debug", *args])
