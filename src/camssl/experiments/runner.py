"""Running a planned sweep: one subprocess per run, finished runs skipped, killed ones resumed.

What a run needs wherever it runs (its state, its directory prepared, its command, its
log, the reason it failed, the sweep's lock and record) is shared with the Slurm
launcher (:mod:`.slurm`).
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from camssl import io
from camssl.config import RESULT_NEUTRAL_KEYS, TrainConfig, config_differences, dump_yaml, from_dict, read_yaml, to_dict
from camssl.errors import ConfigError, DataError, UserError
import camssl.experiments.archive as archive
from camssl.experiments.spec import Plan, Run
from camssl.machine import cpu_name, usable_cores
from camssl.text import fmt_pct

def run_state(run_dir: Path, cfg: TrainConfig, archived: Path | None = None) -> tuple[str, str]:
    """("done" | "archived" | "resume" | "new" | "conflict", detail) of a planned run's directory.

    "archived": not finished in the sweep directory, but in ``archived`` (the run's directory
    in an archive, :mod:`.archive`).
    """
    if archived is not None and not (run_dir / "result.json").exists() and archive.is_archived(archived, cfg):
        return "archived", ""
    if not (run_dir / "config.yaml").exists():
        if run_dir.exists() and any(run_dir.iterdir()):
            return "conflict", f"'{run_dir}' holds files but no run (no config.yaml); move them away"
        return "new", ""
    try:
        saved = from_dict(TrainConfig, read_yaml(run_dir / "config.yaml"))
    except ConfigError as e:
        return "conflict", f"its config.yaml is unreadable ({e})"
    diff = config_differences(to_dict(saved), to_dict(cfg), ignore=RESULT_NEUTRAL_KEYS)
    if diff:
        key, there, planned = diff[0]
        return "conflict", (
            f"'{run_dir}' holds a run with another config ({key}={there!r} there, {planned!r} in the plan); "
            "give the same spec and overrides as when it started, or use another --out"
        )
    if (run_dir / "result.json").exists():
        return "done", ""
    return "resume", progress(run_dir)


def progress(run_dir: Path) -> str:
    """How far an unfinished run got: "after epoch N" (its last checkpoint) or "from the start"."""
    epochs = len(io.read_jsonl(run_dir / "metrics.jsonl")) if (run_dir / "last.pt").exists() else 0
    return f"after epoch {epochs}" if epochs else "from the start"


def prepare_run(run_dir: Path, run: Run, state: str) -> None:
    """Write a new run's config.yaml; its directory then holds a run that ``--resume`` starts."""
    if state == "new":
        run_dir.mkdir(parents=True, exist_ok=True)
        io.write_text(run_dir / "config.yaml", dump_yaml(run.config))


def train_command(run_dir: Path, gpus: int = 0) -> list[str]:
    """``python -m camssl train --resume RUN_DIR`` of a prepared run; under torchrun for several GPUs."""
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}"] if gpus > 1 else []
    return [sys.executable, *launch, "-m", "camssl", "train", "--resume", str(run_dir)]


