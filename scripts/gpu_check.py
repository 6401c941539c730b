#!/usr/bin/env python
"""First run on a GPU: camssl's CUDA paths checked and a paper-scale comparison measured.

    python scripts/gpu_check.py --data data/cifar-10-python.tar.gz --out runs/gpu_check   # one GPU, <= 8 min
    python scripts/gpu_check.py --tiny --out /tmp/gpu_check                               # CPU smoke run, < 2 min

Five independent steps, each in its own subprocess(es) with its own timeout, so that a
failing or hanging step is recorded (with the last lines of its stderr) and the others
still run:

1. ``cam``      Grad-CAM (``camssl.cam.grad_cam`` on a camssl ResNet-18) against captum's
                ``LayerGradCam`` at every stage, in eval and train mode, in float32 and
                under bf16 (and, on CUDA, fp16) autocast, with stated tolerances.
2. ``amp``      one epoch of every registered method (gradcam @ layer3 in both gradient modes,
                cam_kd with the supervised run as its teacher, and fixmatch on airnet, the fast
                regime's network) with AMP bf16, and with fp16 + GradScaler where the config
                lets fp16 be chosen (an ``amp_dtype`` field).
3. ``torchrun`` ``torchrun --standalone --nproc-per-node N -m camssl train ...`` (NCCL on
                CUDA, gloo on the CPU).
4. ``bench``    ``camssl bench`` with bounded sizes (step-cost ratios, images/s).
5. ``paper``    supervised, pseudo_label and gradcam @ layer3 at the ``cpu`` preset's
                protocol at full width (model.width=1.0) for ``--epochs`` epochs, one seed
                each: test accuracy and images/s from each run's result.json.

Everything is driven through the ``camssl`` command line (``python -m camssl``), as a
user would. The whole run stays within ``--budget-s`` seconds of wall time: every step
(and every run inside a step) gets a share of what is left, and time a step does not
use goes to the later ones.

Output: ONE summary file, ``OUT/gpu.md`` (GPU, versions, each check's status with the
measured numbers and tolerances, timings, accuracies and every command run), meant to
be committed as ``docs/gpu.md``; next to it the logs (``OUT/logs``), the run directories
(``OUT/runs``) and the benchmark report (``OUT/bench.md``). The exit status is 0 when
every step passed, 1 when one failed, 2 when CUDA is missing without ``--tiny``.

``--tiny`` is the CPU smoke mode the tests run: device=cpu, 1 thread, the embedded mini
set, width 0.125, one short epoch, ``camssl bench --quick``, 2 gloo processes under
torchrun; the numbers it writes say nothing about speed or accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
if (SRC / "camssl").is_dir() and str(SRC) not in sys.path:  # a checkout: check its code, installed or not
    sys.path.insert(0, str(SRC))

STEPS = ("cam", "amp", "torchrun", "bench", "paper")
TITLES = {
    "cam": "Grad-CAM against captum",
    "amp": "One epoch of every method under AMP",
    "torchrun": "torchrun",
    "bench": "camssl bench",
    "paper": "Paper-scale comparison (cpu preset protocol, full width)",
}
# shares of the remaining wall budget; what a step leaves unused goes to the later ones
WEIGHTS = {"cam": 1.0, "amp": 3.0, "torchrun": 1.5, "bench": 2.0, "paper": 5.0}
MIN_STEP_S = 5.0  # a step (or run) with less than this left is not started
MIN_RUN_S = 60.0  # a training run's timeout is at least this (within what is left of the whole budget)

# Grad-CAM tolerances: max |a - b| / max |b| over the batch's maps of one layer
TOL_FP32 = 1e-5  # camssl vs captum, both float32 (TF32 off): the same arithmetic
TOL_FP64 = 1e-3  # camssl float32 on the device vs camssl float64 on the CPU (the kernels themselves)
TOL_HALF = 5e-2  # camssl vs captum, both under the same bf16/fp16 autocast
HALF_VS_CAPTUM = (1.5, 1e-3)  # camssl's half-precision error vs the fp32 maps <= 1.5 x captum's own + 1e-3
FP64_NOTE = (
    "In train mode the maps at layer1–3 go through layer4's BatchNorm with batch statistics, whose gradient "
    "subtracts the batch mean of the incoming gradient: the class-score gradient largely cancels there, so "
    "float32 itself is only good to about 1e-2 relative against float64 at those layers (measured on the CPU: "
    "1.3e-2 at width 1.0, batch 16; 1e-6 in eval mode). camssl and captum share that arithmetic and agree to "
    "float32 rounding (*measured*); the float64 column is shown for train mode but not checked.")
MIN_ACC = 0.2  # sanity floor of a paper-scale run's test accuracy (chance: 0.1); not checked with --tiny


# ---------------------------------------------------------------- running commands


def shown(argv: Sequence[str]) -> str:
    """A command as the user would type it (``python`` for this interpreter, the script relative)."""
    parts = []
    for i, a in enumerate(argv):
        if i == 0 and a == sys.executable:
            a = "python"
        elif a == str(Path(__file__).resolve()):
            a = _rel(Path(__file__).resolve())
        parts.append(a)
    return shlex.join(parts)


def _rel(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@dataclass
class Ran:
    """One finished (or killed, or never started) subprocess."""

    name: str
    cmd: str
    rc: int | None
    seconds: float
    timed_out: bool
    out: Path
    err: Path
    limit: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def stdout(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def tail(self, n: int = 15) -> str:
        """The last ``n`` lines of stderr (of stdout when stderr is empty), without profiler chatter."""
        for path in (self.err, self.out):
            if path.exists():
                lines = [ln for ln in path.read_text(errors="replace").splitlines()
                         if ln.strip() and not ln.startswith("USDT:")]
                if lines:
                    return "\n".join(lines[-n:])
        return ""

    def why(self) -> str:
        if self.note:
            return self.note
        if self.timed_out:
            return f"killed after its {self.limit:.0f} s timeout"
        return f"exit status {self.rc}"


class Runner:
    """Runs commands with timeouts inside the wall budget; logs go to OUT/logs/NAME.{out,err}."""

    def __init__(self, out: Path, env: dict[str, str], deadline: float, log: Callable[[str], None]) -> None:
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.deadline = deadline
        self.log = log

    def left(self) -> float:
        return self.deadline - time.time()

    def run(self, name: str, argv: Sequence[str], timeout: float) -> Ran:
        limit = max(0.0, min(timeout, self.left()))
        out, err = self.logs / f"{name}.out", self.logs / f"{name}.err"
        cmd = shown(argv)
        if limit < MIN_STEP_S:
            return Ran(name, cmd, None, 0.0, False, out, err, limit,
                       note=f"not started: only {limit:.0f} s of the wall budget left")
        self.log(f"  $ {cmd}   (timeout {limit:.0f} s)")
        t0 = time.time()
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = subprocess.Popen(list(argv), stdout=fo, stderr=fe, env=self.env, start_new_session=True)
            timed_out = False
            try:
                proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
        ran = Ran(name, cmd, proc.returncode, time.time() - t0, timed_out, out, err, limit)
        self.log(f"    -> {'ok' if ran.ok else ran.why()} in {ran.seconds:.1f} s")
        return ran


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    """End the process group this script started for ``proc`` (torchrun's workers included)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def share(left: float, weights: Sequence[float]) -> float:
    """The first item's share of ``left`` seconds among items weighted ``weights``."""
    return left * weights[0] / max(sum(weights), 1e-9)


# ---------------------------------------------------------------- the run's context


@dataclass
class Ctx:
    args: argparse.Namespace
    out: Path
    runner: Runner
    device: str  # cuda | cuda:N | cpu
    machine: dict[str, Any]
    camssl: list[str] = field(default_factory=lambda: [sys.executable, "-m", "camssl"])

    @property
    def tiny(self) -> bool:
        return bool(self.args.tiny)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def run_dir(self, name: str) -> str:
        """OUT/runs/NAME, emptied: a result.json left by an earlier check must not pass for this one."""
        path = self.out / "runs" / name
        if path.exists():
            shutil.rmtree(path)
        return _rel(path)

    def common(self, device: str | None = None) -> list[str]:
        """Overrides every training run gets."""
        o = [f"device={device or self.device}", "progress=false"]
        if self.tiny:
            o += ["threads=1", "cam_grid=false"]
        return o

    def tiny_sizes(self) -> list[str]:
        return ["--width", "0.125", "--labeled", "200", "--ratio", "1", "optim.batch_size=32",
                "split.val_fraction=0.04"]


@dataclass
class StepResult:
    status: str  # PASS | FAIL | SKIP
    summary: str  # one line for the overview table
    lines: list[str] = field(default_factory=list)  # the step's section (markdown)
    commands: list[Ran] = field(default_factory=list)
    seconds: float = 0.0


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def sci(x: float | None) -> str:
    return "—" if x is None else f"{x:.1e}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def failure_block(ran: Ran) -> list[str]:
    text = ran.tail() or "(no output)"
    return [f"`{ran.name}` failed ({ran.why()}); last lines of its output (`logs/{ran.name}.err`):", "",
            "```", text, "```", ""]


# ---------------------------------------------------------------- step 1: Grad-CAM vs captum


def step_cam(ctx: Ctx, budget: float) -> StepResult:
    json_path = ctx.out / "cam.json"
    width, batch = ("0.125", "4") if ctx.tiny else ("1.0", "16")
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "cam", "--device", ctx.device,
            "--width", width, "--batch", batch, "--json", _rel(json_path)]
    json_path.unlink(missing_ok=True)  # a stale file from an earlier run must not pass for this one
    ran = ctx.runner.run("cam", argv, budget)
    res = StepResult("FAIL", "", commands=[ran])
    if ran.timed_out or not json_path.exists():
        res.summary = f"worker failed: {ran.why()}"
        res.lines = failure_block(ran)
        return res
    rep = read_json(json_path)
    rows = []
    for r in rep["rows"]:
        measured = sci(r["err"])
        extra = sci(r.get("vs_fp64")) if r["precision"] == "fp32" else \
            f"{sci(r.get('vs_fp32'))} (captum {sci(r.get('captum_vs_fp32'))})"
        rows.append((r["precision"], r["mode"], r["layer"], measured, f"≤ {r['tol']:.0e}", extra,
                     r["extra_tol"], "PASS" if r["ok"] else "**FAIL**"))
    n_bad = sum(not r["ok"] for r in rep["rows"])
    res.status = "PASS" if n_bad == 0 and rep["rows"] and ran.ok else "FAIL"
    worst = {}
    for r in rep["rows"]:
        worst[r["precision"]] = max(worst.get(r["precision"], 0.0), r["err"])
    res.summary = "; ".join(f"{p} max rel. err {sci(e)} (tol. {TOL_FP32 if p == 'fp32' else TOL_HALF:.0e})"
                            for p, e in worst.items())
    if n_bad:
        res.summary += f"; {n_bad} of {len(rep['rows'])} rows out of tolerance"
    if not ctx.cuda:
        res.summary += "; fp16 checked on CUDA only"
    res.lines = [
        f"ResNet-18 (CIFAR stem) at width {rep['width']:g}, {rep['batch']} random 32×32 images, a random class per "
        f"image, random BatchNorm affine parameters and statistics, on `{rep['device']}`"
        + (f" ({rep['gpu']})" if rep.get("gpu") else "") + f"; {rep['seconds']:.1f} s. camssl: "
        "`logits, feats = model(x, taps=model.stages)` then `camssl.cam.grad_cam(logits, feats, classes, "
        "model=model)` (layer4 by the closed form, and once more by the autograd route); captum: "
        "`LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=classes, relu_attributions=True)`. "
        "In train mode both see the same batch statistics. Half precision: both run under the same "
        "`torch.autocast(dtype=...)`.",
        "",
        f"*measured* is max |camssl − captum| / max |captum| over the batch's maps at that layer. "
        f"Tolerances: float32 {TOL_FP32:.0e} (TF32 disabled for this step: "
        f"{rep.get('tf32', 'n/a')}); half precision {TOL_HALF:.0e}. *accuracy*: for float32, camssl on the device "
        f"against camssl in float64 on the CPU (tolerance {TOL_FP64:.0e}: it checks the device's kernels, which "
        "captum shares); for bf16/fp16, camssl's maps against captum's float32 maps, next to captum's own "
        f"half-precision error (camssl may be at most {HALF_VS_CAPTUM[0]:g}× captum's + {HALF_VS_CAPTUM[1]:.0e}).",
        "",
        *table(("precision", "model mode", "layer", "measured", "tolerance", "accuracy", "accuracy tolerance",
                "status"), rows),
        "",
        FP64_NOTE,
        "",
    ]
    if not ctx.cuda:
        res.lines += ["fp16 autocast is checked on CUDA only (this run is on the CPU).", ""]
    return res


