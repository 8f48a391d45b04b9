"""Runs cells, one process each, and appends their records as they finish."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from backends.base import Settings
from benchmarks.cell import EVENT_PREFIX, CellJob, base_record
from benchmarks.records import RESULTS_FILE, append_record
from benchmarks.spec import LoadedSpec

OnEvent = Callable[[CellJob, dict[str, Any]], None]


@dataclass
class RunPlan:
    specs: list[LoadedSpec]
    backends: list[str]
    seeds: list[int]
    settings: dict[str, Settings]  # spec name -> settings
    out_dir: Path
    data_dir: str | None = None
    cell_timeout_s: float | None = None
    run_id: str = field(default_factory=lambda: datetime.now().strftime("%Y%m%d-%H%M%S"))

    def jobs(self) -> list[CellJob]:
        """Seeds outer, backends inner: the frameworks take turns, so slow drift
        of the machine spreads over all of them rather than one."""
        jobs = []
        for loaded in self.specs:
            for seed in self.seeds:
                for backend in self.backends:
                    job = CellJob(
                        spec_path=str(self.out_dir / "specs" / loaded.path.name),
                        backend=backend,
                        seed=seed,
                        settings=self.settings[loaded.name],
                        run_id=self.run_id,
                        record_file="",
                        data_dir=self.data_dir,
                    )
                    jobs.append(job)
        return jobs


def default_out_dir() -> Path:
    return Path("results") / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S")


def prepare_run_dir(plan: RunPlan, argv: list[str]) -> None:
    """The run folder holds copies of the specs, so a run can be re-read later."""
    (plan.out_dir / "specs").mkdir(parents=True, exist_ok=True)
    (plan.out_dir / "logs").mkdir(exist_ok=True)
    for loaded in plan.specs:
        shutil.copyfile(loaded.path, plan.out_dir / "specs" / loaded.path.name)
    manifest = {
        "run_id": plan.run_id,
        "argv": argv,
        "specs": {s.name: {"path": str(s.path), "hash": s.content_hash} for s in plan.specs},
        "backends": plan.backends,
        "seeds": plan.seeds,
        "started_at": datetime.now().isoformat(timespec="seconds"),
    }
    (plan.out_dir / "run.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _reader(stream: Any, events: queue.Queue[dict[str, Any]]) -> None:
    for line in stream:
        if line.startswith(EVENT_PREFIX):
            try:
                events.put(json.loads(line[len(EVENT_PREFIX) :]))
            except json.JSONDecodeError:
                pass


def run_job(
    job: CellJob, loaded: LoadedSpec, out_dir: Path, timeout_s: float | None, on_event: OnEvent
) -> dict[str, Any]:
    """Run one cell in a child process; always returns a record."""
    safe = job.cell_id.replace("/", "_")
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
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.cell", str(job_file)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
        reader = threading.Thread(target=_reader, args=(proc.stdout, events), daemon=True)
        reader.start()
        timed_out = False
        try:
            while proc.poll() is None:
                try:
                    on_event(job, events.get(timeout=0.2))
                except queue.Empty:
                    pass
                if timeout_s is not None and time.perf_counter() - started > timeout_s:
                    timed_out = True
                    proc.kill()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.wait()
        reader.join(timeout=5)
    if record_file.is_file() and not timed_out:
        record = json.loads(record_file.read_text())
        record_file.unlink()
        return record
    record = base_record(job, loaded)
    record["duration_s"] = time.perf_counter() - started
    if timed_out:
        record["status"] = "timeout"
        record["error"] = f"the cell ran past its time limit of {timeout_s:g} s and was stopped"
    else:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        record["error"] = f"the cell's process exited with code {proc.returncode}: {tail[0][:500]}"
    return record


def execute(plan: RunPlan, on_event: OnEvent, on_record: Callable[[dict[str, Any]], None]) -> Path:
    """Run every cell in order; each record is on disk before the next cell starts."""
    results = plan.out_dir / RESULTS_FILE
    by_path = {str(plan.out_dir / "specs" / s.path.name): s for s in plan.specs}
    for job in plan.jobs():
        record = run_job(job, by_path[job.spec_path], plan.out_dir, plan.cell_timeout_s, on_event)
        append_record(results, record)
        on_record(record)
    return results