def run_env(threads: int) -> dict[str, str]:
    """The environment of a run's process: ``threads`` CPU threads, unbuffered output."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")


def open_log(run_dir: Path, how: str, cmd: Sequence[str]) -> tuple[BinaryIO, int]:
    """RUN_DIR/train.log opened for appending, after a header line; (file, offset of this attempt)."""
    logf = open(run_dir / "train.log", "ab")  # noqa: SIM115 - the caller closes it
    offset = logf.tell()
    logf.write(f"=== camssl sweep {time.strftime('%Y-%m-%d %H:%M:%S')}: {how}: {shlex.join(cmd)}\n".encode())
    logf.flush()
    return logf, offset


def read_result(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None


def brief(result: dict[str, Any] | None) -> str:
    if not result:
        return "no result"
    return f"val {fmt_pct(result.get('val_acc'), 1)} test {fmt_pct(result.get('test_acc'), 1)}"


def failure_reason(log_path: Path, offset: int, rc: int) -> str:
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        text = ""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    msg = next((l for l in reversed(lines) if l.startswith("error:")), None)
    if msg is None:
        msg = next((l for l in reversed(lines) if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b", l)), None)
    if msg is None:
        msg = lines[-1] if lines else "no output"
    if rc < 0:
        try:
            how = f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            how = f"killed by signal {-rc}"
    else:
        how = f"exit {rc}"
    msg = msg if len(msg) <= 400 else msg[:397] + "..."
    return f"{how}: {msg}"


@dataclass
class _Active:
    run: Run
    proc: subprocess.Popen[bytes]
    log_offset: int
    started: float
    resumed: str


def run_sweep(
    plan: Plan,
    out: str | Path,
    *,
    jobs: int = 1,
    only: Sequence[str] = (),
    dry_run: bool = False,
    command: str = "",
    log: Callable[[str], None] = print,
    archive: str | Path | None = None,
) -> int:
    """Run (or continue) a planned sweep; returns the number of failed runs.

    Finished runs (result.json) are skipped, unfinished ones resumed from their last
    checkpoint, new ones started; at most ``jobs`` subprocesses at once, each with
    ``max(1, cores // jobs)`` threads. A failing run does not stop the others. ``archive``
    (:mod:`.archive`): finished runs' small files are copied there, and a run archived
    there with the same config is skipped.
    """
    out = Path(out)
    if jobs < 1:
        raise UserError(f"--jobs {jobs} is invalid: run at least 1 at a time")
    runs = select_runs(plan, only)
    threads = max(1, usable_cores() // jobs)
    archive_dir = Path(archive) if archive is not None else None
    states = {r.id: run_state(out / r.id, r.config, archive_dir / r.id if archive_dir else None) for r in runs}
    counts = {k: sum(1 for s, _ in states.values() if s == k) for k in ("done", "archived", "resume", "new", "conflict")}
    total = len(runs)
    log(
        f"sweep {out}: {total} runs ({counts['done']} finished, "
        + (f"{counts['archived']} archived in {archive_dir}, " if archive_dir is not None else "")
        + f"{counts['resume']} to resume, {counts['new']} new"
        + (f", {counts['conflict']} in conflict" if counts["conflict"] else "")
        + f"); {jobs} at a time, {threads} thread{'s' if threads > 1 else ''} each"
    )
    if dry_run:
        for r in runs:
            state, detail = states[r.id]
            log(f"  {r.id:<34} {state}{' ' + detail if detail else ''}")
        log("dry run: nothing was started or written")
        return 0

    lock = lock_sweep(out)  # held (and inherited by the runs) until the sweep ends
    try:
        return _execute(plan, out, runs, states, jobs, threads, lock.fileno(), command, log, archive_dir)
    finally:
        lock.close()


def select_runs(plan: Plan, only: Sequence[str]) -> list[Run]:
    """The plan's runs whose id matches one of the ``--only`` globs (all without), their data checked."""
    runs = [r for r in plan.runs if not only or any(fnmatch.fnmatch(r.id, p) for p in only)]
    if not runs:
        raise UserError(
            f"--only {' '.join(only)} matches none of the {len(plan.runs)} runs (ids look like r0.5/pseudo_label/s0)"
        )
    _check_sources(runs)
    return runs


def lock_sweep(out: Path) -> IO[str]:
    """Take the sweep directory's lock (held while the returned file is open), or fail if it is busy."""
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / ".sweep.lock", "w")  # noqa: SIM115 - closed by the caller
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UserError(
            f"another camssl sweep is working in '{out}' (or runs it started are still finishing); "
            "wait for it or stop it first"
        ) from None
    return lock


def sweep_busy(out: Path) -> bool:
    """Whether a local ``camssl sweep`` (or a run it started) holds the directory's lock now."""
    try:
        with open(out / ".sweep.lock") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    return False


def _check_sources(runs: Sequence[Run]) -> None:
    """Fail before anything starts when a run's data is missing (else every run would fail)."""
    for key in ("source", "test_source"):
        for src in sorted({getattr(r.config.data, key) for r in runs} - {None, "mini"}):
            if not Path(src).expanduser().exists():
                raise DataError(
                    f"data.{key} '{src}' does not exist; point the sweep at the data, e.g. "
                    f"camssl sweep SPEC --out DIR data.{key}=/path/to/cifar10"
                )


