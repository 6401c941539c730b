"""Reference metrics of the built-in methods, to prove that a refactor changes nothing.

Four short runs (demo preset, 2 epochs, deterministic, one thread, fp32): supervised,
pseudo_label and gradcam in both gradient modes. ``python tests/reference_runs.py --write
FILE`` records them from the code it runs with; ``tests/test_reference.py`` reruns them and
requires every recorded number to be bit-identical. The references in ``data/`` were
recorded with the code of commit 89ce3fc (before the method-boundary refactor); the code of
the method-composition refactor (issue 21) reproduces them bit for bit on AMD EPYC.

Float results depend on the processor's kernels, so there is one reference per processor
model (``data/reference_metrics*.json``, each naming its CPU and torch build). To add one
for a new processor, record it with the code of the last recorded reference (to keep the
chain of proof) or with today's code::

    python tests/reference_runs.py --write tests/data/reference_metrics-NAME.json

A deliberate change of numbers (a method's arithmetic changes on purpose): say so in the
commit, rerun the four runs with the old code and the new one to measure the change,
re-record every reference file whose processor you have (the others then skip, with this
recipe, until someone with that processor records them), and name the new reference's
commit in this docstring.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
REFERENCES = sorted((HERE / "data").glob("reference_metrics*.json"))

COMMON = ["optim.epochs=2", "deterministic=true", "threads=1", "cam_grid=false", "device=cpu",
          "amp=false"]  # recorded in fp32 (the CPU ignored amp then; it means bf16 on native-bf16 CPUs now)
RUNS = {
    "supervised": ["--method", "supervised"],
    "pseudo_label": ["--method", "pseudo_label"],
    "gradcam_full": ["--method", "gradcam", "method.gradcam.grad_mode=full"],
    "gradcam_detach": ["--method", "gradcam", "method.gradcam.grad_mode=detach-weights"],
}
# options added after the reference was recorded, set so that the runs compute what they did then
SINCE = {
    "gradcam_full": ["method.gradcam.skip_blank_targets=false", "method.gradcam.distance=mse"],
    "gradcam_detach": ["method.gradcam.skip_blank_targets=false", "method.gradcam.distance=mse"],
}
# per-epoch timing is not a result
VOLATILE = {"epoch_time_s", "images_per_s", "wall_s"}
RESULT_KEYS = ("test_acc", "test_acc_at_best_val", "best_val_acc", "best_val_epoch", "test_loss", "per_class_test_acc", "steps")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command(name: str, out: Path, extra: list[str] | None = None) -> list[str]:
    return [sys.executable, "-m", "camssl", "train", "--config", "demo", *RUNS[name], *COMMON, *(extra or []),
            "--out", str(out)]


def run(name: str, out: Path, extra: list[str] | None = None) -> dict:
    """Train reference run ``name`` into ``out`` with the CLI; its metrics and result."""
    subprocess.run(command(name, out, extra), check=True, capture_output=True, text=True)
    return read(out)


def run_all(root: Path, extra: dict[str, list[str]], at_once: int = 2) -> dict[str, dict]:
    """Every reference run, ``at_once`` processes at a time (each on one thread, so the results do not change)."""
    pending, active, out = list(RUNS), [], {}
    while pending or active:
        while pending and len(active) < at_once:
            name = pending.pop(0)
            proc = subprocess.Popen(command(name, root / name, extra.get(name)), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            active.append((name, proc))
        name, proc = active.pop(0)
        _, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"reference run {name} failed: {err[-2000:]}")
        out[name] = read(root / name)
    return out


def read(out: Path) -> dict:
    """The metrics (without timings) and the compared results of a finished reference run."""
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    metrics = [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]
    result = json.loads((out / "result.json").read_text())
    return {"metrics": metrics, "result": {k: result[k] for k in RESULT_KEYS}}


if __name__ == "__main__":
    import tempfile

    assert len(sys.argv) == 3 and sys.argv[1] == "--write", "usage: python tests/reference_runs.py --write FILE.json"
    import torch

    ref = {"cpu": cpu_name(), "torch": torch.__version__, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            ref["runs"][name] = run(name, Path(tmp) / name)
            print(name, ref["runs"][name]["result"]["test_acc"], flush=True)
    Path(sys.argv[2]).write_text(json.dumps(ref, indent=1) + "\n")
