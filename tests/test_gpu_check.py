"""scripts/gpu_check.py: its CPU mode (--tiny) runs every step, and the summary says what was measured.

The script is what a user with a CUDA machine runs for the first GPU run (issue 16); no
test here has a GPU, so this checks that every step still starts, finishes and is
reported — Grad-CAM against captum in float32 and under bf16 autocast (CPU autocast),
one epoch of every registered method, a 2-process gloo torchrun, camssl bench --quick and
the three paper-scale runs — by reading the numbers back out of OUT/gpu.md.

That tiny run is the script's ``main`` in this process, with a runner that runs each
``python -m camssl ...`` command (and the Grad-CAM worker) in this process too, where the
script would start a subprocess: 25 start-ups of torch saved. The torchrun step still
launches its 2 real processes, and a second, failing run of the real script (missing
data) checks the subprocess runner: a failure is recorded with its error and gives a
non-zero exit status. The CUDA-only branches (which commands a GPU run builds) are
checked without a GPU through a runner that only records the commands.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import yaml

from conftest import ONE_THREAD, SCRIPTS, process_settings_kept

SCRIPT = SCRIPTS / "gpu_check.py"
STEP_TITLES = ["Grad-CAM against captum", "One epoch of every method under AMP", "torchrun", "camssl bench",
               "Paper-scale comparison"]


def run_script(*args: str, timeout: int = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=ONE_THREAD)


def section(md: str, number: int) -> str:
    """The text of '## N. ...' up to the next '## '."""
    match = re.search(rf"^## {number}\. .*?(?=^## |\Z)", md, flags=re.M | re.S)
    assert match, f"section {number} missing"
    return match.group(0)


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table in ``text`` as a list of rows (header -> cell)."""
    out: list[list[dict[str, str]]] = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            out.append([])
        elif not set(line) <= set("|-: "):
            out[-1].append(dict(zip(header, cells)))
    return out


def number(cell: str) -> float:
    match = re.search(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", cell)
    assert match, f"no number in {cell!r}"
    return float(match.group(0))


def builtin_methods() -> list[str]:
    """The methods camssl itself registers (not those a test or the README example adds to the registry)."""
    from camssl.methods import METHODS

    return sorted(n for n, m in METHODS.items() if m.__module__.startswith("camssl.methods."))


def in_process_runner(mod):
    """The script's Runner, running ``python -m camssl ...`` and the script's own workers in this process."""
    from camssl.cli import main as camssl_main

    class InProcess(mod.Runner):
        def run(self, name, argv, timeout):
            argv = list(argv)
            if argv[:3] == [sys.executable, "-m", "camssl"]:
                call = lambda: camssl_main(argv[3:])  # noqa: E731
            elif argv[:2] == [sys.executable, str(SCRIPT)]:
                call = lambda: mod.main(argv[2:])  # noqa: E731
            else:
                return super().run(name, argv, timeout)  # torchrun: real processes
            out, err = self.logs / f"{name}.out", self.logs / f"{name}.err"
            self.log(f"  $ {mod.shown(argv)}   (in the test process)")
            t0 = time.time()
            with open(out, "w") as fo, open(err, "w") as fe, process_settings_kept(), \
                    contextlib.redirect_stdout(fo), contextlib.redirect_stderr(fe):
                try:
                    rc = call()
                except SystemExit as e:
                    rc = e.code if isinstance(e.code, int) else 1
                except Exception:  # noqa: BLE001 - recorded like a crashed subprocess
                    fe.write(traceback.format_exc())
                    rc = 1
            return mod.Ran(name, mod.shown(argv), rc, time.time() - t0, False, out, err, timeout)

    return InProcess


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, str]:
    from camssl.methods import METHODS

    out = tmp_path_factory.mktemp("gpu_check")
    mod = load_script()
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mod, "Runner", in_process_runner(mod))
        mp.setenv("OMP_NUM_THREADS", "1")  # main() sets it for --tiny
        for name in set(METHODS) - set(builtin_methods()):
            mp.delitem(METHODS, name)  # the script counts the registry: only what camssl registers
        with contextlib.redirect_stdout(printed):
            rc = mod.main(["--tiny", "--out", str(out)])
    summary = out / "gpu.md"
    assert summary.exists(), printed.getvalue()[-3000:]
    return rc, out, summary.read_text()