def session_record(out: Path, plan: Plan, command: str, **fields: Any) -> dict[str, Any]:
    """sweep.json: the plan and the sessions that worked on it, this one last (with ``fields``)."""
    previous = []
    try:
        previous = json.loads((out / "sweep.json").read_text()).get("sessions", [])
    except (OSError, ValueError, AttributeError):
        pass
    session = {
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "started_at": round(time.time(), 1),
        **fields,
        "host": platform.node(),
        "machine": f"{cpu_name()}, {usable_cores()} cores available, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    return {**plan.record(), "sessions": [*previous, session]}


class _LocalSweep:
    """One session of a local sweep: a queue of runs, at most ``jobs`` subprocesses at once, the record kept."""

    def __init__(self, plan: Plan, out: Path, runs: list[Run], states: dict[str, tuple[str, str]], jobs: int,
                 threads: int, lock_fd: int, command: str, log: Callable[[str], None], archive: Path | None) -> None:
        self.out, self.states, self.jobs, self.lock_fd, self.log, self.archive = out, states, jobs, lock_fd, log, archive
        self.record = session_record(out, plan, command, launcher="local", jobs=jobs, threads_per_run=threads)
        self.session = self.record["sessions"][-1]
        self.env = run_env(threads)
        self.total, self.done, self.ran, self.finished, self.skipped = len(runs), 0, 0, 0, 0
        self.failures: list[tuple[str, str]] = []
        self.active: list[_Active] = []
        self.queue: list[Run] = []
        for r in runs:
            state, detail = states[r.id]
            if state in ("done", "archived"):
                self.done, self.skipped = self.done + 1, self.skipped + 1
                where = self.out / r.id if state == "done" else self.archive / r.id  # type: ignore[operator]
                log(f"[{self.done}/{self.total}] {r.id} already finished ({brief(read_result(where))}"
                    f"{', archived' if state == 'archived' else ''}), skipped")
            elif state == "conflict":
                self.done += 1
                self.failures.append((r.id, detail))
                log(f"[{self.done}/{self.total}] {r.id} FAILED: {detail}")
            else:
                self.queue.append(r)

    def save(self) -> None:
        """sweep.json (what camssl sweep --status reads while the sweep runs), and the archive's copy."""
        self.session.update(running=[a.run.id for a in self.active], queued=[r.id for r in self.queue],
                            failures=dict(self.failures))
        io.write_json(self.out / "sweep.json", self.record)
        if self.archive is not None:
            archive.write_record(self.archive, self.record)

    def launch(self, r: Run) -> None:
        run_dir = self.out / r.id
        state, detail = self.states[r.id]
        prepare_run(run_dir, r, state)
        cmd = train_command(run_dir)
        logf, offset = open_log(run_dir, "new run" if state == "new" else f"resuming {detail}", cmd)
        try:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env, pass_fds=(self.lock_fd,))
        finally:
            logf.close()
        self.active.append(_Active(r, proc, offset, time.time(), "" if state == "new" else detail))
        self.save()

    def finish(self, a: _Active, rc: int) -> None:
        self.done, self.ran = self.done + 1, self.ran + 1
        run_dir = self.out / a.run.id
        minutes = (time.time() - a.started) / 60
        result = read_result(run_dir) if rc == 0 else None
        note = f" (resumed {a.resumed})" if a.resumed else ""
        if rc == 0 and result is not None:
            self.finished += 1
            if self.archive is not None:
                archive.archive_run(run_dir, self.archive / a.run.id)
            self.log(f"[{self.done}/{self.total}] {a.run.id} done in {minutes:.1f} min: {brief(result)}{note}")
        else:
            reason = failure_reason(run_dir / "train.log", a.log_offset, rc) if rc else "finished without result.json"
            self.failures.append((a.run.id, f"{reason} (log: {run_dir / 'train.log'})"))
            self.log(f"[{self.done}/{self.total}] {a.run.id} FAILED after {minutes:.1f} min: {reason}")
        self.save()

    def loop(self) -> None:
        while self.queue or self.active:
            while self.queue and len(self.active) < self.jobs:
                self.launch(self.queue.pop(0))
            time.sleep(0.2)
            for a in list(self.active):
                rc = a.proc.poll()
                if rc is not None:
                    self.active.remove(a)
                    self.finish(a, rc)

    def stop(self) -> None:
        """Stop the running runs at their last checkpoint (an interrupted sweep)."""
        for a in self.active:
            if a.proc.poll() is None:
                a.proc.terminate()
        for a in self.active:
            try:
                a.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                a.proc.kill()
                a.proc.wait()
        self.log(f"interrupted: stopped {len(self.active)} running run(s) at their last checkpoint; "
                 "run the same command again to continue the sweep")

    def close(self, wall: float) -> None:
        self.session.update(finished=time.strftime("%Y-%m-%d %H:%M:%S"), wall_s=round(wall, 1), ran=self.ran,
                            done=self.finished, skipped=self.skipped, failed=len(self.failures), running=[],
                            queued=[], failures=dict(self.failures))
        self.active = []
        self.save()


def _execute(plan: Plan, out: Path, runs: list[Run], states: dict[str, tuple[str, str]], jobs: int, threads: int,
             lock_fd: int, command: str, log: Callable[[str], None], archive: Path | None = None) -> int:
    sweep = _LocalSweep(plan, out, runs, states, jobs, threads, lock_fd, command, log, archive)
    t_start = time.time()
    sweep.save()
    previous_term = signal.getsignal(signal.SIGTERM)
    in_main = _in_main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        sweep.loop()
    except KeyboardInterrupt:
        sweep.stop()
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous_term)
        wall = time.time() - t_start
        sweep.close(wall)
    failures = sweep.failures
    log(f"sweep finished in {wall / 60:.1f} min: {sweep.finished} run{'' if sweep.finished == 1 else 's'} done, "
        f"{sweep.skipped} skipped (already finished), {len(failures)} failed")
    if failures:
        log(f"failed runs ({len(failures)}); run the same command again to retry them:")
        for rid, why in failures:
            log(f"  {rid}: {why}")
    log(f"tables: camssl table {archive or out}")
    return len(failures)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


