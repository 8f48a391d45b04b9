"""One benchmark cell in its own process: ``python -m kdbench.runner.worker JOB.json``.

A fresh process per cell gives every framework a clean memory high-water
mark and keeps a crash to one cell. Progress goes to stdout as lines that
start with EVENT_PREFIX; the record goes to the file the job names.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kdbench.host import host_environment
from kdbench.records.schema import Host, Record, SpecRef
from kdbench.records.store import publish_record
from kdbench.runner.job import CellJob
from kdbench.spec import LoadedSpec, load_spec

EVENT_PREFIX = "@kdbench "
# Set by the process that starts a cell: which executor ran it (local, ray, slurm).
EXECUTOR_ENV = "KDBENCH_EXECUTOR"

OOM_MARKERS = (
    "out of memory",
    "resource_exhausted",
    "oom when allocating",
    "cuda_error_out_of_memory",
)


def base_record(job: CellJob, loaded: LoadedSpec) -> Record:
    """The fields every record has, whatever became of the cell."""
    spec = loaded.spec
    return Record(
        run_id=job.run_id,
        cell_id=job.cell_id,
        attempt_id=job.attempt_id or None,
        spec=SpecRef(name=spec.name, hash=loaded.content_hash, path=str(loaded.path)),
        backend=job.backend,
        seed=job.seed,
        label=job.label,
        env=job.env,
        round=job.round,
        overrides=job.overrides,
        settings={
            **job.settings.as_dict(),
            "teacher_batch_size": spec.teacher.batch_size,
            "student_batch_size": spec.student.batch_size,
            "eval_batch_size": spec.measure.eval_batch_size,
            "warmup_steps": spec.measure.warmup_steps,
            "method": spec.distill.method,
            "temperature": spec.distill.temperature,
            "alpha": spec.distill.alpha if spec.distill.weights is None else None,
            "loss_terms": " + ".join(
                f"{w:g}*{term}" for term, w in spec.distill.term_weights().items() if w
            ),
            "teacher_source": teacher_source(loaded),
        },
        host=Host(**host_environment(), executor=os.environ.get(EXECUTOR_ENV, "local")),
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        status="failed",
    )


def teacher_source(loaded: LoadedSpec) -> str:
    """Where the cell's teacher came from: "per-backend" (each trains its own),
    "shared:<backend>" or "file:<name>@<digest>"."""
    net = loaded.spec.teacher
    if loaded.teacher_checkpoint is not None:
        from kdbench.checkpoint import file_digest

        path = loaded.teacher_checkpoint
        return f"file:{path.name}@{file_digest(path)}"
    return f"shared:{net.shared_from}" if net.shared_from else "per-backend"


def failure_status(exc: BaseException) -> str:
    """'oom' for the ways each framework reports exhausted memory, else 'failed'."""
    text = f"{type(exc).__name__}: {exc}".lower()
    if isinstance(exc, MemoryError) or any(marker in text for marker in OOM_MARKERS):
        return "oom"
    return "failed"


# The exit code of a cell whose runner died under it: no record is written.
ORPHANED = 3


def runner_gone(runner_pid: int) -> bool:
    """Whether the runner that started this cell has died (the cell was reparented).

    A runner killed outright closes its end of the event pipe before the kernel
    sends the cell its death signal (PR_SET_PDEATHSIG): in that window a cell
    must not record the failure the broken pipe causes, or --resume would take
    the cell for done.
    """
    return os.getppid() != runner_pid


def emit(event: dict[str, Any]) -> None:
    try:
        print(EVENT_PREFIX + json.dumps(event), flush=True)
    except BrokenPipeError:  # the runner is gone: nobody to report to, nothing to record
        os._exit(ORPHANED)


def main(argv: list[str] | None = None) -> int:
    from kdbench.harness.cell import run_cell

    runner_pid = os.getppid()
    args = sys.argv[1:] if argv is None else argv
    job = CellJob.from_json(Path(args[0]).read_text())
    started = time.perf_counter()
    loaded = load_spec(job.spec_path, job.overrides)
    record = base_record(job, loaded)
    cache = Path(job.teacher_cache) if job.teacher_cache else None
    update: dict[str, Any]
    try:
        result = run_cell(loaded, job.backend, job.seed, job.settings, job.data_dir, emit, cache)
    except Exception as exc:  # noqa: BLE001 - any failure becomes the cell's record
        if runner_gone(runner_pid):  # the failure is the runner's death, not the cell's
            return ORPHANED
        update = {
            "status": failure_status(exc),
            "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:2000],
            "traceback": traceback.format_exc()[-8000:],
        }
        status = 1
    else:
        env = result.environment
        update = {
            "status": "ok",
            "framework": env.framework,
            "framework_version": env.framework_version,
            "device": env.device,
            "settings": record.settings.model_copy(update={"compile_mode": env.compile_mode}),
            "environment": env.record_block(),
            "metrics": result.metrics,
            "phases": result.phases,
            "timings": result.timings,
            "probe": result.probe,
            "data": result.data,
            "memory": result.memory,
        }
        status = 0
    update["duration_s"] = time.perf_counter() - started
    update["host"] = record.host.model_copy(update={"loadavg_end": list(os.getloadavg())})
    publish_record(Path(job.record_file), record.model_copy(update=update))
    return status


if __name__ == "__main__":
    sys.exit(main())
