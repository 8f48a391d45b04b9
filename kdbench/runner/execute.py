"""Runs the pending cells of a run folder, one process each, appending records as they finish.

A cell that crashes, runs out of memory or runs past its time limit becomes
a record with that status; the matrix goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdbench.records.schema import Record
from kdbench.records.store import append_record, read_record_file
from kdbench.runner.folder import Run
from kdbench.runner.job import CellJob
from kdbench.runner.worker import EVENT_PREFIX, base_record
from kdbench.spec import load_spec

OnEvent = Callable[[CellJob, dict[str, Any]], None]


def _reader(stream: Any, events: queue.Queue[dict[str, Any]]) -> None:
    for line in stream:
        if line.startswith(EVENT_PREFIX):
            with contextlib.suppress(json.JSONDecodeError):
                events.put(json.loads(line[len(EVENT_PREFIX) :]))


def _exit_status(returncode: int, log_tail: str) -> str:
    """A child killed by SIGKILL without a record was most likely the OOM killer."""
    text = log_tail.lower()
    if returncode == -signal.SIGKILL or "out of memory" in text or "memoryerror" in text:
        return "oom"
    return "failed"


def run_job(job: CellJob, out_dir: Path, timeout_s: float | None, on_event: OnEvent) -> Record:
    """Run one cell in a child process; always returns a record."""
    safe = job.cell_id.replace("/", "_").replace(",", "_").replace("=", "-")
    job_file = out_dir / "logs" / f"{safe}.job.json"
    record_file = out_dir / "logs" / f"{safe}.record.json"
    log_file = out_dir / "logs" / f"{safe}.log"
    job = dataclasses.replace(job, record_file=str(record_file))
    job_file.write_text(job.to_json())
    record_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    started = time.perf_counter()
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    with open(log_file, "w") as log:
        # A session of its own: Ctrl-C reaches only the runner, which stops the child.
        proc = subprocess.Popen(
            [sys.executable, "-m", "kdbench.runner.worker", str(job_file)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            start_new_session=True,
        )
        reader = threading.Thread(target=_reader, args=(proc.stdout, events), daemon=True)
        reader.start()
        timed_out = False
        try:
            while proc.poll() is None:
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
    if record_file.is_file() and not timed_out:
        record = read_record_file(record_file)
        record_file.unlink()
        return record
    record = base_record(job, load_spec(job.spec_path, job.overrides))
    duration = time.perf_counter() - started
    if timed_out:
        return record.model_copy(
            update={
                "status": "timeout",
                "error": f"the cell ran past its time limit of {timeout_s:g} s and was stopped",
                "duration_s": duration,
            }
        )
    lines = log_file.read_text(errors="replace").strip().splitlines()
    tail = lines[-1] if lines else "(no output)"
    return record.model_copy(
        update={
            "status": _exit_status(proc.returncode, "\n".join(lines[-20:])),
            "error": f"the cell's process exited with code {proc.returncode}: {tail[:500]}",
            "duration_s": duration,
        }
    )


def execute(run: Run, on_event: OnEvent, on_record: Callable[[Record], None]) -> None:
    """Run every pending cell; each record is on disk before the next cell starts."""
    for job in run.pending():
        record = run_job(job, run.out_dir, run.cell_timeout_s, on_event)
        append_record(run.results, record)
        on_record(record)
