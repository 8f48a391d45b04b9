"""A run folder: the job list saved before the first cell starts, and its records.

The job list (run.json) is written first, so `--resume` can run exactly the
cells that have no record yet, and Ctrl-C loses nothing that had finished.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.records.store import RESULTS_FILE, read_records
from kdbench.runner.job import CellJob
from kdbench.runner.matrix import Matrix
from kdbench.settings import resolve_settings

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
        return {r.cell_id for r in read_records(self.results)}

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

    Settings are resolved once per cell: the spec's, then the matrix axis's,
    then the command line's. Order: spec, settings, seed, then backend
    innermost, so the frameworks take turns and slow drift of the machine
    spreads over all of them.
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
        settings = resolve_settings(measure.settings().as_dict(), combo.runtime, cli_settings)
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
        "jobs": [job.as_dict() for job in jobs],
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
        jobs = [CellJob.from_dict(job) for job in manifest["jobs"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise KdbenchError(f"{path}: not a kdbench run manifest ({exc})") from None
    return Run(out_dir, manifest["run_id"], jobs, manifest.get("cell_timeout_s"))