def cam_worker(device: str, width: float, batch: int, json_path: str) -> int:
    """``--worker cam``: the comparisons of step 1, written to ``json_path``."""
    import torch
    from captum.attr import LayerGradCam
    from torch import nn

    from camssl.cam import grad_cam
    from camssl.models import build_model

    t0 = time.time()
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or torch.get_num_threads())
    tf32 = "n/a (CPU)"
    if dev.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        tf32 = "torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False"
    torch.manual_seed(0)
    model = build_model("resnet18", 10, width=width)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    gen = torch.Generator().manual_seed(1)
    x_cpu = torch.randn(batch, 3, 32, 32, generator=gen)
    classes_cpu = torch.randint(0, 10, (batch,), generator=gen)
    state = copy.deepcopy(model.state_dict())
    model = model.to(dev)
    x, classes = x_cpu.to(dev), classes_cpu.to(dev)
    model64 = copy.deepcopy(model).cpu().double()
    stages = list(model.stages)
    cam_layer = model.cam_layer

    def fresh(net: nn.Module, train: bool) -> nn.Module:
        net.load_state_dict(state)  # captum's train-mode forward moves the running statistics
        return net.train(train)

    def autocast(precision: str) -> Any:
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(dev.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)

    def camssl_maps(net: nn.Module, inp: Any, cls: Any, precision: str) -> dict[str, Any]:
        with autocast(precision):
            logits, feats = net(inp, taps=stages)
            maps = grad_cam(logits, feats, cls, model=net)
            maps[f"{cam_layer} (autograd)"] = grad_cam(logits, {cam_layer: feats[cam_layer]}, cls, model=net,
                                                       closed_form=False)[cam_layer]
        return {k: v.detach().double().cpu() for k, v in maps.items()}

    def captum_maps(net: nn.Module, precision: str) -> dict[str, Any]:
        out = {}
        for layer in stages:
            with autocast(precision):
                a = LayerGradCam(net, net.get_submodule(layer)).attribute(x, target=classes, relu_attributions=True)
            out[layer] = a.detach().squeeze(1).double().cpu()
        out[f"{cam_layer} (autograd)"] = out[cam_layer]
        return out

    def rel(a: Any, b: Any) -> float:
        scale = b.abs().max().item()
        if not scale > 0:
            raise AssertionError("the reference maps are all zero: the comparison would be vacuous")
        if not torch.isfinite(a).all():
            return float("inf")
        return (a - b).abs().max().item() / scale

    precisions = ["fp32", "bf16"] + (["fp16"] if dev.type == "cuda" else [])
    rows = []
    for train in (False, True):
        mode = "train" if train else "eval"
        fp32_ref = captum_maps(fresh(model, train), "fp32")
        fp64 = camssl_maps(fresh(model64, train), x_cpu.double(), classes_cpu, "fp32")
        for precision in precisions:
            mine = camssl_maps(fresh(model, train), x, classes, precision)
            theirs = fp32_ref if precision == "fp32" else captum_maps(fresh(model, train), precision)
            for layer in mine:
                err = rel(mine[layer], theirs[layer])
                row: dict[str, Any] = {"precision": precision, "mode": mode, "layer": layer, "err": err}
                if precision == "fp32":
                    row["tol"] = TOL_FP32
                    row["vs_fp64"] = rel(mine[layer], fp64[layer])
                    if train:  # ill-conditioned: measured, not checked (see FP64_NOTE)
                        row["extra_tol"] = "not checked (train mode)"
                        row["ok"] = err <= TOL_FP32
                    else:
                        row["extra_tol"] = f"≤ {TOL_FP64:.0e}"
                        row["ok"] = err <= TOL_FP32 and row["vs_fp64"] <= TOL_FP64
                else:
                    row["tol"] = TOL_HALF
                    row["vs_fp32"] = rel(mine[layer], fp32_ref[layer])
                    row["captum_vs_fp32"] = rel(theirs[layer], fp32_ref[layer])
                    factor, slack = HALF_VS_CAPTUM
                    row["extra_tol"] = f"≤ {factor * row['captum_vs_fp32'] + slack:.1e}"
                    row["ok"] = err <= TOL_HALF and row["vs_fp32"] <= factor * row["captum_vs_fp32"] + slack
                rows.append(row)
    report = {"device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
              "width": width, "batch": batch, "tf32": tf32, "rows": rows, "seconds": time.time() - t0}
    Path(json_path).write_text(json.dumps(report, indent=1))
    bad = [r for r in rows if not r["ok"]]
    for r in rows:
        print(f"{r['precision']:5} {r['mode']:5} {r['layer']:18} err {r['err']:.2e}  {'ok' if r['ok'] else 'FAIL'}")
    return 1 if bad else 0


