"""What the tests share: the subprocess environment, tiny run sizes, helpers and session-wide runs.

No test module imports another; whatever two of them need is here. The two other modules of
this folder are not tests: ``camssl_test_methods.py`` is a method plugin loaded through
``CAMSSL_METHODS`` (see :data:`PLUGIN_ENV`) and ``reference_runs.py`` a script.

- **Subprocesses test this checkout.** ``PYTHONPATH`` is made absolute and starts with the
  source tree of the ``camssl`` the tests import (then this folder), so ``python -m camssl``,
  torchrun workers and submitit jobs import the same code, whatever their working directory.
- **Sizes.** :data:`TINY` is the tiny run (width 1/8, 100 labels, 2 steps); the other lists
  are sized for what their tests count (steps, ranks' shares, a kill mid-epoch).
- **Shared runs** (session-scoped fixtures): one finished tiny supervised run and one tiny
  gradcam run, trained once for every test that only reads them.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import camssl

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SCRIPTS = REPO / "scripts"
CAMSSL_SRC = Path(camssl.__file__).resolve().parents[1]  # the tree whose camssl these tests import


def _subprocess_pythonpath() -> str:
    given = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys([str(CAMSSL_SRC), str(TESTS), *given]))


os.environ["PYTHONPATH"] = _subprocess_pythonpath()
# the run header's yardstick (a ResNet-18 step, ~2 s per process) is measured only where a test asks for it
os.environ.setdefault("CAMSSL_YARDSTICK", "0")
# decode-once caches (the embedded mini set's, every data folder's fallback) go to a directory of this session,
# empty at its start as on a fresh machine, never into the user's ~/.cache
_CACHE = tempfile.mkdtemp(prefix="camssl-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["CAMSSL_CACHE"] = _CACHE

# a subprocess that should also know the test methods of tests/camssl_test_methods.py
PLUGIN_ENV = {"CAMSSL_METHODS": "camssl_test_methods", "PYTHONPATH": os.environ["PYTHONPATH"]}
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
ONE_THREAD_PLUGINS = {**ONE_THREAD, **PLUGIN_ENV}

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# ---------------------------------------------------------------- run sizes (config overrides; also CLI arguments)

# In a tiny run, evaluation costs more than training: 100 validation images (split.val_fraction=0.04) where
# nothing depends on more; the test set is the mini set's 500.

# the tiny run: 100 labeled + 100 unlabeled images, 1 epoch of 2 steps at width 1/8, no CAM grid
TINY = ["model.width=0.125", "split.n_labeled=100", "split.ratio=1", "split.val_fraction=0.04", "optim.epochs=1",
        "optim.batch_size=50", "cam_grid=false", "threads=1"]
# several epochs, as a loop test counts them: 200 labeled + 200 unlabeled, 6 steps of 32 per epoch
TINY_EPOCHS = ["model.width=0.125", "split.n_labeled=200", "split.ratio=1", "split.val_fraction=0.04",
               "optim.batch_size=32", "optim.epochs=3", "cam_grid=false", "threads=1"]
# two processes share each global batch of 32 (16 each), 6 steps per epoch, 2 epochs; all 500 validation
# images (two processes' accuracy is compared with one's within 6 points)
TINY_DDP = ["model.width=0.125", "split.n_labeled=200", "split.ratio=1", "optim.epochs=2", "optim.batch_size=32",
            "threads=1"]
# killed with SIGKILL as soon as the epoch-1 checkpoint exists (a stateful method), resumed exactly: 5 steps
# per epoch, 160 labeled + 80 unlabeled images (every unlabeled image is drawn in the first epoch)
KILL = ["model.width=0.125", "split.n_labeled=160", "split.ratio=0.5", "split.val_fraction=0.04", "optim.epochs=2",
        "optim.batch_size=32", "deterministic=true", "cam_grid=false", "threads=1"]
# camssl active: 2 epochs of 3 steps per cycle, validated after the second only
TINY_ACTIVE = ["--data", "mini", "--width", "0.125", "--epochs", "2", "optim.steps_per_epoch=3",
               "optim.batch_size=32", "eval_every=2", "threads=1", "deterministic=true", "cam_grid=false"]


# ---------------------------------------------------------------- the command line in this process


def one_line_error(capsys) -> str:
    """The captured stderr: exactly one line ``error: ...``, no traceback."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def fails(argv: list[str], capsys, *needles: str) -> str:
    """``camssl ARGV`` exits 2 with one error line that contains every needle; the line."""
    from camssl.cli import main

    assert main(argv) == 2
    err = one_line_error(capsys)
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def snapshot(root: Path) -> dict[str, str]:
    """Every file below ``root`` with the hash of its bytes (equal snapshots: nothing changed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def records(run: Path) -> list[dict]:
    """A run's metrics.jsonl."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def result(run: Path) -> dict:
    return json.loads((run / "result.json").read_text())