@pytest.mark.slow
def test_tiny_run_passes_every_step(tiny) -> None:
    rc, out, md = tiny
    assert rc == 0, md[-4000:] + "".join(p.read_text()[-1000:] for p in (out / "logs").glob("*.err"))
    assert "Overall: **PASS** — 5 of 5 steps passed." in md
    assert "No GPU was used" in md and "--tiny" in md
    overview = tables(md.split("## Steps", 1)[1].split("\n## ", 1)[0])[0]
    assert [r["step"] for r in overview] == [f"{i}. {t}" for i, t in enumerate(
        ["Grad-CAM against captum", "One epoch of every method under AMP", "torchrun", "camssl bench",
         "Paper-scale comparison (cpu preset protocol, full width)"], 1)]
    assert all(r["status"] == "PASS" for r in overview), overview
    for i, title in enumerate(STEP_TITLES, 1):
        body = section(md, i)
        assert title in body.splitlines()[0] and "— PASS (" in body.splitlines()[0]
        assert "Commands:" in body and "# ok," in body  # every command with its outcome and time
    assert "torch 2." in md and "CPU:" in md


@pytest.mark.slow
def test_cam_check_numbers(tiny) -> None:
    _, out, md = tiny
    rows = tables(section(md, 1))[0]
    layers = ["layer1", "layer2", "layer3", "layer4", "layer4 (autograd)"]
    seen = {(r["precision"], r["model mode"], r["layer"]) for r in rows}
    assert seen == {(p, m, layer) for p in ("fp32", "bf16") for m in ("eval", "train") for layer in layers}
    for r in rows:
        assert r["status"] == "PASS", r
        measured, tol = number(r["measured"]), number(r["tolerance"])
        assert tol == (1e-5 if r["precision"] == "fp32" else 5e-2)
        assert measured <= tol
        if r["precision"] == "fp32" and r["model mode"] == "eval":
            assert number(r["accuracy"]) <= 1e-3  # against float64 (train mode: measured, not checked)
    report = json.loads((out / "cam.json").read_text())  # the worker's raw numbers, same rows
    assert len(report["rows"]) == len(rows) and all(r["ok"] for r in report["rows"])
    assert "fp16 autocast is checked on CUDA only" in section(md, 1)


def _amp_dtype_selectable() -> bool:
    from camssl.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["config"]) == 0
    return "amp_dtype" in (yaml.safe_load(buf.getvalue()) or {})


@pytest.mark.slow
def test_amp_step_rows(tiny) -> None:
    _, out, md = tiny
    rows = tables(section(md, 2))[0]
    # every registered method, gradcam in both gradient modes, a method with a teacher last (it distils the
    # supervised run of its precision)
    names = builtin_methods()
    assert {"supervised", "pseudo_label", "gradcam", "fixmatch", "vat", "lga", "cam_loss", "cam_kd"} <= set(names)
    methods = [m for n in names if n != "cam_kd"
               for m in ((["gradcam@layer3/full", "gradcam@layer3/detach-weights"]) if n == "gradcam" else [n])]
    methods += ["fixmatch@airnet", "cam_kd"]  # the fast regime's network, then the method with a teacher
    ran = [r for r in rows if r["status"] != "SKIP"]
    assert [r["method"] for r in ran[:len(methods)]] == methods
    for r in ran:
        assert r["status"] == "PASS", r
        assert number(r["last loss"]) > 0 and number(r["images / s"]) > 0
    # on the CPU the tiny run trains every method once, with amp=true (bf16 where native, else fp32)
    assert not [r for r in rows if r["status"] == "SKIP"] and [r["method"] for r in ran] == methods
    commands = section(md, 2).split("Commands:", 1)[1]
    for method in ("supervised", "pseudo_label"):
        line = next(ln for ln in commands.splitlines() if f"--method {method} " in ln)
        assert " method." not in line  # gradcam-only keys
    kd = next(ln for ln in commands.splitlines() if "--method cam_kd " in ln)
    assert "--teacher " in kd and "amp-amp-supervised" in kd
    assert (out / "runs" / "amp-amp-gradcam-layer3-detach-weights" / "result.json").exists()
    assert (out / "runs" / "amp-amp-cam_kd" / "result.json").exists()


@pytest.mark.slow
def test_torchrun_step(tiny) -> None:
    _, _, md = tiny
    body = section(md, 3)
    (row,) = tables(body)[0]
    assert row["processes"] == "2" and row["backend"] == "gloo" and row["world size (result.json)"] == "2"
    assert row["status"] == "PASS" and number(row["test accuracy"]) >= 0
    assert "-m torch.distributed.run --standalone --nproc-per-node 2 -m camssl train" in body


