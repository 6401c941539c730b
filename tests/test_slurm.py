"""The Slurm launcher without a cluster: submitit's LocalExecutor runs the jobs as real local
processes through the same code as Slurm (the executor is the only difference): a tiny sweep
end to end with a killed run resumed and a failing run listed, a preempted job requeued and
resumed, no double submission, ``--status`` for both launchers, options and their errors, and
the sbatch script of a Slurm submission rendered without submitting."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("submitit")

from camssl import experiments as E
from camssl.cli import main
from camssl.config import dump_yaml
from camssl.errors import ConfigError, UserError
from camssl.experiments import slurm
from camssl.experiments.runner import train_command
from camssl.experiments.slurm_options import SlurmOptions, plan_with_launcher, slurm_options
from camssl.experiments.status import sweep_status
from camssl.train import train
from conftest import TINY_SPEC
from conftest import write_spec as spec_file

# one seed; 3 steps per epoch, so that a preemption signal finds the run still training
SPEC = TINY_SPEC.replace("seeds: 2", "seeds: 1").replace("batch_size: 50", "batch_size: 32")
IDS = ["baseline/supervised/s0", "r1.0/gradcam-layer3/s0", "r1.0/pseudo_label/s0"]


def write_spec(tmp_path: Path, text: str = SPEC) -> Path:
    return spec_file(tmp_path, text)


def wait_for(cond, timeout: float = 240.0, what: str = "") -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def states(out: Path) -> dict[str, tuple[str, str]]:
    return {rid: (state, detail) for rid, state, detail in sweep_status(out)}


class Stop(Exception):
    pass


def killed_after_epoch_1(run, run_dir: Path) -> None:
    def stop(msg: str) -> None:
        if msg.startswith("epoch   1/"):
            raise Stop

    with pytest.raises(Stop):
        train(run.config, run_dir, log=stop)


def broken(run, run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_yaml(run.config))
    (run_dir / "last.pt").write_bytes(b"not a checkpoint")


# ---------------------------------------------------------------- end to end through LocalExecutor


def test_local_executor_sweep_resumes_a_killed_run_lists_a_failure_and_never_submits_twice(tmp_path, capsys):
    spec = write_spec(tmp_path)
    out = tmp_path / "sweep"
    plan = E.plan_sweep(spec)
    runs = {r.id: r for r in plan.runs}
    killed = out / "r1.0/pseudo_label/s0"
    killed_after_epoch_1(runs["r1.0/pseudo_label/s0"], killed)
    first_epoch = json.loads((killed / "metrics.jsonl").read_text().splitlines()[0])
    broken(runs["baseline/supervised/s0"], out / "baseline/supervised/s0")

    lines: list[str] = []
    assert slurm.submit_sweep(plan, out, SlurmOptions(time=30), cluster="local", log=lines.append) == 0
    assert "3 runs (0 finished, 0 queued or running on Slurm, 3 to submit)" in lines[0]
    assert re.match(r"submitted 3 runs as job array \d+", lines[1])
    jobs = slurm.read_jobs(out)
    assert sorted(jobs) == IDS and {j["cluster"] for j in jobs.values()} == {"local"}

    # a second call while the jobs run submits nothing
    again: list[str] = []
    assert slurm.submit_sweep(plan, out, SlurmOptions(time=30), cluster="local", log=again.append) == 0
    assert "3 queued or running on Slurm, 0 to submit" in again[0] and "nothing to submit" in again[1]
    assert slurm.read_jobs(out) == jobs
    assert {s for s, _ in states(out).values()} <= {"running", "finished", "failed"}
    with pytest.raises(UserError, match=r"queued or running as Slurm jobs .*--launcher slurm"):
        slurm.refuse_if_active(out, IDS)  # what a local camssl sweep on the same directory meets

    wait_for(lambda: all(s in ("finished", "failed") for s, _ in states(out).values()), what="the jobs")
    assert main(["sweep", str(out), "--status"]) == 0
    text = capsys.readouterr().out
    assert "3 runs: 2 finished, 1 failed" in text
    assert re.search(r"r1.0/gradcam-layer3/s0 +finished +val [\d.]+% test [\d.]+%", text)
    assert re.search(r"baseline/supervised/s0 +failed +exit 2: error: cannot read checkpoint .*train.log\)", text)

    # the killed run continued after its first epoch, in the job
    records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[0] == first_epoch
    log = (killed / "train.log").read_text()
    assert re.search(r"=== camssl sweep .*: resuming after epoch 1 in job \d+: .* -m camssl train --resume ", log)
    assert "resumed from" in log

    # fixed, the failed run is resubmitted alone; the finished ones are skipped
    (out / "baseline/supervised/s0" / "last.pt").unlink()
    lines.clear()
    assert slurm.submit_sweep(plan, out, SlurmOptions(time=30), cluster="local", wait=True, log=lines.append) == 0
    text = "\n".join(lines)
    assert "3 runs (2 finished, 0 queued or running on Slurm, 1 to submit)" in text
    assert re.search(r"\[1/1\] baseline/supervised/s0 done: val [\d.]+% test [\d.]+%", text)
    assert slurm.read_jobs(out)["baseline/supervised/s0"]["attempts"] == 2
    sessions = json.loads((out / "sweep.json").read_text())["sessions"]
    assert [s["launcher"] for s in sessions] == ["slurm", "slurm"] and len(sessions[-1]["job_ids"]) == 1

    assert main(["table", str(out)]) == 0  # camssl table reads the result unchanged
    assert "3 of 3 runs finished" in capsys.readouterr().out
    assert "## Missing runs" not in (out / "results.md").read_text()


def test_a_preempted_job_is_requeued_and_its_run_resumes(tmp_path):
    spec = write_spec(tmp_path, SPEC.replace("epochs: 2", "epochs: 3"))
    out = tmp_path / "sweep"
    plan = E.plan_sweep(spec)
    slurm.submit_sweep(plan, out, SlurmOptions(time=30), only=["r1.0/pseudo_label/*"], cluster="local",
                       log=lambda s: None)
    run = out / "r1.0/pseudo_label/s0"
    job = slurm.read_jobs(out)["r1.0/pseudo_label/s0"]["job_id"]
    wait_for(lambda: (run / "last.pt").exists(), what="the first checkpoint")
    # Slurm's warning signal (USR2) reaches the job's process; the run itself does not die of it
    task = int(Path(f"/proc/{job}/task/{job}/children").read_text().split()[0])
    os.kill(task, signal.SIGUSR2)
    wait_for(lambda: states(out)["r1.0/pseudo_label/s0"][0] != "running", what="the requeued job")
    assert states(out)["r1.0/pseudo_label/s0"][0] == "finished"
    assert "this job is preempted" in (out / "slurm" / f"{job}_0_log.err").read_text()
    log = (run / "train.log").read_text()
    assert log.count("=== camssl sweep") == 2 and "resumed from" in log
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_status_of_a_local_sweep_while_it_runs_and_after(tmp_path):
    spec = write_spec(tmp_path, SPEC.replace(
        "    gradcam-layer3: {method.name: gradcam, method.gradcam.layers: [layer3], role: method}\n", ""))
    out = tmp_path / "sweep"
    plan = E.plan_sweep(spec)
    broken(plan.runs[0], out / plan.runs[0].id)  # baseline first: it fails while pseudo_label waits
    lines: list[str] = []
    worker = threading.Thread(target=E.run_sweep, args=(plan, out), kwargs={"jobs": 1, "log": lines.append})
    worker.start()
    try:
        wait_for(lambda: (out / "sweep.json").exists() and "running" in {s for s, _ in states(out).values()},
                 what="a running run")
        now = states(out)
        assert now["baseline/supervised/s0"] == ("running", "local sweep, from the start")
        assert now["r1.0/pseudo_label/s0"] == ("queued", "local sweep")
    finally:
        worker.join()
    after = states(out)
    assert after["baseline/supervised/s0"][0] == "failed"
    assert re.match(r"exit 2: error: cannot read checkpoint", after["baseline/supervised/s0"][1])
    assert after["r1.0/pseudo_label/s0"][0] == "finished"


# ---------------------------------------------------------------- recorded Slurm jobs (sacct)


def fake_slurm(tmp_path: Path, monkeypatch, sacct: str = "", sbatch: str = "echo 'Submitted batch job 4242'") -> Path:
    """srun, sbatch and sacct on PATH that answer like a cluster's; sbatch calls are logged in bin/sbatch.calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sacct.out").write_text("JobID|State|NodeList\n" + sacct)
    for name, body in (("srun", "exit 1"), ("sacct", f'cat "{bin_dir / "sacct.out"}"'),
                       ("sbatch", f'echo "$@" >> "{bin_dir / "sbatch.calls"}"\n{sbatch}')):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    if not os.environ["PATH"].startswith(str(bin_dir)):
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_slurm_submission_records_the_array_and_never_submits_a_queued_or_running_run_twice(
    tmp_path, monkeypatch, capsys
):
    spec = write_spec(tmp_path)
    out = tmp_path / "sweep"
    plan = E.plan_sweep(spec)
    path = os.environ["PATH"]
    bin_dir = fake_slurm(tmp_path, monkeypatch)
    lines: list[str] = []
    assert slurm.submit_sweep(plan, out, SlurmOptions(partition="gpu"), log=lines.append) == 0
    assert lines[1].startswith("submitted 3 runs as job array 4242 (4242_0 ... 4242_2)")
    assert {rid: j["job_id"] for rid, j in slurm.read_jobs(out).items()} == {
        rid: f"4242_{i}" for i, rid in enumerate(IDS)}
    script = (out / "slurm" / "4242_submission.sh").read_text()
    assert "#SBATCH --array=0-2%3" in script and "#SBATCH --partition=gpu" in script
    assert all((out / rid / "config.yaml").exists() for rid in IDS)  # prepared for camssl train --resume

    # the cluster runs them: one finished, one running, one waiting; a second call submits nothing
    (out / IDS[2] / "result.json").write_text(json.dumps({"val_acc": 0.5, "test_acc": 0.25}))
    fake_slurm(tmp_path, monkeypatch, "4242_0|PENDING|None assigned\n4242_1|RUNNING|gpu07\n"
               "4242_1.batch|RUNNING|gpu07\n4242_2|COMPLETED|gpu07\n")
    lines.clear()
    assert slurm.submit_sweep(plan, out, SlurmOptions(partition="gpu"), log=lines.append) == 0
    assert "3 runs (1 finished, 2 queued or running on Slurm, 0 to submit)" in lines[0]
    assert "nothing to submit" in lines[1]
    assert len((bin_dir / "sbatch.calls").read_text().splitlines()) == 1
    assert states(out) == {
        IDS[0]: ("queued", "slurm job 4242_0"),
        IDS[1]: ("running", "slurm job 4242_1, from the start"),
        IDS[2]: ("finished", "val 50.0% test 25.0%"),
    }
    assert main(["sweep", str(spec), "--out", str(out)]) == 2  # a local sweep on top of them is refused
    assert re.fullmatch(r"error: 2 run\(s\) of .* are queued or running as Slurm jobs \(4242_0 4242_1\);.*\n",
                        capsys.readouterr().err)

    # the jobs ended badly: listed with Slurm's word, and due for submission again
    fake_slurm(tmp_path, monkeypatch, "4242_0|OUT_OF_MEMORY|gpu03\n4242_1|CANCELLED by 1000|gpu07\n")
    got = states(out)
    assert got[IDS[0]][0] == "failed"
    assert re.match(r"job 4242_0 ended OUT_OF_MEMORY without a result \(log: .*4242_0_0_log.err\)", got[IDS[0]][1])
    assert got[IDS[1]][0] == "failed" and "ended CANCELLED" in got[IDS[1]][1]
    lines.clear()
    assert slurm.submit_sweep(plan, out, SlurmOptions(partition="gpu"), dry_run=True, log=lines.append) == 0
    text = "\n".join(lines)
    assert "(1 finished, 0 queued or running on Slurm, 2 to submit)" in text
    assert "#SBATCH --array=0-1%2" in text and "dry run: nothing was submitted or written" in text

    # sbatch refuses: one line with its reason
    fake_slurm(tmp_path, monkeypatch, "4242_0|FAILED|gpu03\n",
               sbatch="echo 'sbatch: error: invalid partition' >&2; exit 1")
    with pytest.raises(UserError, match=r"^sbatch refused the job array: sbatch: error: invalid partition; check") as e:
        slurm.submit_sweep(plan, out, SlurmOptions(partition="gpu"), log=lines.append)
    assert "\n" not in str(e.value)

    # where sacct cannot be asked, the status says so and a submission refuses to guess
    monkeypatch.setenv("PATH", path)
    assert states(out)[IDS[0]] == ("unknown", "slurm job 4242_0: no sacct here")
    with pytest.raises(UserError, match=r"cannot ask sacct whether the Slurm jobs recorded in .*slurm_jobs.json"):
        slurm.submit_sweep(plan, out, SlurmOptions(), log=lines.append)