# ---------------------------------------------------------------- step 2: AMP training


def config_fields(ctx: Ctx) -> tuple[set[str], Ran]:
    """Top-level keys that ``camssl config`` lists.

    Run in this process (``camssl.cli.main(["config"])``, the code behind the command),
    which spares a start-up of torch; its output goes to ``logs/config.out``.
    """
    import io

    import yaml

    from camssl.cli import main as camssl_main

    out, err = ctx.runner.logs / "config.out", ctx.runner.logs / "config.err"
    t0 = time.time()
    buf, ebuf = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(ebuf):
            rc = camssl_main(["config"])
    except Exception:  # noqa: BLE001
        ebuf.write(traceback.format_exc())
        rc = 1
    out.write_text(buf.getvalue())
    err.write_text(ebuf.getvalue())
    ran = Ran("config", "camssl config", rc, time.time() - t0, False, out, err, 0.0)
    if not ran.ok:
        return set(), ran
    return set(yaml.safe_load(buf.getvalue()) or {}), ran


def auto_amp(ctx: Ctx) -> str:
    """What ``amp=true`` gives: the trainer autocasts on CUDA only, to bf16 when supported else fp16."""
    if not ctx.cuda:
        return "fp32"
    return "bf16" if ctx.machine.get("bf16_supported") else "fp16"


