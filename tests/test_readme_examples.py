"""The README runs as written: every code block that claims to run is run here (at tiny sizes
where the README shows a long run), its methods table is the registry's, and its links lead to
files. Also the Python example of docs/usage.md ("Drive the trainer from Python").

The commands of the README's ``bash`` blocks: ``camssl train`` (the set-up command), the
own-images command and the own-method command really train (tiny, each in its own process,
with this checkout's ``src`` first on the path); every other ``camssl train`` line resolves its
config (``camssl config`` with the same arguments), a ``camssl sweep SPEC`` line plans its grid
(``--dry-run``), and the remaining commands parse. The set-up's second command is what
``.ci/run`` runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import pkgutil
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import camssl.methods
from camssl.cli import build_parser, main
from camssl.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
USAGE = (ROOT / "docs" / "usage.md").read_text()
# what the tests add to a README command that trains: one short epoch of a tiny model
TINY = ["optim.epochs=1", "optim.steps_per_epoch=2", "optim.batch_size=16", "model.width=0.125", "cam_grid=false",
        "threads=1", "device=cpu"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
ANNOUNCED: set[str] = set()  # pages linked before they exist (none now)


def blocks(text: str, lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(text) if kind == lang]


def block_after(text: str, marker: str, lang: str) -> str:
    assert marker in text, f"no {marker!r}"
    return blocks(text.split(marker, 1)[1], lang)[0]


def commands(text: str) -> list[list[str]]:
    """The ``camssl ...`` commands of the ``bash`` blocks (``&&``-chains split, comments dropped)."""
    out = []
    for body in blocks(text, "bash"):
        for line in body.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                env = [w for w in words if re.match(r"^[A-Z_]+=", w)]
                words = words[len(env):] if words[: len(env)] == env else words
                if words and words[0] == "camssl":
                    out.append(env + words[1:])
    return out


def run_camssl(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> str:
    """``python -m camssl ARGS`` in its own process with this checkout's code; its output."""
    paths = [*(env or {}).pop("PYTHONPATH", "").split(os.pathsep), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    full = {**os.environ, "CAMSSL_YARDSTICK": "0", **(env or {}), "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    proc = subprocess.run([sys.executable, "-m", "camssl", *args], cwd=tmp_path, env=full, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"camssl {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def in_process(args: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0, args
    return out.getvalue()


# ---------------------------------------------------------------- the README as a whole


def test_the_readme_reads_in_one_sitting():
    assert len(README.splitlines()) <= 350


def test_every_python_block_is_run_here():
    assert len(blocks(README, "python")) == 2  # "Your own method" and "Use Grad-CAM consistency in your own loop"
    assert len(blocks(USAGE, "python")) == 1  # "Drive the trainer from Python"


def _links(text: str) -> list[str]:
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"^[a-z]+:", t)]


def _anchors(text: str) -> set[str]:
    heads = re.findall(r"^#+ (.+)$", FENCE.sub("", text), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", ["README.md", "docs/methods.md", "docs/usage.md", "docs/active-learning.md",
                                  "docs/slurm.md", "docs/gpu-notes.md", "docs/measured.md"])
def test_links_lead_to_files_and_headings(page):
    path = ROOT / page
    for link in _links(path.read_text()):
        file, _, anchor = link.partition("#")
        target = (path.parent / file).resolve() if file else path
        if str(target.relative_to(ROOT)) in ANNOUNCED:
            continue
        assert target.exists(), f"{page}: the link {link} leads nowhere"
        if anchor:
            assert anchor in _anchors(target.read_text()), f"{page}: {link} names no heading of {target.name}"


# ---------------------------------------------------------------- the methods table


def _readme_methods():
    spec = importlib.util.spec_from_file_location("readme_methods", ROOT / "scripts" / "readme_methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_methods_table_is_generated_from_the_registry():
    """The README's table is ``scripts/readme_methods.py``'s (rerun it with --write after changing a method)."""
    script = _readme_methods()
    assert script.readme_table(README) == script.table(), "run: python scripts/readme_methods.py --write"


def test_the_methods_table_lists_exactly_the_builtin_methods_with_their_summaries():
    rows = [line for line in _readme_methods().readme_table(README).splitlines()[2:]]
    listed = {re.match(r"^\| `(\w+)` \| (.*?) \|", row).groups() for row in rows}
    builtin = set()
    for info in pkgutil.iter_modules(camssl.methods.__path__):
        module = sys.modules[f"camssl.methods.{info.name}"]
        builtin |= {cls.name for cls in vars(module).values()
                    if isinstance(cls, type) and cls.__module__ == module.__name__ and METHODS.get(getattr(cls, "name", None)) is cls}
    assert {name for name, _ in listed} == builtin
    assert all(METHODS[name].summary and summary == METHODS[name].summary for name, summary in listed)


# ---------------------------------------------------------------- the commands


def test_the_setup_commands_are_those_ci_runs():
    setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    first, second = (b.strip() for b in blocks(setup, "bash"))
    assert first == "python -m pip install -c constraints.txt -e . && camssl train"
    assert second == 'python -m pip install -c constraints.txt -e ".[test]" && python -m pytest -q'
    assert second in (ROOT / ".ci" / "run").read_text().replace("pip install -q ", "pip install ")  # CI's pip is quiet


def test_the_main_job_trains_and_prints_what_the_readme_shows(tmp_path):
    """``camssl train`` (tiny): the lines of the README's sample output, the metrics its epoch line names."""
    out = run_camssl(["train", *TINY, "--out", str(tmp_path / "run")], tmp_path)
    sample = block_after(README, "## What `camssl train` prints", "").splitlines()
    for head in ("data: mini-cifar10", "split (seed 0):", "model: resnet18", "machine:", "epoch   1/", "test accuracy",
                 "run directory:"):
        assert any(line.startswith(head) for line in sample), head
        assert any(line.startswith(head) for line in out.splitlines()), f"{head!r} not printed:\n{out}"
    shown = set(re.findall(r"(\w+) \d", next(line for line in sample if line.startswith("epoch"))))
    printed = set(re.findall(r"(\w+) \d", next(line for line in out.splitlines() if line.startswith("epoch"))))
    assert shown <= printed, shown - printed
    assert json.loads((tmp_path / "run" / "result.json").read_text())["method"] == "gradcam"


def test_the_own_images_command_trains(tmp_path):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for c, cls in enumerate(("cat", "dog")):
        (tmp_path / "my_data" / cls).mkdir(parents=True)
        for i in range(25):
            pixels = torch.randint(0, 256, (40, 36, 3), generator=gen, dtype=torch.uint8) // (c + 1)
            Image.fromarray(pixels.numpy()).save(tmp_path / "my_data" / cls / f"img{i:03d}.png")
    line = next(c for c in commands(README) if "my_data" in c)
    args = [a if a != "400" else "10" for a in line]  # --labeled 400 of a real folder; 10 of these 50 images
    assert args != line
    run_camssl([*args, *TINY, "--out", str(tmp_path / "run")], tmp_path)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["n_labeled"] == 10 and result["n_unlabeled"] == 20 and result["method"] == "gradcam"


def test_your_own_method_example_registers_and_trains_from_the_command_line(tmp_path):
    code = block_after(README, "## Your own method", "python")
    assert len(code.strip().splitlines()) <= 40 and "def step" not in code
    (tmp_path / "my_methods.py").write_text(code)
    line = next(c for c in commands(README) if c[0].startswith("CAMSSL_METHODS="))
    env = dict(kv.split("=", 1) for kv in line if re.match(r"^[A-Z_]+=", kv))
    assert env == {"CAMSSL_METHODS": "my_methods"}
    args = [a for a in line if a not in (f"{k}={v}" for k, v in env.items())]
    run_camssl([*args, *TINY, "--out", str(tmp_path / "run")], tmp_path, env={**env, "PYTHONPATH": str(tmp_path)})
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    method = result["config"]["method"]
    assert result["method"] == "mine" and result["steps"] == 2
    assert method["pseudo"] == {"weight": 1.0, "threshold": 0.9, "anchor": "original", "target": "hard",
                                "flex": False, "flex_warmup": True}
    assert method["gradcam"]["weight"] == 0.5 and method["gradcam"]["layers"] == ["layer3"]  # the demo preset's layer


def test_every_other_camssl_command_resolves(tmp_path):
    """``camssl train`` lines resolve their config, sweeps plan their grid, the rest parse."""
    ran = set()
    for line in commands(README):
        if line[0].startswith("CAMSSL_METHODS=") or "my_data" in line or line == ["train"]:
            continue  # trained above
        command, args = line[0], line[1:]
        if command == "train":
            drop = {"--out", "--resume"}
            kept = [a for i, a in enumerate(args) if a not in drop and (i == 0 or args[i - 1] not in drop)]
            in_process(["config", *[a for a in kept if a != "--overwrite"]])
        elif command == "sweep" and args[0].endswith(".yaml"):
            args = [a if not a.startswith("data.source=") else "data.source=mini" for a in args]
            args[args.index("--out") + 1] = str(tmp_path / "sweep")
            assert "dry run" in in_process(["sweep", *args, "--dry-run"])
        else:
            build_parser().parse_args([command, *args])
        ran.add(command)
    assert {"train", "sweep", "table"} <= ran


# ---------------------------------------------------------------- the Python examples


def test_the_own_training_loop_example_runs():
    code = block_after(README, "## Use Grad-CAM consistency in your own training loop", "python")
    ns: dict = {}
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), ns)
    assert float(ns["loss_g"].detach()) > 0 and float(ns["loss_p"].detach()) > 0