# ---------------------------------------------------------------- options, the sbatch script, the command line


def test_sbatch_script_of_a_submission_without_submitting(tmp_path, monkeypatch):
    opts = slurm_options(
        {"partition": "gpu", "time": "2:30:00", "gpus_per_run": 1, "mem": "16G", "sbatch": {"account": "proj"}},
        {"gpus_per_run": "2", "cpus_per_run": "8", "mem": "32g", "array_parallelism": "3",
         "sbatch": ["qos=high", "--exclusive"], "setup": ["module load cuda/12.4"]},
    )
    assert (opts.time, opts.gpus_per_run, opts.mem) == (150, 2, "32G")  # the command line wins
    assert opts.sbatch == {"account": "proj", "qos": "high", "exclusive": True}
    script = slurm.render_sbatch(opts, tmp_path / "sw", 48)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=150", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G", "#SBATCH --account=proj", "#SBATCH --qos=high",
                 "#SBATCH --exclusive", "#SBATCH --array=0-47%3", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --signal=USR2@90", "#SBATCH --job-name=camssl-sw", "module load cuda/12.4"):
        assert line in script.splitlines(), line
    assert f"-m submitit.core._submit {tmp_path / 'sw' / 'slurm'}" in script

    # the same text as submitit's SlurmExecutor writes for the array (srun is all it lacks here)
    import submitit

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    ex = slurm.make_executor("slurm", tmp_path / "sw", opts)
    ex.parameters["map_count"] = 48
    assert ex._make_submission_file_text(ex._submitit_command_str, "uid") == script

    # what each job runs: the local runner's command, under torchrun for several GPUs
    run_dir = tmp_path / "sw" / "r0.5" / "gradcam-layer3" / "s0"
    assert train_command(run_dir) == [sys.executable, "-m", "camssl", "train", "--resume", str(run_dir)]
    assert train_command(run_dir, gpus=2) == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                              "--nproc-per-node=2", "-m", "camssl", "train", "--resume", str(run_dir)]


