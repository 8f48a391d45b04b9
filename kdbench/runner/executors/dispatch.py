"""One entry for the run command: the pending cells, on the executor the options name."""

from __future__ import annotations

import shutil
from collections.abc import Callable

from kdbench.errors import KdbenchError
from kdbench.records.schema import Record
from kdbench.runner.duet import execute_duets
from kdbench.runner.execute import OnEvent, execute
from kdbench.runner.executors.options import ExecutorOptions
from kdbench.runner.folder import Run, read_manifest
from kdbench.runner.job import CellJob


def preflight(options: ExecutorOptions) -> None:
    """Before the run folder is written: the executor's package is installed and,
    for Slurm, this is a Slurm machine (one line each, not a failed run)."""
    if options.kind == "ray":
        from kdbench.runner.executors.ray_cluster import import_ray

        import_ray()
    elif options.kind == "slurm":
        from kdbench.runner.executors.slurm_jobs import import_submitit

        import_submitit()
        if options.cluster == "slurm" and shutil.which("srun") is None:
            raise KdbenchError(
                "--executor slurm: no srun on PATH, so this is not a Slurm machine; run kdbench "
                "on a Slurm login node, or set cluster = 'local' in the matrix file's [executor] "
                "table to run the jobs here"
            )


def execute_on(
    options: ExecutorOptions,
    run: Run,
    jobs: list[CellJob],
    on_event: OnEvent,
    on_record: Callable[[Record], None],
    on_started: Callable[[int], None] = lambda n: None,
) -> None:
    """Run the jobs where the options say; every record is appended by this process.

    Cluster executors report whole cells (on_started: how many are in flight),
    not the phases of each (on_event), which stay on the worker."""
    if not jobs:
        return
    if options.kind == "ray":
        from kdbench.runner.executors.ray_cluster import execute_ray

        execute_ray(run, jobs, options, on_record, on_started)
    elif options.kind == "slurm":
        from kdbench.runner.executors.slurm_jobs import execute_slurm

        execute_slurm(run, jobs, options, on_record, on_started)
    elif read_manifest(run).get("duet"):
        execute_duets(run, jobs, on_event, on_record)
    else:
        execute(run, jobs, on_event, on_record)
