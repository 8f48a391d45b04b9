"""What a Ray task or a Slurm job runs: one try of one cell, in a fresh child process.

The worker (a Ray worker, a Slurm job's process) only starts the cell's own
process and watches it, as the local runner does: a crash, an out-of-memory
kill or a timeout becomes the cell's record there. The record is published
in the run folder (atomically, one file per try) and returned to the driver,
which alone appends it to the run's results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdbench.runner.execute import run_attempt
from kdbench.runner.folder import Run
from kdbench.runner.job import CellJob


def _ignore(job: CellJob, event: dict[str, Any]) -> None:
    """Progress events stay in the worker: the driver learns of whole cells."""


def run_remote(job_json: str, out_dir: str, cell_timeout_s: float | None, executor: str) -> str:
    """Run the try that job_json describes (made by new_attempt); its record as JSON."""
    job = CellJob.from_json(job_json)
    run = Run(Path(out_dir), job.run_id, [job], cell_timeout_s)
    return run_attempt(job, run, _ignore, executor).model_dump_json()
