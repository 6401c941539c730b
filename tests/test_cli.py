"""The `camssl` command as a user runs it: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import camssl
from camssl.cli import main
from camssl.config import dump_yaml, load_config
from camssl.models import build_model
from conftest import TINY, one_line_error


def test_train_prints_progress_and_result(gradcam_run, capsys):
    result = json.loads((gradcam_run / "result.json").read_text())
    assert result["method"] == "gradcam" and 0.0 <= result["test_acc"] <= 1.0
    for name in ("cam_epoch_0.png", "cam_final.png"):
        with Image.open(gradcam_run / "figures" / name) as im:
            assert im.size[0] > 300 and im.size[1] > 300
    records = [json.loads(l) for l in (gradcam_run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_s", "loss_p", "loss_g", "mask_rate", "pl_acc", "map_agreement", "blank_maps"} <= set(records[0])
    assert 0.0 <= records[0]["blank_maps"] <= 1.0
    assert -1.0 <= records[0]["map_agreement"] <= 1.0


def test_subprocesses_import_the_camssl_under_test(tmp_path):
    """python -m camssl, torchrun workers and sweep jobs run this checkout's code, from any directory."""
    proc = subprocess.run([sys.executable, "-c", "import camssl; print(camssl.__file__)"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve() == Path(camssl.__file__).resolve()


def test_console_script_end_to_end(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "camssl", "train", "--out", str(run), *TINY],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout and f"run directory: {run}" in proc.stdout
    assert "epoch   1/1" in proc.stdout


def test_cam_command_on_test_split_and_on_a_folder(gradcam_run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["cam", str(gradcam_run), "--n", "3", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[1] > 200
    folder = tmp_path / "imgs" / "cat"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (40, 50), (200, 30 * i, 10)).save(folder / f"{i}.png")
    out2 = tmp_path / "grid2.png"
    assert main(["cam", str(gradcam_run), "--images", str(tmp_path / "imgs"), "--layer", "layer2",
                 "--checkpoint", "last", "--out", str(out2)]) == 0
    assert out2.exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "optim.lrr=1"], "unknown config key optim.lrr"),
        (["train", "--method", "nope"], "supervised"),
        (["train", "--data", "/no/such/dir"], "/no/such/dir"),
        (["train", "--labeled", "5000"], "split.n_labeled"),
        (["train", "--method", "gradcam", "--layer", "layer9", *TINY], "layer1, layer2, layer3, layer4"),
        (["train", "--config", "nosuch"], "demo"),
        (["cam", "/no/such/run"], "'/no/such/run' does not exist; pass a camssl run directory"),
    ],
)
def test_bad_input_is_one_line_with_exit_2(argv, needle, capsys, tmp_path):
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert needle in one_line_error(capsys)


def test_cam_command_names_an_unknown_layer(tmp_path, capsys):
    # The layer is checked before any data is read: config.yaml and best.pt are all it needs.
    cfg = load_config("demo", ["model.width=0.125"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(cfg))
    model = build_model(cfg.model.name, 3, width=cfg.model.width, resize_to=cfg.model.resize_to)
    torch.save({"model": model.state_dict(), "classes": ["a", "b", "c"]}, run / "best.pt")
    assert main(["cam", str(run), "--layer", "layer9"]) == 2
    err = one_line_error(capsys)
    assert f"unknown layer 'layer9' for {cfg.model.name}; valid stages: {', '.join(model.stages)} " in err
    assert f"(or any module path such as {model.example_tap})" in err


def test_existing_run_is_refused_and_kept(gradcam_run, capsys):
    before = (gradcam_run / "result.json").read_bytes()
    assert main(["train", "--out", str(gradcam_run), *TINY]) == 2
    assert "--resume" in one_line_error(capsys)
    assert (gradcam_run / "result.json").read_bytes() == before
    assert main(["train", "--resume", str(gradcam_run)]) == 0  # already finished: says so, keeps it
    assert (gradcam_run / "result.json").read_bytes() == before


def test_config_command_prints_resolved_yaml(capsys):
    assert main(["config", "--config", "cpu", "--ratio", "2"]) == 0
    out = capsys.readouterr().out
    assert "n_labeled: 5000" in out and "ratio: 2.0" in out
