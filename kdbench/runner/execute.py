"""Runs the pending cells of a run folder, one process each, appending records as they finish.

A cell that crashes, runs out of memory, is killed or runs past its time
limit becomes a record with that status; the matrix goes on. The cell's
process dies with the runner (PR_SET_PDEATHSIG), so a killed run leaves no
cell behind to publish a record under the next one.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.records.schema import Record
from kdbench.records.store import append_record, publish_record, read_record_file
from kdbench.runner.folder import LOGS_DIR, RECORDS_DIR, Run
from kdbench.runner.job import CellJob
from kdbench.runner.worker import EVENT_PREFIX, EXECUTOR_ENV, base_record
from kdbench.spec import load_spec

OnEvent = Callable[[CellJob, dict[str, Any]], None]
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the cell gets SIGKILL when the runner dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _child_setup(cpus: tuple[int, ...] | None) -> Callable[[], None]:
    def setup() -> None:  # pragma: no cover - runs in the child before exec
        _die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def file_stem(cell_id: str) -> str:
    """A file name for a cell: readable, and unique (the hash tells apart ids
    that read alike once their odd characters are replaced)."""
    readable = re.sub(r"[^A-Za-z0-9_.=-]+", "_", cell_id)[:120]
    return f"{readable}-{hashlib.sha1(cell_id.encode()).hexdigest()[:8]}"


def _oom_kills() -> int | None:
    """The OOM killer's count in this process's cgroup (v2), to tell an OOM kill
    from another SIGKILL; None where the kernel does not say."""
    try:
        group = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[1]
        events = Path("/sys/fs/cgroup", group.lstrip("/"), "memory.events").read_text()
    except (OSError, IndexError):
        return None
    for line in events.splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return None


# Set by the runner's signal handler beside raising KeyboardInterrupt: an
# exception raised by a handler can land where Python swallows it (an at-fork
# hook of subprocess's fork, a finalizer), so the waits below look here too.
STOP = threading.Event()


def check_stop() -> None:
    if STOP.is_set():
        raise KeyboardInterrupt


def _reader(stream: Any, events: queue.Queue[dict[str, Any]]) -> None:
    for line in stream:
        if line.startswith(EVENT_PREFIX):
            with contextlib.suppress(json.JSONDecodeError):
                events.put(json.loads(line[len(EVENT_PREFIX) :]))


def exit_status(returncode: int, log_tail: str, oom_killed: bool) -> tuple[str, str]:
    """(status, error) of a cell that ended without a record."""
    text = log_tail.lower()
    lines = log_tail.strip().splitlines()
    tail = lines[-1][:500] if lines else "(no output)"
    if oom_killed or "out of memory" in text or "memoryerror" in text:
        return "oom", f"the cell ran out of memory (exit code {returncode}): {tail}"
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else ""
        return "killed", f"the cell's process was killed by signal {-returncode} {name}".rstrip()
    return "failed", f"the cell's process exited with code {returncode}: {tail}"


def new_attempt(job: CellJob, run: Run) -> CellJob:
    """The job of one try of a cell: paths absolute, its own attempt id and record file.

    Made by the driver before the cell is handed to an executor, so the driver
    knows which file the cell will publish its record in, wherever it runs."""
    attempt = uuid.uuid4().hex[:12]
    record_file = run.out_dir / RECORDS_DIR / f"{file_stem(job.cell_id)}-{attempt}.json"
    return dataclasses.replace(run.resolved(job), record_file=str(record_file), attempt_id=attempt)


def published(job: CellJob) -> Record | None:
    """The record this try (from new_attempt) published, if it did."""
    record_file = Path(job.record_file)
    return read_record_file(record_file) if record_file.is_file() else None


def run_attempt(
    job: CellJob,
    run: Run,
    on_event: OnEvent,
    executor: str = "local",
    cpus: tuple[int, ...] | None = None,
) -> Record:
    """Run one try (from new_attempt) in a child process of this one; its record
    is published before this returns. Executors call it where the cell runs.

    cpus: the CPUs the cell's process may use (a duet's share); None: this one's."""
    stem = file_stem(job.cell_id)
    job_file = run.out_dir / LOGS_DIR / f"{stem}.job.json"
    log_file = run.out_dir / LOGS_DIR / f"{stem}.log"
    job_file.write_text(job.to_json())
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        EXECUTOR_ENV: executor,  # the record names the executor that ran the cell
    }
    timeout_s = run.cell_timeout_s
    oom_before = _oom_kills()
    started = time.perf_counter()
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    with open(log_file, "w") as log:
        # A session of its own: Ctrl-C reaches only the runner, which stops the child.
        proc = subprocess.Popen(
            [job.python or sys.executable, "-m", "kdbench.runner.worker", str(job_file)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            start_new_session=True,
            preexec_fn=_child_setup(cpus) if sys.platform == "linux" else None,
        )
        reader = threading.Thread(target=_reader, args=(proc.stdout, events), daemon=True)
        reader.start()
        timed_out = False
        try:
            while proc.poll() is None:
                check_stop()
                with contextlib.suppress(queue.Empty):
                    on_event(job, events.get(timeout=0.2))
                if timeout_s is not None and time.perf_counter() - started > timeout_s:
                    timed_out = True
                    proc.kill()
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            reader.join(timeout=5)
    if not timed_out and (record := published(job)) is not None:
        return record
    if timed_out:
        status = "timeout"
        error = f"the cell ran past its time limit of {timeout_s:g} s and was stopped"
    else:
        oom_after = _oom_kills()
        oom_killed = oom_before is not None and oom_after is not None and oom_after > oom_before
        tail = "\n".join(log_file.read_text(errors="replace").strip().splitlines()[-20:])
        status, error = exit_status(proc.returncode, tail, oom_killed)
    return lost_record(job, status, error, time.perf_counter() - started, executor)


def lost_record(
    job: CellJob,
    status: str,
    error: str,
    duration_s: float,
    executor: str,
    host_known: bool = True,
) -> Record:
    """The record of a try that ended without one, made and published here by
    whoever watched the cell: the process that started it, or the driver when
    the worker running it died (host_known False: the driver is not the host
    that ran the cell)."""
    record = base_record(job, load_spec(job.spec_path, job.overrides))
    record.host.executor = executor
    if not host_known:
        record.host.hostname = None
    if job.python:  # made here, by the runner: name the interpreter the cell ran in
        record.host.executable = job.python
    record = record.model_copy(update={"status": status, "error": error, "duration_s": duration_s})
    publish_record(Path(job.record_file), record)
    return record


def run_job(job: CellJob, run: Run, on_event: OnEvent) -> Record:
    """Run one cell here (the local executor); its record is published before this returns."""
    return run_attempt(new_attempt(job, run), run, on_event)


def execute(
    run: Run,
    jobs: list[CellJob],
    on_event: OnEvent,
    on_record: Callable[[Record], None],
) -> None:
    """Run the jobs; each record is published and appended before the next cell starts."""
    for job in jobs:
        check_stop()
        with unwritable(run, job):
            record = run_job(job, run, on_event)
            append_record(run.results, record)
        on_record(record)


@contextlib.contextmanager
def unwritable(run: Run, job: CellJob) -> Iterator[None]:
    """A cell's files that cannot be written end the run in one line, keeping the rest."""
    try:
        yield
    except OSError as exc:
        raise KdbenchError(
            f"cannot write the record of {job.cell_id} in {run.out_dir} ({exc}); every "
            f"record published so far is kept in {run.records_dir}: free the disk or fix "
            f"the permissions, then continue with: kdbench run --resume {run.out_dir}"
        ) from None