def test_drive_the_trainer_example(tmp_path, monkeypatch):
    code = block_after(USAGE, "## Drive the trainer from Python", "python")
    tiny = '["optim.epochs=1", "optim.steps_per_epoch=2", "model.width=0.125", "cam_grid=false", "threads=1"]'
    code = code.replace('["optim.epochs=5", "optim.steps_per_epoch=20"]', tiny)
    assert tiny in code
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "docs/usage.md", "exec"), ns)
    assert ns["result"]["steps"] == 2 and (tmp_path / "runs/cycle0/result.json").exists()
    assert ns["model"] is ns["trainer"].net


def test_the_use_your_model_commands_run(tmp_path):
    """predict and export on a trained run at the README's paths; the timm line with the tests' own backbone
    (timm cannot be installed beside this torch) in place of ``timm:create_model``."""
    from PIL import Image

    from camssl.config import load_config
    from camssl.data import load_data

    run = tmp_path / "runs" / "my-run"
    in_process(["train", "--method", "supervised", "amp=false", *TINY, "--out", str(run)])
    photos = tmp_path / "photos"
    photos.mkdir()
    test = load_data(load_config("demo").data).test
    for i in range(6):
        Image.fromarray(test.images[i].permute(1, 2, 0).numpy()).save(photos / f"{i}.png")
    section = README.split("## Use your model", 1)[1].split("\n## ", 1)[0]
    lines = commands(section)
    assert [line[0] for line in lines] == ["predict", "export", "train"]
    swap = {"runs/my-run": str(run), "photos/": str(photos), "predictions.csv": str(tmp_path / "p.csv"),
            "cams/": str(tmp_path / "cams"), "model.onnx": str(tmp_path / "model.onnx"),
            "timm:create_model": "camssl_test_backbones:small", "model.args={model_name: resnet18}": "model.args={width: 4}"}
    for line in lines:
        args = [swap.get(a, a) for a in line]
        if args[0] == "train":
            args += [*TINY, "--method", "gradcam", "--out", str(tmp_path / "own")]
        in_process(args)
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 7 and len(list((tmp_path / "cams").iterdir())) == 6
    assert (tmp_path / "model.onnx").stat().st_size > 0
    assert "- features" in (tmp_path / "own" / "config.yaml").read_text()  # --layer auto, resolved and recorded
