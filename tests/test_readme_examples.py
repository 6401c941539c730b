"""The README's Python examples for a method of your own and for driving the trainer run as written."""

from __future__ import annotations

import re
from pathlib import Path

from camssl.config import load_config
from camssl.methods import METHODS
from camssl.train import train

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def block_after(marker: str) -> str:
    return re.search(r"```python\n(.*?)```", README.split(marker, 1)[1], re.S).group(1)


def test_your_own_method_example_registers_and_trains(tmp_path):
    code = block_after("**Your own method.**")
    if "mine" not in METHODS:
        exec(compile(code, "README.md", "exec"), {})
    cfg = load_config("demo", ["method.name=mine", "method.beta=0.25", "model.width=0.125", "split.n_labeled=100",
                               "optim.epochs=1", "optim.batch_size=50", "cam_grid=false", "threads=1"])
    assert cfg.method.beta == 0.25
    result = train(cfg, tmp_path / "mine", log=lambda s: None)
    assert result["method"] == "mine" and result["steps"] == 2


def test_drive_the_trainer_example(tmp_path, monkeypatch):
    code = block_after("**Drive the trainer from Python**")
    tiny = '["optim.epochs=1", "optim.steps_per_epoch=2", "model.width=0.125", "cam_grid=false", "threads=1"]'
    code = code.replace('["optim.epochs=5", "optim.steps_per_epoch=20"]', tiny)
    assert tiny in code
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["result"]["steps"] == 2 and (tmp_path / "runs/cycle0/result.json").exists()
    assert ns["model"] is ns["trainer"].net
