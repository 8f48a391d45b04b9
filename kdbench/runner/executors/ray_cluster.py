"""The Ray executor: each cell a Ray task, on an existing cluster or a local one.

A task only starts the cell's own process and watches it (executors/remote.py),
so Ray's reuse of worker processes cannot share a framework or a memory
high-water mark between cells; tasks also run with ``max_calls=1`` (a worker
per task). A task is never retried by Ray: a cell whose worker dies becomes a
failed record and the matrix goes on. Ctrl-C cancels every outstanding task
(force: the worker dies, and the cell's process with it) and leaves the run
to ``--resume``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.records.schema import Record
from kdbench.records.store import append_record
from kdbench.runner.execute import check_stop, lost_record, new_attempt, published
from kdbench.runner.executors.options import ExecutorOptions
from kdbench.runner.executors.remote import run_remote
from kdbench.runner.folder import Run
from kdbench.runner.job import CellJob

WAIT_S = 0.5  # how often the driver looks for Ctrl-C between finished tasks


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise KdbenchError(
            "--executor ray needs Ray: pip install 'kdbench[ray]' (or choose --executor local)"
        ) from None
    return ray


def start_ray(ray: Any, options: ExecutorOptions) -> bool:
    """Join the cluster the options name, or start a local one; True if this call started it."""
    if ray.is_initialized():
        return False
    # A cell's process is started by its task, not by Ray: keep Ray's own
    # dashboard and log forwarding out of the driver's way.
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
    }
    if options.address:
        kwargs["address"] = options.address
    else:
        kwargs["num_cpus"] = options.workers or os.cpu_count() or 1
        # Its notice that a new local cluster uses token authentication (as it
        # should) would be the only line on stderr of a run that went well.
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the cluster at {options.address}" if options.address else "a local cluster"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KdbenchError(
            f"--executor ray: cannot start or join {where} ({first}); check "
            "[executor] address in the matrix file, or start one with 'ray start --head'"
        ) from None
    return True


def _check_fits(have: dict[str, float], jobs: list[CellJob], options: ExecutorOptions) -> None:
    """A cell asking for more than the whole cluster has would wait forever: say so now."""
    for job in jobs:
        cpus = options.cpus_for(job.settings.threads)
        gpus = options.gpus_for(job.settings.device, have.get("GPU", 0) > 0)
        if cpus > have.get("CPU", 0) or gpus > have.get("GPU", 0):
            raise KdbenchError(
                f"--executor ray: cell {job.cell_id} asks for {cpus} CPUs and {gpus} GPUs; the "
                f"cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs: "
                "lower [executor] cpus_per_cell (or --threads), or add workers"
            )


def execute_ray(
    run: Run,
    jobs: list[CellJob],
    options: ExecutorOptions,
    on_record: Callable[[Record], None],
    on_started: Callable[[int], None] = lambda n: None,
) -> None:
    """Hand every job to Ray at once; append each record as its task ends."""
    ray = import_ray()
    started_here = start_ray(ray, options)
    try:
        have = ray.cluster_resources()
        _check_fits(have, jobs, options)
        task = ray.remote(max_calls=1, max_retries=0)(run_remote)
        gpus_there = have.get("GPU", 0) > 0
        pending: dict[Any, tuple[CellJob, float]] = {}
        try:
            for job in jobs:
                attempt = new_attempt(job, run)
                ref = task.options(
                    num_cpus=options.cpus_for(job.settings.threads),
                    num_gpus=options.gpus_for(job.settings.device, gpus_there),
                    name=job.cell_id,
                ).remote(attempt.to_json(), str(run.out_dir), run.cell_timeout_s, "ray")
                pending[ref] = (attempt, time.perf_counter())
            on_started(len(pending))
            while pending:
                check_stop()
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                for ref in ready:
                    attempt, submitted = pending.pop(ref)
                    record = _result(ray, ref, attempt, time.perf_counter() - submitted)
                    append_record(run.results, record)
                    on_record(record)
                    on_started(len(pending))
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    finally:
        if started_here:
            ray.shutdown()


def _result(ray: Any, ref: Any, attempt: CellJob, waited_s: float) -> Record:
    """The task's record; when its worker died (or the task failed) after the
    cell published its record, that record; else a failed one."""
    try:
        return Record.model_validate_json(ray.get(ref))
    except ray.exceptions.RayError as exc:
        if (record := published(attempt)) is not None:
            return record
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        if isinstance(exc, ray.exceptions.RayTaskError):
            error = f"the cell's Ray task failed ({first})"
        else:
            error = f"the Ray worker running the cell died ({type(exc).__name__}: {first})"
        return lost_record(attempt, "failed", error, waited_s, "ray", host_known=False)
