"""The Slurm executor, through submitit: each cell a job, its record published on the shared disk.

A job runs one try of one cell (executors/remote.py) and publishes the cell's
record in the run folder, which every node sees; the driver waits for those
files and alone appends them to the run's results. The job id of every cell
is kept in run.json as soon as it is submitted, so a driver that is stopped
or dies can be started again (``--resume``): cells whose record was published
meanwhile are merged, cells whose job still runs are waited for, not run
twice, and only the rest is submitted again. Ctrl-C cancels the jobs it
submitted and leaves the run to ``--resume``.

``cluster = "local"`` in the ``[executor]`` table uses submitit's local
executor: the same pickling and job path, as processes of this machine.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from kdbench.errors import KdbenchError
from kdbench.records.schema import Record
from kdbench.records.store import append_record
from kdbench.runner.execute import check_stop, lost_record, new_attempt, published
from kdbench.runner.executors.options import ExecutorOptions
from kdbench.runner.executors.remote import run_remote
from kdbench.runner.folder import Run, read_manifest, update_manifest
from kdbench.runner.job import CellJob

JOBS_KEY = "slurm_jobs"  # run.json: cell id -> the job running its latest try
JOBS_DIR = "slurm"  # submitit's files (scripts, pickles, logs), one folder per job
NO_TIMEOUT_MIN = 24 * 60  # a Slurm time limit for cells that have none
MARGIN_MIN = 5  # the cell stops itself at its timeout; its job gets a little more
GRACE_S = 10.0  # how long a finished job's record may take to appear on a shared disk


def import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise KdbenchError(
            "--executor slurm needs submitit: pip install 'kdbench[slurm]' "
            "(or choose --executor local)"
        ) from None
    return submitit


@dataclasses.dataclass
class Waiting:
    """A try handed to a job, until its record is in."""

    attempt: CellJob
    job: Any  # a submitit Job, or None for a job of an earlier driver (re-attached)
    job_id: str
    since: float
    alive: Callable[[], bool]
    finished_at: float | None = None


def make_executor(submitit: Any, run: Run, options: ExecutorOptions, cpus: int, gpus: int) -> Any:
    """A submitit executor for cells that ask for cpus and gpus."""
    try:
        executor = submitit.AutoExecutor(
            folder=str(run.out_dir / JOBS_DIR / "%j"), cluster=options.cluster
        )
    except RuntimeError as exc:  # no srun: not on a Slurm cluster
        raise KdbenchError(
            f"--executor slurm: {exc} Run kdbench on a Slurm login node, or set "
            "cluster = 'local' in the matrix file's [executor] table to run the jobs here"
        ) from None
    timeout = run.cell_timeout_s
    params: dict[str, Any] = {
        "name": f"kdbench-{run.run_id}",
        "timeout_min": math.ceil(timeout / 60) + MARGIN_MIN if timeout else NO_TIMEOUT_MIN,
        "cpus_per_task": cpus,
        "gpus_per_node": gpus,
        "tasks_per_node": 1,
        "nodes": 1,
    }
    if options.mem_gb:
        params["mem_gb"] = options.mem_gb
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.slurm_options:
        params["slurm_additional_parameters"] = dict(options.slurm_options)
    executor.update_parameters(**params)
    return executor


def _alive(submitit: Any, run: Run, options: ExecutorOptions, job_id: str) -> bool:
    """Whether the job of an earlier driver is still queued or running."""
    if options.cluster == "local":  # submitit's local job id is its process id
        try:
            return psutil.Process(int(job_id)).is_running()
        except (psutil.Error, ValueError):
            return False
    job = submitit.SlurmJob(folder=run.out_dir / JOBS_DIR / "%j", job_id=job_id)
    return not job.done(force_check=True)


def execute_slurm(
    run: Run,
    jobs: list[CellJob],
    options: ExecutorOptions,
    on_record: Callable[[Record], None],
    on_started: Callable[[int], None] = lambda n: None,
) -> None:
    """Submit the jobs (at most max_parallel running), append each record as it is published."""
    submitit = import_submitit()
    known: dict[str, dict[str, str]] = dict(read_manifest(run).get(JOBS_KEY, {}))
    waiting: dict[str, Waiting] = {}
    queue: list[CellJob] = []
    for job in jobs:
        earlier = known.get(job.cell_id)
        if earlier and _alive(submitit, run, options, earlier["job_id"]):
            attempt = dataclasses.replace(
                run.resolved(job),
                record_file=str(run.out_dir / earlier["record_file"]),
                attempt_id=earlier["attempt_id"],
            )
            job_id = earlier["job_id"]
            waiting[job.cell_id] = Waiting(
                attempt,
                None,
                job_id,
                time.perf_counter(),
                lambda job_id=job_id: _alive(submitit, run, options, job_id),
            )
        else:
            queue.append(job)
    limit = _in_flight_limit(options, jobs)
    executors: dict[tuple[int, int], Any] = {}
    try:
        while queue or waiting:
            check_stop()
            while queue and len(waiting) < limit:
                job = queue.pop(0)
                waiting[job.cell_id] = _submit(submitit, run, options, job, executors, known)
            on_started(len(waiting))
            for cell_id, entry in list(waiting.items()):
                record = _finished(entry)
                if record is not None:
                    del waiting[cell_id]
                    append_record(run.results, record)
                    on_record(record)
            if waiting:
                _sleep(options.poll_s)
    except KeyboardInterrupt:
        for entry in waiting.values():
            if entry.job is not None:
                entry.job.cancel(check=False)
        raise


def _in_flight_limit(options: ExecutorOptions, jobs: list[CellJob]) -> int:
    """max_parallel; else, on this machine (cluster = local), as many cells as
    its cores hold; else all of them (the cluster's queue decides)."""
    if options.max_parallel:
        return options.max_parallel
    if options.cluster == "local" and jobs:
        return max(1, (os.cpu_count() or 1) // options.cpus_for(jobs[0].settings.threads))
    return max(1, len(jobs))


def _submit(
    submitit: Any,
    run: Run,
    options: ExecutorOptions,
    job: CellJob,
    executors: dict[tuple[int, int], Any],
    known: dict[str, dict[str, str]],
) -> Waiting:
    cpus, gpus = options.cpus_for(job.settings.threads), options.gpus_for(job.settings.device)
    if (cpus, gpus) not in executors:
        executors[(cpus, gpus)] = make_executor(submitit, run, options, cpus, gpus)
    attempt = new_attempt(job, run)
    try:
        handle = executors[(cpus, gpus)].submit(
            run_remote, attempt.to_json(), str(run.out_dir), run.cell_timeout_s, "slurm"
        )
    except Exception as exc:  # noqa: BLE001 - sbatch's errors come as several types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise KdbenchError(
            f"--executor slurm: cannot submit cell {job.cell_id} ({first}); check the "
            "[executor] table (partition, slurm_options); the run continues with --resume"
        ) from None
    known[job.cell_id] = {
        "job_id": str(handle.job_id),
        "attempt_id": attempt.attempt_id,
        "record_file": str(Path(attempt.record_file).relative_to(run.out_dir)),
    }
    update_manifest(run, JOBS_KEY, known)
    return Waiting(
        attempt, handle, str(handle.job_id), time.perf_counter(), lambda: not handle.done()
    )


def _finished(entry: Waiting) -> Record | None:
    """The try's record once published; a failed record for a job that ended without one."""
    record = published(entry.attempt)
    if record is not None:
        return record
    if entry.alive():
        return None
    now = time.perf_counter()
    if entry.finished_at is None:  # a shared disk may show the file a little later
        entry.finished_at = now
    if now - entry.finished_at < GRACE_S:
        return None
    why = _job_error(entry.job) if entry.job is not None else "started by an earlier driver"
    error = f"the Slurm job {entry.job_id} ended without the cell's record ({why})"
    return lost_record(entry.attempt, "failed", error, now - entry.since, "slurm", host_known=False)


def _job_error(job: Any) -> str:
    try:
        exc = job.exception()
    except Exception as err:  # noqa: BLE001 - submitit raises its own types here
        exc = err
    state = getattr(job, "state", "unknown")
    text = f"{type(exc).__name__}: {exc}" if exc else f"state {state}"
    return (text.strip().splitlines() or [text])[-1][:300] + f"; its logs: {job.paths.folder}"


def _sleep(seconds: float) -> None:
    """Sleep in short steps, so Ctrl-C is seen at once."""
    end = time.perf_counter() + seconds
    while (left := end - time.perf_counter()) > 0:
        check_stop()
        time.sleep(min(0.2, left))
