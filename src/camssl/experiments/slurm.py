"""A sweep on a Slurm cluster through submitit: ``camssl sweep SPEC --out DIR --launcher slurm``.

Every unfinished run becomes one task of a Slurm job array; the task runs exactly what the
local runner runs (``camssl train --resume RUN_DIR``, under torchrun for several GPUs per
run) through :class:`camssl.experiments.slurm_job.TrainJob`, which submitit requeues at a
preemption or the time limit so that the run continues from its last checkpoint. The job
ids are recorded per run in ``DIR/slurm_jobs.json``; a later call asks sacct for their
state and submits no run whose job is queued or running. The executor is the only thing
that differs between a cluster and the tests (submitit's LocalExecutor runs the same jobs
as local processes). Options come from the spec's ``launcher:`` section, overridden by
the command line (:mod:`.slurm_options`).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from camssl import io
from camssl.errors import UserError
from camssl.experiments.runner import (
    brief, lock_sweep, prepare_run, read_result, run_state, select_runs, session_record,
)
from camssl.experiments.slurm_options import SlurmOptions
from camssl.experiments.spec import Plan

JOBS_FILE = "slurm_jobs.json"
JOBS_FORMAT = "camssl-slurm-jobs"
# states of a job that will still run (or runs): its run is not submitted again
RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING"}
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SUSPENDED", "PREEMPTED", "READY"}
UNKNOWN_GRACE_S = 600  # sacct may not know a job for a moment after sbatch; until then it counts as queued


def import_submitit() -> ModuleType:
    """submitit, or a one-line error saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit: pip install 'camssl[slurm]' (or 'submitit>=1.5')") from None
    return submitit


def slurm_folder(out: Path) -> Path:
    """Where submitit keeps the jobs' pickles and logs (``<job id>_0_log.out`` / ``.err``)."""
    return Path(out).expanduser().absolute() / "slurm"


def sbatch_parameters(opts: SlurmOptions, job_name: str) -> dict[str, Any]:
    """The options as submitit SlurmExecutor parameters (one task per run; G GPUs go to torchrun)."""
    params: dict[str, Any] = {"job_name": job_name, "time": opts.time, "ntasks_per_node": 1}
    for key, value in (("partition", opts.partition), ("gpus_per_node", opts.gpus_per_run or None),
                       ("cpus_per_task", opts.cpus_per_run), ("mem", opts.mem),
                       ("array_parallelism", opts.array_parallelism), ("setup", list(opts.setup) or None),
                       ("additional_parameters", dict(opts.sbatch) or None)):
        if value is not None:
            params[key] = value
    return params


def render_sbatch(opts: SlurmOptions, out: Path, n_runs: int) -> str:
    """The sbatch script of an array of ``n_runs`` runs, as SlurmExecutor would submit it (no srun needed)."""
    from submitit.slurm.slurm import _make_sbatch_string

    folder = slurm_folder(out)
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, map_count=n_runs,
                               **sbatch_parameters(opts, _job_name(out)))


def _job_name(out: Path) -> str:
    return f"camssl-{Path(out).absolute().name}"


def make_executor(cluster: str, out: Path, opts: SlurmOptions) -> Any:
    """A submitit executor: ``slurm`` (sbatch) or ``local`` (the same jobs as local processes, for tests)."""
    submitit = import_submitit()
    if cluster == "local":
        ex = submitit.LocalExecutor(slurm_folder(out))
        ex.update_parameters(timeout_min=opts.time, gpus_per_node=opts.gpus_per_run, setup=list(opts.setup))
        return ex
    if cluster != "slurm":
        raise ValueError(f"unknown cluster {cluster!r}")  # pragma: no cover - programming error
    try:
        ex = submitit.SlurmExecutor(slurm_folder(out))
    except RuntimeError:
        raise UserError(
            "srun is not on PATH: --launcher slurm submits from a Slurm login node (or run with --launcher local)"
        ) from None
    ex.update_parameters(**sbatch_parameters(opts, _job_name(out)))
    return ex


# ---------------------------------------------------------------- recorded jobs and their states