def check_run(run_dir: str) -> tuple[bool, str, dict[str, Any]]:
    """A finished run: result.json written, the last epoch's loss finite."""
    path = Path(run_dir) / "result.json"
    if not path.exists():
        return False, "no result.json", {}
    result = read_json(path)
    metrics = read_metrics(run_dir)
    loss = metrics[-1].get("loss") if metrics else None
    result["_loss"] = loss
    result["_epoch_s"] = statistics.median(m["epoch_time_s"] for m in metrics) if metrics else None
    if loss is None or not math.isfinite(loss):
        return False, f"last training loss {loss}", result
    if result.get("test_acc") is None or not math.isfinite(result["test_acc"]):
        return False, f"test accuracy {result.get('test_acc')}", result
    return True, "", result


def amp_methods(ctx: Ctx) -> list[tuple[str, list[str]]]:
    """(label, extra arguments) of every registered method (the registry says which there are); gradcam in
    both gradient modes at layer3; a method with a teacher (cam_kd) gets the supervised run of its precision,
    so those come last."""
    import dataclasses

    from camssl.methods import METHODS

    out: list[tuple[str, list[str]]] = []
    teacher_users = []
    for name in sorted(METHODS):
        if "teacher" in {f.name for f in dataclasses.fields(METHODS[name].Config)}:
            teacher_users.append(name)
        elif name == "gradcam":
            out += [(f"gradcam@layer3/{mode}", ["--layer", "layer3", f"method.gradcam.grad_mode={mode}"])
                    for mode in ("full", "detach-weights")]
        else:
            out.append((name, []))
    out.append(("fixmatch@airnet", ["--model", "airnet", "model.pool=avg"]))  # the fast regime's network
    return out + [(name, ["--teacher", "{supervised}"]) for name in teacher_users]