@pytest.mark.slow
def test_bench_step(tiny) -> None:
    _, out, md = tiny
    body = section(md, 4)
    rows = {r["step"]: r for r in tables(body)[0]}
    assert "ResNet-18 width 0.125:" in body
    assert number(rows["pseudo_label"]["× pseudo_label"]) == 1.0
    for step in ("supervised", "pseudo_label", "gradcam @ layer3 full", "gradcam @ layer3 detach-weights"):
        assert number(rows[step]["ms / step"]) > 0 and number(rows[step]["images / s"]) > 0
    assert (out / "bench.md").exists() and "camssl bench --quick" in body


@pytest.mark.slow
def test_paper_step(tiny) -> None:
    _, out, md = tiny
    body = section(md, 5)
    rows = tables(body)[0]
    assert [r["method"] for r in rows] == ["supervised", "pseudo_label", "gradcam@layer3"]
    for r in rows:
        assert r["status"] == "PASS" and r["epochs"] == "1"
        assert 0 <= number(r["test (final)"]) <= 100 and number(r["images / s"]) > 0
    for name in ("supervised", "pseudo_label", "gradcam-layer3"):
        result = json.loads((out / "runs" / f"paper-{name}" / "result.json").read_text())
        assert f"{100 * result['test_acc']:.2f}%" in body
    assert "--config cpu --data mini" in body and "smoke test" in body


def test_a_failing_step_is_recorded_and_fails_the_run(tmp_path: Path) -> None:
    proc = run_script("--tiny", "--steps", "paper", "--data", str(tmp_path / "no-such-data"), "--out",
                      str(tmp_path / "out"), timeout=200)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    md = (tmp_path / "out" / "gpu.md").read_text()
    assert "Overall: **FAIL** (paper)" in md
    body = section(md, 5)
    assert body.splitlines()[0].endswith(")") and "— FAIL (" in body.splitlines()[0]
    assert "does not exist" in body  # the last lines of the failing command's stderr
    assert body.count("**FAIL**") >= 3  # each of the three runs, each run still attempted


# ---------------------------------------------------------------- the CUDA branches, without a GPU


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def fake_gpu_ctx(mod, tmp_path: Path, argv: list[str]):
    """A Ctx for one CUDA GPU whose runner records commands and writes what a finished run writes."""

    class FakeRunner(mod.Runner):
        def __init__(self) -> None:
            super().__init__(tmp_path, {}, float("inf"), lambda s: None)
            self.argvs: list[list[str]] = []

        def run(self, name, argv, timeout):
            argv = list(argv)
            self.argvs.append(argv)
            out, err = self.logs / f"{name}.out", self.logs / f"{name}.err"
            err.write_text("")
            nproc = int(argv[argv.index("--nproc-per-node") + 1]) if "--nproc-per-node" in argv else 1
            out.write_text(f"model: ... x {nproc} processes (nccl); ...\n" if nproc > 1 else "model: ...\n")
            if "--out" in argv and "train" in argv:
                run_dir = Path(argv[argv.index("--out") + 1])
                run_dir.mkdir(parents=True, exist_ok=True)
                metrics = {"epoch": 1, "loss": 1.5, "epoch_time_s": 2.0}
                (run_dir / "metrics.jsonl").write_text(json.dumps(metrics) + "\n")
                (run_dir / "result.json").write_text(json.dumps(
                    {"test_acc": 0.61, "best_val_acc": 0.6, "best_val_epoch": 1, "test_acc_at_best_val": 0.6,
                     "images_per_s": 5000.0, "epochs": 1, "world_size": nproc}))
            return mod.Ran(name, mod.shown(argv), 0, 1.0, False, out, err, timeout)

    args = mod.build_parser().parse_args(["--out", str(tmp_path), *argv])
    machine = {"gpu": "Fake GPU", "gpu_count": 1, "capability": "9.0", "gpu_memory_gib": 139.0, "cudnn": 90100,
               "bf16_supported": True, "bf16_native": True, "torch": "2.x", "cuda_build": "12.x",
               "cuda_available": True}
    return mod.Ctx(args, tmp_path, FakeRunner(), "cuda", machine)