def read_jobs(out: Path) -> dict[str, dict[str, Any]]:
    """run id → its latest job (job_id, cluster, submitted_at, attempts) from DIR/slurm_jobs.json."""
    try:
        data = json.loads((Path(out) / JOBS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return dict(data.get("runs", {})) if isinstance(data, dict) else {}


def write_jobs(out: Path, runs: Mapping[str, dict[str, Any]]) -> None:
    io.write_json(Path(out) / JOBS_FILE, {"format": JOBS_FORMAT, "version": 1, "runs": dict(runs)})


def job_states(out: Path, jobs: Mapping[str, dict[str, Any]], *, strict: bool = True) -> dict[str, str]:
    """run id → the state of its recorded job (sacct's word: PENDING, RUNNING, FAILED, ...; UNKNOWN).

    Slurm jobs are asked for in one sacct call, read by submitit; when sacct is missing or
    fails this is a one-line error (``strict``: a submission must not guess) or UNASKED.
    """
    states = {rid: _local_state(out, str(j["job_id"])) for rid, j in jobs.items() if j.get("cluster") == "local"}
    on_slurm = {rid: str(j["job_id"]) for rid, j in jobs.items() if j.get("cluster") == "slurm"}
    if not on_slurm:
        return states
    import_submitit()
    from submitit.slurm.slurm import SlurmInfoWatcher

    cmd = ["sacct", "-o", "JobID,State,NodeList", "--parsable2"]
    for main_id in sorted({i.split("_")[0] for i in on_slurm.values()}):
        cmd += ["-j", main_id]
    try:
        info = SlurmInfoWatcher().read_info(subprocess.run(cmd, capture_output=True, check=True, timeout=120).stdout)
    except (OSError, subprocess.SubprocessError) as e:
        if strict:
            raise UserError(
                f"cannot ask sacct whether the Slurm jobs recorded in {Path(out) / JOBS_FILE} still run ({e}); "
                "run this on the cluster, or delete that file if those jobs are gone"
            ) from None
        return {**states, **{rid: "UNASKED" for rid in on_slurm}}
    for rid, job_id in on_slurm.items():  # UNKNOWN: sacct does not list it (yet)
        states[rid] = (info.get(job_id, {}).get("State") or "UNKNOWN").split()[0].upper()
    return states


def _local_state(out: Path, job_id: str) -> str:
    """The state of a LocalExecutor job (id: its controller's pid)."""
    outcome = _outcome(out, job_id)
    if outcome is not None:
        return "COMPLETED" if outcome[0] == "success" else "FAILED"
    try:
        status = Path(f"/proc/{int(job_id)}/status").read_text()
    except (OSError, ValueError):
        return "CANCELLED"
    return "CANCELLED" if "\nState:\tZ" in status else "RUNNING"


def _outcome(out: Path, job_id: str) -> tuple[str, Any] | None:
    from submitit.core.utils import JobPaths, pickle_load

    path = JobPaths(slurm_folder(out), job_id).result_pickle
    try:
        return pickle_load(path) if path.exists() else None
    except Exception:  # noqa: BLE001 - a torn or foreign pickle tells nothing
        return None


def live(state: str, job: Mapping[str, Any]) -> str | None:
    """"running" / "queued" for a job that still runs or will, None for one that ended."""
    if state in RUNNING:
        return "running"
    if state in QUEUED:
        return "queued"
    if state == "UNKNOWN" and time.time() - float(job.get("submitted_at", 0)) < UNKNOWN_GRACE_S:
        return "queued"
    return None


def job_error(out: Path, job: Mapping[str, Any], state: str) -> str:
    """Why a job that ended gave no result: the run's error (``RunFailed``), or what Slurm says."""
    outcome = _outcome(out, str(job["job_id"]))
    if outcome is not None and outcome[0] == "error":
        lines = [line.strip() for line in str(outcome[1]).splitlines() if line.strip()]
        last = lines[-1] if lines else "no traceback"
        return last.split("RunFailed: ", 1)[-1]
    log = slurm_folder(out) / f"{job['job_id']}_0_log.err"
    return f"job {job['job_id']} ended {state} without a result (log: {log})"


# ---------------------------------------------------------------- submitting


def submit_sweep(
    plan: Plan,
    out: str | Path,
    opts: SlurmOptions,
    *,
    only: Sequence[str] = (),
    dry_run: bool = False,
    wait: bool = False,
    command: str = "",
    cluster: str = "slurm",
    log: Callable[[str], None] = print,
) -> int:
    """Submit every unfinished run of a sweep as one job array; the number of failed runs.

    Finished runs are skipped, and so are runs whose recorded job is queued or running;
    unfinished ones continue from their checkpoint. With ``wait`` the call follows the jobs
    to their end and lists each run's outcome like the local runner.
    """
    out = Path(out)
    runs = select_runs(plan, only)
    lock = None if dry_run else lock_sweep(out)  # states are read under the lock: no two callers submit a run
    try:
        states = {r.id: run_state(out / r.id, r.config) for r in runs}
        jobs = read_jobs(out)
        pending = {rid: jobs[rid] for rid, (s, _) in states.items() if rid in jobs and s != "done"}
        ask = job_states(out, pending)
        alive = {rid: how for rid in pending if (how := live(ask[rid], pending[rid]))}
        todo = [r for r in runs if states[r.id][0] in ("new", "resume") and r.id not in alive]
        conflicts = [(r.id, states[r.id][1]) for r in runs if states[r.id][0] == "conflict"]
        n_done = sum(s == "done" for s, _ in states.values())
        log(f"sweep {out}: {len(runs)} runs ({n_done} finished, {len(alive)} queued or running on Slurm, "
            f"{len(todo)} to submit" + (f", {len(conflicts)} in conflict" if conflicts else "") + ")")
        for rid, why in conflicts:
            log(f"  {rid} FAILED: {why}")
        if dry_run:
            for r in runs:
                state, detail = states[r.id]
                job = f"{alive[r.id]} as job {jobs[r.id]['job_id']}" if r.id in alive else ""
                log(f"  {r.id:<34} {job or state}{' ' + detail if detail and not job else ''}")
            if todo:
                log(f"the job array's sbatch script:\n{render_sbatch(opts, out, len(todo))}")
            log("dry run: nothing was submitted or written")
            return 0
        if not todo:
            log(f"nothing to submit; follow the runs with: camssl sweep {out} --status")
            return len(conflicts)
        executor = make_executor(cluster, out, opts)  # fails (no srun) before anything is written
        from camssl.experiments.slurm_job import TrainJob

        for r in todo:
            prepare_run(out / r.id, r, states[r.id][0])
        record = session_record(out, plan, command, launcher="slurm", cluster=cluster, runs=len(todo),
                                options=opts.record())
        try:
            submitted = executor.submit_array([TrainJob(str((out / r.id).absolute()), opts.gpus_per_run) for r in todo])
        except (OSError, RuntimeError) as e:  # submitit's FailedJobError / FailedSubmissionError: sbatch said no
            said = [line.strip() for line in str(e).splitlines() if line.strip()]
            raise UserError(f"sbatch refused the job array: {said[-1] if said else type(e).__name__}; "
                            "check --partition, --time and the --sbatch flags") from None
        now = time.time()
        for r, job in zip(todo, submitted, strict=True):
            attempts = int(jobs.get(r.id, {}).get("attempts", 0)) + 1
            jobs[r.id] = {"job_id": str(job.job_id), "cluster": cluster, "submitted_at": round(now, 1),
                          "submitted": time.strftime("%Y-%m-%d %H:%M:%S"), "attempts": attempts}
        write_jobs(out, jobs)
        record["sessions"][-1]["job_ids"] = {r.id: jobs[r.id]["job_id"] for r in todo}
        io.write_json(out / "sweep.json", record)
    finally:
        if lock is not None:
            lock.close()
    first = str(submitted[0].job_id)
    log(f"submitted {len(todo)} run{'s' if len(todo) > 1 else ''} as job array {first.split('_')[0]} "
        f"({first}{' ... ' + str(submitted[-1].job_id) if len(todo) > 1 else ''}); logs in {slurm_folder(out)}")
    log(f"follow them with: camssl sweep {out} --status; tables: camssl table {out}")
    if not wait:
        return len(conflicts)
    return len(conflicts) + _follow(out, todo, submitted, jobs, log)


def _follow(out: Path, runs: Sequence[Any], submitted: Sequence[Any], jobs: Mapping[str, Any],
            log: Callable[[str], None]) -> int:
    """Wait for the submitted jobs; log each run as it ends and the failures at the end."""
    t0 = time.time()
    open_jobs = dict(zip([r.id for r in runs], submitted, strict=True))
    failures: list[tuple[str, str]] = []
    n = 0
    while open_jobs:
        time.sleep(1.0)
        for rid, job in list(open_jobs.items()):
            if not job.done():
                continue
            del open_jobs[rid]
            n += 1
            result = read_result(out / rid)
            if result is not None:
                log(f"[{n}/{len(runs)}] {rid} done: {brief(result)}")
                continue
            why = job_error(out, jobs[rid], str(job.state).split()[0].upper())
            failures.append((rid, why))
            log(f"[{n}/{len(runs)}] {rid} FAILED: {why}")
    log(f"jobs finished in {(time.time() - t0) / 60:.1f} min: {len(runs) - len(failures)} done, {len(failures)} failed")
    if failures:
        log(f"failed runs ({len(failures)}); run the same command again to resubmit them:")
        for rid, why in failures:
            log(f"  {rid}: {why}")
    return len(failures)


def refuse_if_active(out: Path, run_ids: Sequence[str]) -> None:
    """A local sweep must not run what Slurm jobs of the same directory run or will run."""
    jobs = {rid: j for rid, j in read_jobs(out).items() if rid in set(run_ids)
            and not (Path(out) / rid / "result.json").exists()}
    if not jobs:
        return
    states = job_states(out, jobs)
    busy = sorted(rid for rid, j in jobs.items() if live(states[rid], j))
    if busy:
        ids = " ".join(str(jobs[rid]["job_id"]) for rid in busy)
        raise UserError(
            f"{len(busy)} run(s) of '{out}' are queued or running as Slurm jobs ({ids}); wait for them "
            f"(camssl sweep {out} --status), cancel them (scancel), or continue with --launcher slurm"
        )