def step_amp(ctx: Ctx, budget: float) -> StepResult:
    t_end = time.time() + budget
    fields, cfg_ran = config_fields(ctx)
    res = StepResult("FAIL", "", commands=[cfg_ran])
    if not cfg_ran.ok:
        res.summary = f"`camssl config` failed: {cfg_ran.why()}"
        res.lines = failure_block(cfg_ran)
        return res
    selectable = "amp_dtype" in fields
    auto = auto_amp(ctx)
    methods = amp_methods(ctx)
    # (label, overrides) per precision, or (label, None, why not) when it cannot be run
    variants: list[tuple[str, list[str] | None, str]] = []
    if not ctx.cuda:
        variants.append(("amp=true on CPU (bf16 autocast where the CPU has native bf16, else fp32)", ["amp=true"], ""))
        if not ctx.tiny:  # the tiny smoke run checks the script, once per method
            variants.append(("amp=false on CPU (fp32)", ["amp=false"], ""))
    else:
        for dtype in ("bf16", "fp16"):
            label = "bf16 autocast" if dtype == "bf16" else "fp16 autocast + GradScaler"
            if selectable:
                variants.append((label, ["amp=true", f"amp_dtype={dtype}"], ""))
            elif dtype == auto:
                variants.append((label + " (amp=true picks it)", ["amp=true"], ""))
            elif dtype == "bf16":
                variants.append((label, None, "bf16 not supported by this GPU (torch.cuda.is_bf16_supported() is "
                                              "False) and not selectable: `camssl config` has no amp_dtype field"))
            else:
                variants.append((label, None, "fp16 not selectable: `camssl config` has no amp_dtype field "
                                              "(amp=true picks bf16 on this GPU)"))
    jobs = [(label, over, why, m, extra) for label, over, why in variants for m, extra in methods]
    runnable = [j for j in jobs if j[1] is not None]
    rows = []
    ok_all = bool(runnable)
    n_done = 0
    for label, over, why, method, extra in jobs:
        if over is None:
            rows.append((method, label, "SKIP", "—", "—", "—", why))
            continue
        prefix = over[-1].split("=")[-1] if len(over) > 1 else "amp"
        tag = prefix + "-" + method.replace("@", "-").replace("/", "-")
        run_dir = ctx.run_dir(f"amp-{tag}")
        # the teacher: this precision's supervised run, trained above (ctx.run_dir would empty it)
        extra = [e.replace("{supervised}", _rel(ctx.out / "runs" / f"amp-{prefix}-supervised")) for e in extra]
        argv = [*ctx.camssl, "train", "--config", "demo", "--method", method.split("@")[0], *extra,
                "--epochs", "1", "--out", run_dir, "--overwrite", *ctx.common(), *over]
        if ctx.tiny:
            argv += ctx.tiny_sizes()
        else:
            argv += ["model.width=1.0"]
        left = len(runnable) - n_done
        ran = ctx.runner.run(f"amp-{tag}", argv, max((t_end - time.time()) / max(left, 1), MIN_RUN_S))
        n_done += 1
        res.commands.append(ran)
        if not ran.ok:
            ok_all = False
            rows.append((method, label, "**FAIL**", "—", "—", f"{ran.seconds:.1f}", ran.why()))
            res.lines += failure_block(ran)
            continue
        ok, why_bad, result = check_run(run_dir)
        ok_all &= ok
        rows.append((method, label, "PASS" if ok else "**FAIL**",
                     f"{result['_loss']:.3f}" if result.get("_loss") is not None else "—",
                     f"{result['images_per_s']:.0f}" if "images_per_s" in result else "—",
                     f"{ran.seconds:.1f}", why_bad or f"test {pct(result.get('test_acc'))}"))
    res.status = "PASS" if ok_all else "FAIL"
    n_pass = sum(r[2] == "PASS" for r in rows)
    skipped = [r for r in rows if r[2] == "SKIP"]
    res.summary = f"{n_pass} of {len(runnable)} runs pass"
    if skipped:
        res.summary += "; " + "; ".join(sorted({r[6].split(':')[0] for r in skipped}))
    sizes = ("tiny sizes (width 0.125, 200 labels, 6 steps)" if ctx.tiny
             else "the demo preset (embedded mini CIFAR-10, 1,000 labels, 15 steps per epoch) at width 1.0")
    res.lines = [
        f"`camssl train --config demo --epochs 1` of each method on {sizes}, on `{ctx.device}`. The trainer "
        "autocasts on CUDA only (`amp=true`: bf16 when `torch.cuda.is_bf16_supported()`, else fp16 with a "
        f"GradScaler); here `amp=true` means **{auto}**. A run passes when it exits 0 and writes result.json "
        "with a finite last training loss (the trainer itself stops on a NaN/inf loss).",
        "",
        *table(("method", "precision", "status", "last loss", "images / s", "seconds", "note"), rows),
        "",
        *res.lines,
    ]
    if any("fp16 not selectable" in r[6] for r in skipped):
        res.lines += ["**fp16 not selectable**: the config has no field to force fp16 on a GPU that supports bf16 "
                      "(`amp_dtype: auto|bf16|fp16` is needed); this script passes `amp_dtype=...` as soon as "
                      "`camssl config` lists it.", ""]
    return res


# ---------------------------------------------------------------- step 3: torchrun


def nproc(ctx: Ctx) -> int:
    if ctx.args.nproc:
        return int(ctx.args.nproc)
    if not ctx.cuda:
        return 2  # gloo, two CPU processes: the collectives run
    return max(1, min(2, int(ctx.machine.get("gpu_count") or 1)))


def step_torchrun(ctx: Ctx, budget: float) -> StepResult:
    n = nproc(ctx)
    run_dir = ctx.run_dir("torchrun")
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
            "-m", "camssl", "train", "--config", "demo", "--method", "gradcam", "--layer", "layer3", "--epochs", "1",
            "--out", run_dir, "--overwrite", *ctx.common("cuda" if ctx.cuda else "cpu")]  # cuda:LOCAL_RANK
    argv += ctx.tiny_sizes() if ctx.tiny else ["model.width=1.0"]
    ran = ctx.runner.run("torchrun", argv, budget)
    res = StepResult("FAIL", "", commands=[ran])
    expected = "nccl" if ctx.cuda else "gloo"
    if not ran.ok:
        res.summary = ran.why()
        res.lines = failure_block(ran)
        return res
    ok, why_bad, result = check_run(run_dir)
    text = ran.stdout()
    backend = next((b for b in ("nccl", "gloo") if f"processes ({b}" in text), None)
    world = result.get("world_size")
    problems = [why_bad] if why_bad else []
    if world != n:
        problems.append(f"result.json says world_size {world}, expected {n}")
    if n > 1 and backend != expected:
        problems.append(f"process group backend {backend or 'not shown'}, expected {expected}")
    res.status = "PASS" if ok and not problems else "FAIL"
    group = (f"{backend} process group" if backend else
             "no process group (camssl creates none for a world size of 1, so NCCL/DDP are not exercised)")
    res.summary = f"{n} process{'es' if n > 1 else ''} on {'GPU' if ctx.cuda else 'CPU'}, {group}"
    if problems:
        res.summary += "; " + "; ".join(problems)
    res.lines = [
        *table(("processes", "backend", "world size (result.json)", "test accuracy", "images / s", "seconds",
                "status"),
               [(n, backend or "none", world, pct(result.get("test_acc")),
                 f"{result['images_per_s']:.0f}" if "images_per_s" in result else "—", f"{ran.seconds:.1f}",
                 res.status)]),
        "",
    ]
    if n == 1:
        res.lines += ["With one process camssl's `distributed.setup` returns without `init_process_group`, so this "
                      "run checks the torchrun launch (its environment, `cuda:LOCAL_RANK`) but not NCCL or DDP; "
                      "a machine with 2 GPUs runs 2 processes here (`--nproc 2`).", ""]
    return res


# ---------------------------------------------------------------- step 4: camssl bench