def test_launcher_section_of_the_spec_and_its_errors(tmp_path, capsys):
    spec = write_spec(tmp_path, SPEC + "launcher: {partition: gpu, time: 60, sbatch: {account: proj}}\n")
    plan, section = plan_with_launcher(spec, ["optim.lr=0.05"])
    assert plan.spec == spec and [r.id for r in plan.runs] == IDS and plan.runs[0].config.optim.lr == 0.05
    assert slurm_options(section, {"time": "90"}) == SlurmOptions(partition="gpu", time=90, sbatch={"account": "proj"})

    out = tmp_path / "sw"
    assert main(["sweep", str(spec), "--out", str(out), "--launcher", "slurm", "--gpus-per-run", "1", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --gpus-per-node=1" in text and "#SBATCH --time=60" in text
    assert not out.exists()

    for section_text, cli, message in [
        ("launcher: {partiton: gpu}", [], r"unknown key launcher.partiton in .*; valid keys in launcher: partition"),
        ("launcher: {time: '4:00'}", [], r"launcher.time='4:00' is invalid: give minutes \(240\) or hours:"),
        ("launcher: {mem: 32}", [], r"launcher.mem=32 is invalid: give an amount with a unit, e.g. 32G"),
        ("launcher: {sbatch: {partition: x}}", [], r"launcher.sbatch: --partition is set by camssl; use --partition"),
        ("launcher: []", [], r"launcher in .* must be a mapping"),
        ("", ["--gpus-per-run", "-1"], r"--gpus-per-run -1 is invalid: give a whole number >= 0"),
        ("", ["--sbatch", "array=0-3"], r"--sbatch: --array is set by camssl; use --array-parallelism"),
        ("", ["--array-parallelism", "0"], r"--array-parallelism 0 is invalid"),
    ]:
        spec = write_spec(tmp_path, SPEC + section_text + "\n")
        assert main(["sweep", str(spec), "--out", str(out), "--launcher", "slurm", "--dry-run", *cli]) == 2
        err = capsys.readouterr().err
        assert re.fullmatch(r"error: [^\n]+\n", err) and re.search(message, err), (section_text, cli, err)

    spec = write_spec(tmp_path)
    for argv, message in [
        (["--partition", "gpu"], r"--partition applies to --launcher slurm; add --launcher slurm or drop"),
        (["--launcher", "slurm", "--jobs", "2"], r"with --launcher slurm use --array-parallelism"),
        (["--launcher", "slurm"], r"srun is not on PATH: --launcher slurm submits from a Slurm login node"),
    ]:
        assert main(["sweep", str(spec), "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err
        assert re.fullmatch(r"error: [^\n]+\n", err) and re.search(message, err), (argv, err)
    assert not any((out / rid).exists() for rid in IDS)  # nothing was prepared before the failed submission
    assert main(["sweep", str(tmp_path / "nothing"), "--status"]) == 2
    assert "holds no sweep.json" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"launcher.time=0 is invalid"):
        slurm_options({"time": 0}, {})


@pytest.mark.slow
def test_two_gpus_per_run_run_torchrun_inside_the_job(tmp_path):
    """gpus_per_run=2 on a machine without GPUs: torchrun's two ranks train on the CPU (gloo)."""
    spec = write_spec(tmp_path)
    out = tmp_path / "sweep"
    lines: list[str] = []
    assert slurm.submit_sweep(E.plan_sweep(spec), out, SlurmOptions(time=30, gpus_per_run=2), cluster="local",
                              only=["r1.0/pseudo_label/*"], wait=True, log=lines.append) == 0, lines
    log = (out / "r1.0/pseudo_label/s0/train.log").read_text()
    assert "-m torch.distributed.run --standalone --nproc-per-node=2 -m camssl train --resume" in log
    assert json.loads((out / "r1.0/pseudo_label/s0/result.json").read_text())["epochs"] == 2
