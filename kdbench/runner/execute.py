"""Runs a matrix of cells, one process each, and appends records as they finish.

A cell that crashes, runs out of memory or runs past its time limit becomes
a record with that status; the matrix goes on. The job list is saved in the
run folder first, so `--resume` can run exactly the cells that have no
record yet, and Ctrl-C loses nothing that had finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kdbench.backends.base import Settings
from kdbench.cell import EVENT_PREFIX, CellJob, base_record
from kdbench.errors import KdbenchError
from kdbench.matrix import Matrix
from kdbench.records import RESULTS_FILE, append_record, read_records
from kdbench.spec import load_spec

OnEvent = Callable[[CellJob, dict[str, Any]], None]
RUN_FILE = "run.json"


@dataclass
class Run:
    """A run folder and the jobs it holds."""

    out_dir: Path
    run_id: str
    jobs: list[CellJob]
    cell_timeout_s: float | None

    @property
    def results(self) -> Path:
        return self.out_dir / RESULTS_FILE

    def finished(self) -> set[str]:
        if not self.results.exists():
            return set()
        return {r["cell_id"] for r in read_records(self.results)}

    def pending(self) -> list[CellJob]:
        done = self.finished()
        return [job for job in self.jobs if job.cell_id not in done]


def default_out_dir() -> Path:
    return Path("results") / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S")


def plan_run(
    matrix: Matrix,
    backends: list[str],
    seeds: int | None,
    cli_settings: dict[str, Any],
    out_dir: Path,
    data_dir: str | None,
    cell_timeout_s: float | None,
    teacher_cache: Path | None,
    argv: list[str],
) -> Run:
    """Validate every cell, copy the specs into the run folder, save the job list.

    Order: spec, settings, seed, then backend innermost, so the frameworks take
    turns and slow drift of the machine spreads over all of them.
    """
    expanded = matrix.expand()
    (out_dir / "specs").mkdir(parents=True, exist_ok=True)
    (out_dir / "logs").mkdir(exist_ok=True)
    run_id = out_dir.name
    cache = teacher_cache or out_dir / "teachers"
    jobs: list[CellJob] = []
    for loaded, combo in expanded:
        copy = out_dir / "specs" / loaded.path.name
        if not copy.exists():
            shutil.copyfile(loaded.path, copy)
        measure = loaded.spec.measure
        chosen = {
            "compile": measure.compile,
            "precision": measure.precision,
            "threads": measure.threads,
            "deterministic": measure.deterministic,
            "device": measure.device,
            **combo.runtime,
            **{k: v for k, v in cli_settings.items() if v is not None},
        }
        chosen["threads"] = chosen["threads"] or os.cpu_count() or 1
        settings = Settings(**chosen)
        for seed in range(seeds or matrix.seeds or measure.seeds):
            for backend in backends:
                jobs.append(
                    CellJob(
                        spec_path=str(copy),
                        backend=backend,
                        seed=seed,
                        settings=settings,
                        run_id=run_id,
                        data_dir=data_dir,
                        overrides=combo.spec_overrides,
                        label=combo.label,
                        teacher_cache=str(cache),
                    )
                )
    ids = [job.cell_id for job in jobs]
    if len(set(ids)) != len(ids):
        raise KdbenchError(
            "two cells of this matrix have the same id; give each spec a distinct file name"
        )
    timeout = cell_timeout_s if cell_timeout_s is not None else matrix.cell_timeout_s
    manifest = {
        "run_id": run_id,
        "argv": argv,
        "matrix": matrix.name,
        "backends": backends,
        "cell_timeout_s": timeout,
        "started_at": datetime.now().isoformat(timespec="seconds"),
        "jobs": [{**asdict(job), "settings": job.settings.as_dict()} for job in jobs],
    }
    (out_dir / RUN_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    return Run(out_dir, run_id, jobs, timeout)


def load_run(out_dir: Path) -> Run:
    """A run folder made by plan_run, for --resume."""
    path = out_dir / RUN_FILE
    if not path.is_file():
        raise KdbenchError(
            f"{out_dir}: no {RUN_FILE} here; --resume takes a folder made by 'kdbench run'"
        )
    try:
        manifest = json.loads(path.read_text())
        jobs = [CellJob.from_json(json.dumps(job)) for job in manifest["jobs"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise KdbenchError(f"{path}: not a kdbench run manifest ({exc})") from None
    return Run(out_dir, manifest["run_id"], jobs, manifest.get("cell_timeout_s"))


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


def run_job(
    job: CellJob, out_dir: Path, timeout_s: float | None, on_event: OnEvent
) -> dict[str, Any]:
    """Run one cell in a child process; always returns a record."""
    safe = job.cell_id.replace("/", "_").replace(",", "_").replace("=", "-")
    job_file = out_dir / "logs" / f"{safe}.job.json"
    record_file = out_dir / "logs" / f"{safe}.record.json"
    log_file = out_dir / "logs" / f"{safe}.log"
    job = CellJob(**{**job.__dict__, "record_file": str(record_file)})
    job_file.write_text(job.to_json())
    record_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    started = time.perf_counter()
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    with open(log_file, "w") as log:
        # A session of its own: Ctrl-C reaches only the runner, which stops the child.
        proc = subprocess.Popen(
            [sys.executable, "-m", "kdbench.cell", str(job_file)],
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
        record = json.loads(record_file.read_text())
        record_file.unlink()
        return record
    record = base_record(job, load_spec(job.spec_path, job.overrides))
    record["duration_s"] = time.perf_counter() - started
    if timed_out:
        record["status"] = "timeout"
        record["error"] = f"the cell ran past its time limit of {timeout_s:g} s and was stopped"
        return record
    lines = log_file.read_text(errors="replace").strip().splitlines()
    tail = lines[-1] if lines else "(no output)"
    record["status"] = _exit_status(proc.returncode, "\n".join(lines[-20:]))
    record["error"] = f"the cell's process exited with code {proc.returncode}: {tail[:500]}"
    return record


def execute(run: Run, on_event: OnEvent, on_record: Callable[[dict[str, Any]], None]) -> None:
    """Run every pending cell; each record is on disk before the next cell starts."""
    for job in run.pending():
        record = run_job(job, run.out_dir, run.cell_timeout_s, on_event)
        append_record(run.results, record)
        on_record(record)