def parse_bench(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The step-cost rows of a ``camssl bench`` run, from the JSON it writes beside its report: width -> rows."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(w["width"]): w["steps"] for w in data.get("widths", [])}


def step_bench(ctx: Ctx, budget: float) -> StepResult:
    path, report = ctx.out / "bench.json", ctx.out / "bench.md"
    argv = [*ctx.camssl, "bench"]
    if ctx.tiny:
        argv += ["--quick", "--no-experiments", "--no-memory", "--threads", "1", "--device", "cpu"]
    else:
        argv += ["--widths", ctx.args.bench_widths, "--reps", str(ctx.args.bench_reps), "--warmup", "2",
                 "--layers", "layer1,layer2,layer3,layer4", "--no-experiments", "--device", ctx.device]
    argv += ["--out", _rel(report)]
    path.unlink(missing_ok=True)  # a report left by an earlier check must not pass for this one
    ran = ctx.runner.run("bench", argv, budget)
    res = StepResult("FAIL", "", commands=[ran])
    if not ran.ok or not path.exists():
        res.summary = ran.why() if not ran.ok else "no report written"
        res.lines = failure_block(ran)
        return res
    tables = parse_bench(path)
    if not tables or not all(any(r.get("key") == "pseudo_label" for r in rows) for rows in tables.values()):
        res.summary = "bench.json written but without its step-cost rows"
        return res
    res.status = "PASS"
    heads = []

    def num(x: Any, fmt: str) -> str:
        return "—" if x is None else format(x, fmt)

    for width, rows in tables.items():
        keep = [(r["label"], num(r["median_s"] * 1000, ".1f"), num(r["images_per_s"], ".0f"),
                 num(r["x_pseudo_label"], ".2f"), num(r["peak_bytes"] and r["peak_bytes"] / 2**20, ".1f"))
                for r in rows]
        res.lines += [f"ResNet-18 width {width}:", "",
                      *table(("step", "ms / step", "images / s", "× pseudo_label", "peak MiB"), keep), ""]
        by = {r["key"]: r for r in rows}
        gc, pl = by.get("gradcam@layer3/full"), by["pseudo_label"]
        heads.append(f"width {width}: pseudo_label {num(pl['images_per_s'], '.0f')} img/s"
                     + (f", gradcam@layer3 full {num(gc['x_pseudo_label'], '.2f')}× pseudo_label" if gc else ""))
    res.summary = "; ".join(heads)
    res.lines = ["Full report: `bench.md` (copy it to `docs/benchmarks-gpu.md` to keep it). Ratios are of medians, "
                 "step types interleaved in one process; images / s counts labeled + unlabeled images (labeled "
                 "only for supervised). The report's *targets* are the CPU targets of issue 5, informational here.",
                 "", *res.lines]
    return res


# ---------------------------------------------------------------- step 5: paper-scale comparison


def step_paper(ctx: Ctx, budget: float) -> StepResult:
    t_end = time.time() + budget
    data = ctx.args.data
    mini = data is None
    if ctx.tiny:
        sizes = [*ctx.tiny_sizes(), "--epochs", "1"]
        ssl_ratio: list[str] = []
        what = ("tiny sizes (the embedded mini set, width 0.125, 200 labels, 100 validation images, 1 epoch): a smoke "
                "test, not a measurement")
    elif mini:
        sizes = ["model.width=1.0", "--epochs", str(ctx.args.epochs), "--labeled", "1000"]
        ssl_ratio = ["--ratio", "1.0"]
        what = (f"**no --data: the embedded mini CIFAR-10 set** (2,500 train / 500 test images; 1,000 labels, "
                f"ratio 1.0, since the cpu preset's 5,000 labels do not fit), width 1.0, {ctx.args.epochs} epochs")
    else:
        sizes = ["model.width=1.0", "--epochs", str(ctx.args.epochs)]
        ssl_ratio = ["--ratio", str(ctx.args.ratio)]
        what = (f"CIFAR-10 from `{data}`: the cpu preset's 5,000 labels and 10,000 validation images, "
                f"ratio {ctx.args.ratio} for the semi-supervised methods, ResNet-18 at width 1.0 (the preset has "
                f"0.5), {ctx.args.epochs} epochs (the preset has 30)")
    runs = [("supervised", ["--method", "supervised"], 1.0),
            ("pseudo_label", ["--method", "pseudo_label", *ssl_ratio], 2.0),
            ("gradcam@layer3", ["--method", "gradcam", "--layer", "layer3", *ssl_ratio], 3.0)]
    res = StepResult("FAIL", "")
    rows = []
    ok_all = True
    for i, (label, method_args, _) in enumerate(runs):
        run_dir = ctx.run_dir(f"paper-{label.replace('@', '-')}")
        argv = [*ctx.camssl, "train", "--config", "cpu", "--data", data or "mini", *method_args, "--seed", "0",
                *sizes, "--out", run_dir, "--overwrite", *ctx.common()]
        limit = max(share(t_end - time.time(), [w for _, _, w in runs[i:]]), MIN_RUN_S)
        ran = ctx.runner.run(f"paper-{label.replace('@', '-')}", argv, limit)
        res.commands.append(ran)
        ok, why_bad, result = check_run(run_dir) if ran.ok else (False, ran.why(), {})
        if ok and not ctx.tiny and result["test_acc"] < MIN_ACC:
            ok, why_bad = False, f"test accuracy {pct(result['test_acc'])} below the sanity floor {pct(MIN_ACC)}"
        ok_all &= ok
        if not ran.ok:
            done = read_metrics(run_dir)
            last = done[-1] if done else {}
            why_bad += (f"; got to epoch {last.get('epoch')} (val {pct(last.get('val_acc'))})" if done else "")
            res.lines += failure_block(ran)
        rows.append((label, result.get("epochs", "—"), pct(result.get("test_acc")),
                     f"{pct(result.get('best_val_acc'))} (ep. {result.get('best_val_epoch', '—')})"
                     if result else "—",
                     pct(result.get("test_acc_at_best_val")) if result else "—",
                     f"{result['images_per_s']:.0f}" if "images_per_s" in result else "—",
                     f"{result['_epoch_s']:.1f}" if result.get("_epoch_s") is not None else "—",
                     f"{ran.seconds:.0f}", "PASS" if ok else f"**FAIL** ({why_bad})"))
    res.status = "PASS" if ok_all else "FAIL"
    res.summary = "; ".join(f"{r[0]} test {r[2]}, {r[5]} img/s" for r in rows)
    res.lines = [
        f"`camssl train --config cpu` on {what}, one seed (0), on `{ctx.device}`"
        + (" with AMP (`amp=true`)" if ctx.cuda else "") + ". Numbers from each run's result.json: test accuracy "
        "at the final epoch and at the best validation epoch, training images / s (labeled + unlabeled images "
        "per second of training steps), seconds per epoch (median of metrics.jsonl's epoch_time_s, training "
        "only) and the run's wall time (start-up, data, validation and test included). One seed: differences "
        "of a point or so are noise."
        + ("" if ctx.tiny else f" Sanity floor: test accuracy ≥ {pct(MIN_ACC)} (chance 10%)."),
        "",
        *table(("method", "epochs", "test (final)", "best val", "test at best val", "images / s", "s / epoch",
                "wall s", "status"), rows),
        "",
        *res.lines,
    ]
    return res


# ---------------------------------------------------------------- machine info and the summary


def machine_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "cuda_available": torch.cuda.is_available(),
    }
    with contextlib.suppress(Exception):
        from camssl.machine import cpu_name, usable_cores

        info["cpu"] = f"{cpu_name()}, {usable_cores()} usable cores"
    with contextlib.suppress(Exception):
        import captum

        info["captum"] = captum.__version__
    with contextlib.suppress(Exception):
        import camssl

        info["camssl"] = getattr(camssl, "__version__", "?")
    with contextlib.suppress(Exception):
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if rev:
            info["commit"] = rev + (" (with uncommitted changes)" if dirty else "")
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = torch.device(device)
        props = torch.cuda.get_device_properties(dev)
        info.update({
            "gpu": torch.cuda.get_device_name(dev),
            "gpu_count": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": props.total_memory / 2**30,
            "cudnn": torch.backends.cudnn.version(),
            "bf16_supported": torch.cuda.is_bf16_supported(),
        })
        try:
            info["bf16_native"] = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before the including_emulation argument
            info["bf16_native"] = props.major >= 8
    return info


