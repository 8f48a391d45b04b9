"""One benchmark cell in its own process: ``python -m kdbench.cell JOB.json``.

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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kdbench.backends.base import Settings
from kdbench.environment import host_environment
from kdbench.records import SCHEMA_VERSION
from kdbench.spec import LoadedSpec, load_spec

EVENT_PREFIX = "@kdbench "


@dataclass(frozen=True)
class CellJob:
    spec_path: str
    backend: str
    seed: int
    settings: Settings
    run_id: str
    record_file: str = ""
    data_dir: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    teacher_cache: str | None = None

    @property
    def cell_id(self) -> str:
        """Unique within a run: what --resume matches finished cells by."""
        base = f"{Path(self.spec_path).stem}/{self.backend}/seed{self.seed}"
        return f"{base}/{self.label}" if self.label else base

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "settings": self.settings.as_dict()})

    @classmethod
    def from_json(cls, text: str) -> CellJob:
        raw = json.loads(text)
        return cls(**{**raw, "settings": Settings(**raw["settings"])})


def base_record(job: CellJob, loaded: LoadedSpec) -> dict[str, Any]:
    """The fields every record has, whatever became of the cell."""
    spec = loaded.spec
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": job.run_id,
        "cell_id": job.cell_id,
        "spec": {"name": spec.name, "hash": loaded.content_hash, "path": str(loaded.path)},
        "backend": job.backend,
        "seed": job.seed,
        "label": job.label,
        "overrides": job.overrides,
        "settings": {
            **job.settings.as_dict(),
            "teacher_batch_size": spec.teacher.batch_size,
            "student_batch_size": spec.student.batch_size,
            "eval_batch_size": spec.measure.eval_batch_size,
            "warmup_steps": spec.measure.warmup_steps,
            "method": spec.distill.method,
            "temperature": spec.distill.temperature,
            "alpha": spec.distill.alpha,
        },
        "host": host_environment(),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "failed",
        "error": None,
    }


OOM_MARKERS = (
    "out of memory",
    "resource_exhausted",
    "oom when allocating",
    "cuda_error_out_of_memory",
)


def failure_status(exc: BaseException) -> str:
    """'oom' for the ways each framework reports exhausted memory, else 'failed'."""
    text = f"{type(exc).__name__}: {exc}".lower()
    if isinstance(exc, MemoryError) or any(marker in text for marker in OOM_MARKERS):
        return "oom"
    return "failed"


def emit(event: dict[str, Any]) -> None:
    print(EVENT_PREFIX + json.dumps(event), flush=True)


def main(argv: list[str] | None = None) -> int:
    from kdbench.harness import run_cell

    args = sys.argv[1:] if argv is None else argv
    job = CellJob.from_json(Path(args[0]).read_text())
    started = time.perf_counter()
    loaded = load_spec(job.spec_path, job.overrides)
    record = base_record(job, loaded)
    cache = Path(job.teacher_cache) if job.teacher_cache else None
    try:
        result = run_cell(loaded, job.backend, job.seed, job.settings, job.data_dir, emit, cache)
    except Exception as exc:  # noqa: BLE001 - any failure becomes the cell's record
        record["status"] = failure_status(exc)
        record["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:2000]
        record["traceback"] = traceback.format_exc()[-8000:]
        status = 1
    else:
        env = result.pop("environment")
        record.update(result)
        record["framework"] = env.pop("framework")
        record["framework_version"] = env.pop("framework_version")
        record["device"] = env.pop("device")
        record["settings"]["compile_mode"] = env.get("compile_mode")
        record["environment"] = env
        record["status"] = "ok"
        status = 0
    record["duration_s"] = time.perf_counter() - started
    record["host"]["loadavg_end"] = list(os.getloadavg())
    tmp = Path(job.record_file + ".tmp")
    tmp.write_text(json.dumps(record, allow_nan=True, default=str))
    os.replace(tmp, job.record_file)
    return status


if __name__ == "__main__":
    sys.exit(main())