def test_gpu_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from camssl.methods import METHODS

    mod = load_script()
    ctx = fake_gpu_ctx(mod, tmp_path, ["--data", "cifar.tar.gz"])

    # amp without an amp_dtype field: one bf16 run per method (amp=true picks bf16), fp16 recorded as not selectable
    for name in set(METHODS) - set(builtin_methods()):
        monkeypatch.delitem(METHODS, name)
    n = len(builtin_methods()) + 2  # gradcam in both gradient modes, and fixmatch on airnet
    monkeypatch.setattr(mod, "config_fields", lambda c: ({"amp", "device"}, mod.Ran(
        "config", "camssl config", 0, 0.1, False, tmp_path / "c.out", tmp_path / "c.err", 0)))
    res = mod.step_amp(ctx, 400)
    assert res.status == "PASS" and "fp16 not selectable" in res.summary
    trains = ctx.runner.argvs
    assert len(trains) == n and all("device=cuda" in a and "amp=true" in a and "model.width=1.0" in a for a in trains)
    assert not any("amp_dtype" in x for a in trains for x in a)
    by_method = {}
    for a in trains:
        by_method.setdefault(a[a.index("--method") + 1], []).append(a)
    assert set(by_method) == set(builtin_methods()) and len(by_method["gradcam"]) == 2
    for name, argvs in by_method.items():
        if name != "gradcam":
            assert not any(x.startswith("method.") for a in argvs for x in a), name  # gradcam-only keys
    assert ["method.gradcam.grad_mode=full" in a for a in by_method["gradcam"]] == [True, False]
    assert "method.gradcam.grad_mode=detach-weights" in by_method["gradcam"][1]
    (kd,) = by_method["cam_kd"]  # the teacher: the supervised run just before it, kept
    assert trains[-1] is kd and kd[kd.index("--teacher") + 1] == mod._rel(tmp_path / "runs" / "amp-amp-supervised")

    # ... and with the field: bf16 and fp16 forced, two runs per method
    ctx.runner.argvs.clear()
    monkeypatch.setattr(mod, "config_fields", lambda c: ({"amp", "amp_dtype"}, mod.Ran(
        "config", "camssl config", 0, 0.1, False, tmp_path / "c.out", tmp_path / "c.err", 0)))
    res = mod.step_amp(ctx, 400)
    assert res.status == "PASS" and len(ctx.runner.argvs) == 2 * n
    assert sum("amp_dtype=fp16" in a for a in ctx.runner.argvs) == n

    # torchrun on one GPU: 1 process, device=cuda (cuda:LOCAL_RANK), no process group and it says so
    ctx.runner.argvs.clear()
    res = mod.step_torchrun(ctx, 100)
    (argv,) = ctx.runner.argvs
    assert argv[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m"]
    assert "device=cuda" in argv and res.status == "PASS" and "NCCL/DDP are not exercised" in res.summary
    ctx.machine["gpu_count"] = 2
    res = mod.step_torchrun(ctx, 100)
    assert "--nproc-per-node" in ctx.runner.argvs[-1] and "2" in ctx.runner.argvs[-1]
    assert res.status == "PASS" and "nccl process group" in res.summary

    # bench: bounded sizes on the device, the report into OUT
    ctx.runner.argvs.clear()
    mod.step_bench(ctx, 100)
    (argv,) = ctx.runner.argvs
    assert argv[4:] == ["--widths", "0.5,1.0", "--reps", "10", "--warmup", "2", "--layers",
                        "layer1,layer2,layer3,layer4", "--no-experiments", "--device", "cuda", "--out",
                        mod._rel(tmp_path / "bench.md")]

    # paper: the cpu preset on the given data at full width, --ratio and --layer only where they belong
    ctx.runner.argvs.clear()
    res = mod.step_paper(ctx, 400)
    sup, pl, gc = ctx.runner.argvs
    for a in (sup, pl, gc):
        assert a[3:8] == ["train", "--config", "cpu", "--data", "cifar.tar.gz"]
        assert "model.width=1.0" in a and a[a.index("--epochs") + 1] == "8" and "device=cuda" in a
    assert "--ratio" not in sup and pl[pl.index("--ratio") + 1] == "2.0" and "--layer" not in pl
    assert gc[gc.index("--layer") + 1] == "layer3"
    assert res.status == "PASS" and "61.00%" in "\n".join(res.lines)

    md = mod.render(ctx, {"paper": res}, 0.0, ["python", "scripts/gpu_check.py"], final=True)
    assert "GPU: **Fake GPU**" in md and "`amp=true` trains in bf16" in md


def test_paper_step_without_data_says_mini(tmp_path: Path) -> None:
    mod = load_script()
    ctx = fake_gpu_ctx(mod, tmp_path, [])
    res = mod.step_paper(ctx, 400)
    assert "no --data: the embedded mini CIFAR-10 set" in res.lines[0]
    for a in ctx.runner.argvs:
        assert a[a.index("--data") + 1] == "mini" and a[a.index("--labeled") + 1] == "1000"