def render(ctx: Ctx, results: dict[str, StepResult], started: float, argv: Sequence[str], final: bool) -> str:
    m = ctx.machine
    a = ctx.args
    ran = [r for r in results.values() if r.status != "SKIP"]
    failed = [k for k, r in results.items() if r.status == "FAIL"]
    overall = ("**FAIL** (" + ", ".join(failed) + ")") if failed else "**PASS**"
    lines = [
        "# camssl on a GPU: CUDA paths checked, a paper-scale comparison measured" if not ctx.tiny else
        "# camssl GPU check — CPU smoke run (--tiny)",
        "",
        f"Generated by `{shown(argv)}` on {time.strftime('%Y-%m-%d %H:%M %Z')} "
        f"in {time.time() - started:.0f} s (wall budget {a.budget_s:.0f} s)."
        + ("" if final else " **Incomplete: the script is still running or was stopped.**"),
        "",
        f"Overall: {overall} — {sum(r.status == 'PASS' for r in ran)} of {len(ran)} steps passed.",
        "",
    ]
    if ctx.tiny:
        lines += ["This is the `--tiny` CPU mode (device=cpu, 1 thread, tiny sizes): it checks that every step runs, "
                  "not how fast or how accurate anything is. No GPU was used.", ""]
    lines += ["## Machine", ""]
    if m.get("gpu"):
        lines.append(f"- GPU: **{m['gpu']}** (`torch.cuda.get_device_name`), compute capability {m['capability']}, "
                     f"{m['gpu_memory_gib']:.0f} GiB; {m['gpu_count']} GPU(s) visible; device `{ctx.device}`")
        lines.append(f"- bf16: `torch.cuda.is_bf16_supported()` = {m['bf16_supported']} (natively: "
                     f"{m['bf16_native']}); so `amp=true` trains in {auto_amp(ctx)}")
    else:
        lines.append(f"- GPU: none (device `{ctx.device}`; torch.cuda.is_available() = {m.get('cuda_available')})")
    lines.append(f"- torch {m.get('torch')}, CUDA {m.get('cuda_build') or 'none (CPU build)'}"
                 + (f", cuDNN {m['cudnn']}" if m.get("cudnn") else "") + f", captum {m.get('captum', 'missing')}, "
                 f"Python {m.get('python')}, {m.get('os')}")
    if m.get("cpu"):
        lines.append(f"- CPU: {m['cpu']}")
    lines.append(f"- camssl {m.get('camssl', '?')}" + (f", commit {m['commit']}" if m.get("commit") else ""))
    lines += ["", "## Steps", ""]
    rows = []
    for i, key in enumerate(STEPS, 1):
        r = results.get(key)
        if r is None:
            rows.append((f"{i}. {TITLES[key]}", "not run yet" if not final else "not selected", "—", ""))
        else:
            st = r.status if r.status != "FAIL" else "**FAIL**"
            rows.append((f"{i}. {TITLES[key]}", st, f"{r.seconds:.0f} s", r.summary.replace("|", "/")))
    lines += table(("step", "status", "time", "result"), rows)
    lines.append("")
    for i, key in enumerate(STEPS, 1):
        r = results.get(key)
        if r is None:
            continue
        lines += [f"## {i}. {TITLES[key]} — {r.status} ({r.seconds:.0f} s)", "", *r.lines]
        if r.commands:
            lines += ["Commands:", "", "```"]
            for c in r.commands:
                lines.append(f"{c.cmd}    # {'ok' if c.ok else c.why()}, {c.seconds:.1f} s")
            lines += ["```", ""]
    lines += ["## Files", "",
              "Next to this file: `logs/NAME.out` / `logs/NAME.err` (every command's output), `runs/` (the run "
              "directories: config.yaml, metrics.jsonl, result.json, ...), `bench.md` (the full `camssl bench` "
              "report), `cam.json` (step 1's numbers)." + ("" if ctx.tiny else
              " To keep this summary: copy it to `docs/gpu.md`."), ""]
    return "\n".join(lines)


