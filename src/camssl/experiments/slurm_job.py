"""What a sweep's Slurm job runs: one run, as ``camssl train --resume RUN_DIR``, requeued on preemption.

Imported only where submitit is installed (by :mod:`.slurm` when it submits, and by the
job itself when submitit unpickles it on the node).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import submitit

from camssl.experiments.runner import failure_reason, open_log, progress, read_result, run_env, train_command
from camssl.machine import usable_cores

STOP_GRACE_S = 45.0  # a stopped run gets this long to exit before SIGKILL (submitit's warning comes 90 s ahead)


class RunFailed(Exception):
    """A run ended without a result; the message is the local runner's one-line reason."""


def _shield() -> None:
    """In the training process, before exec: leave the job's SIGTERM and warning signal to the job.

    Slurm signals every process of a job that it preempts or that reaches its time limit;
    submitit's handler in the job then stops the run (SIGINT) and requeues the job, so the
    run must not die first and look like a failure. The run dies with the job process.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(submitit.JobEnvironment._usr_sig(), signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # camssl train turns it into a clean stop
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)


class TrainJob(submitit.helpers.Checkpointable):
    """Run (or continue) the prepared run in ``run_dir``; requeued by submitit at a preemption or the time limit.

    The run's checkpoint is its own last.pt, so the requeued job is this same callable:
    it starts ``camssl train --resume`` again, which continues after the last finished epoch.
    """

    def __init__(self, run_dir: str, gpus: int = 0) -> None:
        self.run_dir = run_dir
        self.gpus = gpus
        self._proc: subprocess.Popen[bytes] | None = None

    def __call__(self) -> dict[str, Any]:
        run_dir = Path(self.run_dir)
        result = read_result(run_dir)
        if result is None:
            result = self._train(run_dir)
        return {k: result.get(k) for k in ("val_acc", "test_acc", "epochs", "wall_time_s")}

    def _train(self, run_dir: Path) -> dict[str, Any]:
        cmd = train_command(run_dir, self.gpus)
        so_far = progress(run_dir)
        how = "new run" if so_far == "from the start" else f"resuming {so_far}"
        try:
            job = submitit.JobEnvironment().job_id
        except (KeyError, RuntimeError):  # called outside a submitit job
            job = "?"
        logf, offset = open_log(run_dir, f"{how} in job {job}", cmd)
        try:
            self._proc = subprocess.Popen(
                cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=run_env(max(1, usable_cores() // max(1, self.gpus))), start_new_session=True, preexec_fn=_shield,
            )
        finally:
            logf.close()
        while (rc := self._proc.poll()) is None:
            time.sleep(1.0)  # a poll loop, not wait(): submitit's signal handler may stop the run meanwhile
        self._proc = None
        result = read_result(run_dir)
        if rc == 0 and result is not None:
            return result
        reason = failure_reason(run_dir / "train.log", offset, rc) if rc else "finished without result.json"
        raise RunFailed(f"{reason} (log: {run_dir / 'train.log'})")

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Stop the run (it keeps its last finished epoch) and requeue this job."""
        self._stop()
        return super().checkpoint(*args, **kwargs)

    def _stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)  # camssl train (and torchrun) stop on an interrupt
        deadline = time.time() + STOP_GRACE_S
        while proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_proc"] = None  # a process does not travel with the requeued job
        return state

