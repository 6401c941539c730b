"""``camssl sweep DIR --status``: the state of every run of a sweep, whichever launcher runs it.

A run is *finished* (result.json), *running* or *queued* (a Slurm job recorded in
slurm_jobs.json that sacct reports so, or a local ``camssl sweep`` working on the
directory now), *failed* (with the error of its last attempt), *interrupted* (stopped
after some epochs; the next ``camssl sweep`` continues it), *not started*, or *unknown*
(a recorded Slurm job that sacct does not know, e.g. on a machine without sacct).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from camssl.errors import UserError
import camssl.experiments.slurm as slurm
from camssl.experiments.runner import brief, progress, read_result, sweep_busy

STATES = ("finished", "running", "queued", "failed", "interrupted", "not started", "unknown")


def sweep_status(out: str | Path) -> list[tuple[str, str, str]]:
    """(run id, state, detail) of every planned run of the sweep in ``out``, in plan order."""
    out = Path(out)
    try:
        record = json.loads((out / "sweep.json").read_text())
        ids = [r["id"] for r in record["runs"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"'{out}' holds no sweep.json; give the --out directory of a camssl sweep: camssl sweep DIR --status"
        ) from None
    local = next((s for s in reversed(record.get("sessions", [])) if s.get("launcher", "local") == "local"), {})
    local_busy = bool(local) and sweep_busy(out)
    jobs: dict[str, dict[str, Any]] = {}
    states: dict[str, str] = {}
    if (out / slurm.JOBS_FILE).exists():
        jobs = {rid: j for rid, j in slurm.read_jobs(out).items() if not (out / rid / "result.json").exists()}
        states = slurm.job_states(out, jobs, strict=False) if jobs else {}

    rows = []
    for rid in ids:
        rows.append((rid, *_state(out, rid, local, local_busy, jobs.get(rid), states.get(rid, "UNKNOWN"))))
    return rows


def _state(out: Path, rid: str, local: dict[str, Any], local_busy: bool, job: dict[str, Any] | None,
           job_state: str) -> tuple[str, str]:
    """(state, detail) of one run; its latest attempt is its Slurm job or the last local sweep, whichever is newer."""
    run_dir = out / rid
    result = read_result(run_dir)
    if result is not None:
        return "finished", brief(result)
    if job is not None and float(job.get("submitted_at", 0)) >= float(local.get("started_at", 0)):
        where = f"{job.get('cluster', 'slurm')} job {job['job_id']}"
        how = slurm.live(job_state, job)
        if how:
            return how, where + (f", {progress(run_dir)}" if how == "running" else "")
        if job_state in ("UNKNOWN", "UNASKED"):
            return "unknown", f"{where}: " + ("sacct does not know it" if job_state == "UNKNOWN" else "no sacct here")
        return "failed", slurm.job_error(out, job, job_state)
    if local_busy and rid in local.get("running", []):
        return "running", f"local sweep, {progress(run_dir)}"
    if local_busy and rid in local.get("queued", []):
        return "queued", "local sweep"
    if rid in local.get("failures", {}):
        return "failed", local["failures"][rid]
    if (run_dir / "config.yaml").exists():
        return "interrupted", progress(run_dir)
    return "not started", ""


def print_status(out: str | Path, log: Callable[[str], None] = print) -> list[tuple[str, str, str]]:
    """Print the states of a sweep's runs with counts; returns the rows."""
    rows = sweep_status(out)
    counts = {s: sum(1 for _, st, _ in rows if st == s) for s in STATES}
    log(f"sweep {out}: {len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for rid, state, detail in rows:
        log(f"  {rid:<34} {state:<12} {detail}".rstrip())
    if counts["failed"] or counts["interrupted"] or counts["not started"]:
        log("run the sweep's command again to continue the unfinished runs")
    return rows