def write_summary(ctx: Ctx, results: dict[str, StepResult], started: float, argv: Sequence[str],
                  final: bool) -> Path:
    path = ctx.out / "gpu.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(render(ctx, results, started, argv, final))
    tmp.replace(path)
    return path


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Steps: " + ", ".join(STEPS) + ". The summary is OUT/gpu.md.")
    p.add_argument("--data", default=None,
                   help="CIFAR-10 folder or archive for the paper-scale step [the embedded mini set, said so]")
    p.add_argument("--out", default="runs/gpu_check", help="output folder [runs/gpu_check]")
    p.add_argument("--tiny", action="store_true",
                   help="CPU smoke mode: device=cpu, 1 thread, tiny sizes (what the tests run; < 2 min)")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-time budget of the whole run [480]")
    p.add_argument("--epochs", type=int, default=8,
                   help="epochs of each paper-scale run [8, 1 with --tiny; an estimate of what fits the default "
                        "budget on one H100/H200, not yet measured on a GPU]")
    p.add_argument("--ratio", type=float, default=2.0,
                   help="unlabeled/labeled ratio of the paper-scale semi-supervised runs [2.0, as in the README's "
                        "CPU comparison; 1.0 on the mini set]")
    p.add_argument("--device", default="cuda", help="cuda or cuda:N for the single-process steps [cuda]")
    p.add_argument("--nproc", type=int, default=0,
                   help="processes of the torchrun step [0 = auto: min(2, GPUs) on CUDA, 2 on the CPU]")
    p.add_argument("--bench-widths", default="0.5,1.0", help="camssl bench --widths [0.5,1.0]")
    p.add_argument("--bench-reps", type=int, default=10, help="camssl bench --reps [10]")
    p.add_argument("--steps", default=",".join(STEPS), help=f"steps to run, comma-separated [{','.join(STEPS)}]")
    # internal: one step's worker process
    p.add_argument("--worker", choices=["cam"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--width", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    return p


STEP_FUNCS: dict[str, Callable[[Ctx, float], StepResult]] = {
    "cam": step_cam, "amp": step_amp, "torchrun": step_torchrun, "bench": step_bench, "paper": step_paper,
}


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(given)
    if args.worker == "cam":
        return cam_worker(args.device, args.width, args.batch, args.json)
    started = time.time()
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad or not steps:
        print(f"error: --steps: unknown step(s) {', '.join(bad) or '(none)'}; choose from {', '.join(STEPS)}",
              file=sys.stderr)
        return 2
    if args.epochs < 1 or args.budget_s <= 0:
        print("error: --epochs must be >= 1 and --budget-s > 0", file=sys.stderr)
        return 2
    device = "cpu" if args.tiny else args.device
    if args.tiny:
        args.epochs = 1
        os.environ["OMP_NUM_THREADS"] = "1"
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if (SRC / "camssl").is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("MPLBACKEND", "Agg")
    machine = machine_info(device)
    runner = Runner(out, env, started + args.budget_s, lambda s: print(s, flush=True))
    ctx = Ctx(args, out, runner, device, machine)
    results: dict[str, StepResult] = {}
    argv_full = [sys.executable, str(Path(__file__).resolve()), *given]
    if device.startswith("cuda") and not machine.get("cuda_available"):
        print("error: CUDA is not available here; run on a CUDA machine, or use --tiny for the CPU smoke run",
              file=sys.stderr)
        for key in steps:
            results[key] = StepResult("FAIL", "not run: CUDA is not available")
        write_summary(ctx, results, started, argv_full, final=True)
        return 2
    print(f"gpu_check: {machine.get('gpu') or 'CPU (--tiny)'}; steps {', '.join(steps)}; "
          f"budget {args.budget_s:.0f} s; summary {_rel(out / 'gpu.md')}", flush=True)
    for i, key in enumerate(steps):
        left = runner.left()
        budget = share(left, [WEIGHTS[k] for k in steps[i:]])
        print(f"[{key}] {TITLES[key]}: up to {budget:.0f} s", flush=True)
        t0 = time.time()
        if budget < MIN_STEP_S:
            res = StepResult("FAIL", f"not run: its share of the wall budget is {budget:.0f} s ({left:.0f} s left); "
                                     "give a larger --budget-s")
        else:
            try:
                res = STEP_FUNCS[key](ctx, budget)
            except Exception as exc:  # noqa: BLE001 - a bug in one step must not stop the others
                tb = traceback.format_exc().strip().splitlines()
                res = StepResult("FAIL", f"the step itself raised {type(exc).__name__}: {exc}"[:300],
                                 ["```", *tb[-15:], "```", ""])
        res.seconds = time.time() - t0
        results[key] = res
        print(f"[{key}] {res.status}: {res.summary}", flush=True)
        write_summary(ctx, results, started, argv_full, final=False)
    path = write_summary(ctx, results, started, argv_full, final=True)
    failed = [k for k, r in results.items() if r.status == "FAIL"]
    print(f"{'FAIL: ' + ', '.join(failed) if failed else 'PASS'}; {time.time() - started:.0f} s; wrote {_rel(path)}",
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