def image_folder(root: Path, per_class: int = 12) -> Path:
    """A two-class image folder (apple/, pear/) of 32×32 PNGs."""
    from PIL import Image

    for label, name in enumerate(("apple", "pear")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (32, 32), (200 * label, 10 * i, 50)).save(root / name / f"{i:02d}.png")
    return root


@contextlib.contextmanager
def process_settings_kept():
    """Undo what an in-process run sets for the whole process (torch threads, deterministic algorithms)."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@contextlib.contextmanager
def test_methods_registered():
    """The methods of tests/camssl_test_methods.py registered in this process, for the block only
    (the registry outside it is what the package registers, which other tests count)."""
    from camssl.methods import METHODS, import_plugins

    before = dict(METHODS)
    import_plugins(PLUGIN_ENV["CAMSSL_METHODS"])
    plugin = sys.modules[PLUGIN_ENV["CAMSSL_METHODS"]]
    for cls in (plugin.IndexLog, plugin.SeenTable):  # registered on the first import only
        METHODS.setdefault(cls.name, cls)
    try:
        yield
    finally:
        METHODS.clear()
        METHODS.update(before)


test_methods_registered.__test__ = False  # a helper, not a test pytest should collect


# ---------------------------------------------------------------- real processes


def torchrun_cmd(world: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world), *args]


def launch(world: int, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``python -m camssl ARGS`` (one process) or under torchrun (``world`` processes), 1 thread each,
    with the test methods available."""
    head = [sys.executable, "-m", "camssl"] if world == 1 else torchrun_cmd(world, "-m", "camssl")
    return subprocess.Popen([*head, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or ONE_THREAD_PLUGINS)


def finish(proc: subprocess.Popen[str], timeout: int = 400) -> str:
    """Wait for ``proc``; it must exit 0. Its stdout."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


class Background:
    """``camssl ARGS`` in ``world`` processes, started now and waited for when its result is needed
    (a reference run trains beside the run a test kills)."""

    def __init__(self, world: int, *args: str) -> None:
        self.proc = launch(world, *args)
        self.stdout: str | None = None

    def wait(self) -> str:
        """Its stdout, once it has exited 0."""
        if self.stdout is None:
            self.stdout = finish(self.proc)
        return self.stdout

    def stop(self) -> None:
        """End it (and torchrun's workers) if it still runs: a failed test leaves nothing behind."""
        if self.proc.poll() is None:
            for pid in child_pids(self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            self.proc.kill()
            self.proc.communicate()


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node 2 ARGS`` to its end."""
    return subprocess.run(torchrun_cmd(2, *args), capture_output=True, text=True, timeout=timeout,
                          env=ONE_THREAD_PLUGINS)


def torchruns(*arglists: list[str], timeout: int = 300) -> list[subprocess.CompletedProcess[str]]:
    """Several independent ``torchrun --nproc-per-node 2 ARGS`` at once, each to its end."""
    procs = [subprocess.Popen(torchrun_cmd(2, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=ONE_THREAD_PLUGINS) for args in arglists]
    done = []
    for args, proc in zip(arglists, procs):
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(torchrun_cmd(2, *args), proc.returncode, out, err))
    return done


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc): torchrun's workers."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(proc.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Poll until ``path`` exists while ``proc`` runs."""
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, (proc.stderr.read()[-3000:] if proc.stderr else f"exit {proc.returncode}")
        assert time.time() < deadline, f"no {path.name} after {timeout:.0f} s"
        time.sleep(0.01)


def killed_mid_epoch_2(world: int, run: Path, args: list[str]) -> dict:
    """Train ``camssl train ARGS`` in ``world`` processes and SIGKILL every one of them as soon as the
    epoch-1 checkpoint exists; the checkpoint."""
    import signal

    proc = launch(world, "train", "--out", str(run), *args)
    wait_for_file(run / "last.pt", proc)
    for pid in ([proc.pid] if world == 1 else child_pids(proc.pid)):
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["train_state"]["epoch"] == 1 and not (run / "result.json").exists()
    return state


def table_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The per-sample table a stateful method (seen_table, lga) keeps in its checkpoint."""
    return torch.load(checkpoint, weights_only=True)["method"]["table"]


def same_weights(a: Path, b: Path, key: str = "model") -> bool:
    wa, wb = (torch.load(p, weights_only=True)[key] for p in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(w, wb[k]) for k, w in wa.items())


# ---------------------------------------------------------------- one method step on a tiny model


def tiny_ctx(seed: int = 0, width: float = 0.125, epoch: float = 0.5):
    """(a fresh ResNet-18 seeded with ``seed``, a StepContext for it)."""
    from camssl.augment import AugmentConfig, Augmenter
    from camssl.methods import StepContext
    from camssl.models import build_model

    torch.manual_seed(seed)
    model = build_model("resnet18", 10, width=width)
    return model, StepContext(model=model, augmenter=Augmenter(AugmentConfig()),
                              generator=torch.Generator().manual_seed(seed), epoch=epoch)


def tiny_batch(seed: int = 0):
    """4 labeled and 8 unlabeled random 32×32 images (with their labels, for diagnostics)."""
    from camssl.methods import Batch

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (12, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (12,), generator=g)
    return Batch(x[:4], y[:4], x[4:], y[4:])


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}


# ---------------------------------------------------------------- sweeps

TINY_SPEC = """\
base: demo
model: {width: 0.125}
split: {n_labeled: 100}
optim: {epochs: 2, batch_size: 50}
cam_grid: false
threads: 1
sweep:
  seeds: 2
  ratios: [1.0]
  settings:
    gradcam-layer3: {method.name: gradcam, method.gradcam.layers: [layer3], role: method}
    pseudo_label: {method.name: pseudo_label, role: ablation}
  baseline:
    supervised: {method.name: supervised, split.ratio: 0}
"""

TABLE_SPEC = """\
base: demo
sweep:
  seeds: [0, 1, 2]
  ratios: [0.5, 1.0]
  settings:
    gradcam-layer1: {method.name: gradcam, method.gradcam.layers: [layer1], role: method}
    gradcam-layer3: {method.name: gradcam, method.gradcam.layers: [layer3], role: method}
    pseudo_label: {method.name: pseudo_label, role: ablation}
  baseline:
    supervised: {method.name: supervised, split.ratio: 0}
"""

# (setting, ratio) -> per-seed final validation accuracy in %; test = val - 1; best-val = val + 0.5
TABLE_VAL = {
    ("gradcam-layer3", 0.5): [70.0, 72.0, 74.0],
    ("gradcam-layer1", 0.5): [60.0, 61.0, 65.0],
    ("pseudo_label", 0.5): [69.0, 70.0, 72.0],
    ("gradcam-layer3", 1.0): [71.0, 71.0, 71.0],
    ("gradcam-layer1", 1.0): [75.0, 76.0, 77.0],
    ("pseudo_label", 1.0): [72.0, 73.0, 71.0],
    ("supervised", None): [68.0, 71.0, 70.0],
}


def write_spec(tmp_path: Path, text: str = TINY_SPEC, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def sweep_args(*argv: str):
    import argparse

    from camssl import experiments as E

    p = argparse.ArgumentParser()
    E.add_sweep_arguments(p)
    return p.parse_args(list(argv))


def table_args(*argv: str):
    import argparse

    from camssl import experiments as E

    p = argparse.ArgumentParser()
    E.add_table_arguments(p)
    return p.parse_args(list(argv))


def fake_sweep(tmp_path: Path, missing: tuple[str, ...] = ()) -> Path:
    """The 21 runs of :data:`TABLE_SPEC` as finished runs with the numbers of :data:`TABLE_VAL` (no training)."""
    from camssl import experiments as E
    from camssl import io

    plan = E.plan_sweep(write_spec(tmp_path, TABLE_SPEC))
    out = tmp_path / "fake"
    io.write_json(out / "sweep.json", plan.record())
    for r in plan.runs:
        if r.id in missing:
            continue
        v = TABLE_VAL[(r.setting, r.ratio)][r.seed] / 100
        io.write_json(out / r.id / "result.json", {
            "val_acc": v, "test_acc": v - 0.01, "best_val_acc": v + 0.005, "test_acc_at_best_val": v - 0.02,
            "best_val_epoch": 3, "epochs": 4, "steps": 40, "wall_time_s": 60.0, "images_per_s": 100.0,
            "data": "mini-cifar10", "n_labeled": 1000, "n_val": 500, "n_test": 500, "device": "cpu",
            "method": r.config.method.name, "config": r.config.to_dict(),
        })
        # last-epoch diagnostics: agreement 0.1 * seed + 0.3, blank maps 0.25 for Grad-CAM runs
        diag = {"map_agreement": 0.3 + 0.1 * r.seed, "blank_maps": 0.25 if r.role == "method" else 0.0}
        (out / r.id / "metrics.jsonl").write_text(
            json.dumps({"epoch": 3, "map_agreement": 0.0}) + "\n" + json.dumps({"epoch": 4, **diag}) + "\n"
        )
    return out


# ---------------------------------------------------------------- runs shared by the whole session


@pytest.fixture(scope="session")
def supervised_run(tmp_path_factory) -> Path:
    """A finished tiny supervised run (:data:`TINY`), trained in this process. Read it, never change it."""
    from camssl.cli import main

    run = tmp_path_factory.mktemp("shared") / "supervised"
    with process_settings_kept():
        assert main(["train", "--method", "supervised", "--out", str(run), *TINY]) == 0
    return run


@pytest.fixture(scope="session")
def gradcam_run(tmp_path_factory) -> Path:
    """A finished tiny gradcam run at layer3 (:data:`TINY`) with its CAM grids. Read it, never change it."""
    from camssl.cli import main

    run = tmp_path_factory.mktemp("shared") / "gradcam"
    with process_settings_kept():
        assert main(["train", "--method", "gradcam", "--layer", "layer3", "--out", str(run), *TINY,
                     "cam_grid=true"]) == 0
    return run
