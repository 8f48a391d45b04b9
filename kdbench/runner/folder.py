"""A run folder: the job list saved before the first cell starts, and its records.

A run folder is self-contained and movable: ``run.json`` names every file in
it relative to the folder (the spec copies, the teacher cache) and records
the content hash of each cell's spec, which ``--resume`` verifies. Everything
is planned and checked in memory first; only a plan that is whole is written,
under the folder's lock, into a folder that holds no other run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.records.schema import Record
from kdbench.records.store import (
    RESULTS_FILE,
    append_record,
    latest,
    quarantine_damaged,
    read_record_file,
    read_records,
    set_aside_torn_tail,
    write_atomic,
)
from kdbench.runner.checks import check_phases, data_key, train_sizes
from kdbench.runner.job import CellJob
from kdbench.runner.lock import HOLDER_FILE, LOCK_FILE
from kdbench.runner.matrix import Matrix
from kdbench.settings import resolve_settings
from kdbench.spec import LoadedSpec, load_spec
from kdbench.toml_files import read_toml

RUN_FILE = "run.json"
MANIFEST_VERSION = 2
SPECS_DIR, LOGS_DIR, RECORDS_DIR, TEACHERS_DIR = "specs", "logs", "records", "teachers"
# What a folder may hold and still take a new run: the lock this run took.
FRESH = {LOCK_FILE, HOLDER_FILE}
NOT_DONE = ("failed", "oom", "timeout", "killed")  # what --retry-failed runs again


@dataclass
class Plan:
    """A run, checked and ready, not yet written anywhere."""

    jobs: list[CellJob]
    specs: dict[str, Path]  # spec copy name -> the file it copies
    manifest: dict[str, Any]
    cell_timeout_s: float | None


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

    @property
    def records_dir(self) -> Path:
        return self.out_dir / RECORDS_DIR

    def records(self) -> list[Record]:
        return read_records(self.results) if self.results.exists() else []

    def pending(self, retry_failed: bool = False) -> list[CellJob]:
        """Cells without a record; with retry_failed also those whose latest
        attempt failed, ran out of memory, timed out or was killed."""
        last = {r.cell_id: r for r in latest(self.records())}
        return [
            job
            for job in self.jobs
            if job.cell_id not in last or (retry_failed and last[job.cell_id].status in NOT_DONE)
        ]

    def resolved(self, job: CellJob) -> CellJob:
        """The job with its paths made absolute, for the cell's process."""
        return replace(
            job,
            spec_path=str(self.out_dir / job.spec_path),
            teacher_cache=str(self.out_dir / job.teacher_cache) if job.teacher_cache else None,
        )


def default_out_dir() -> Path:
    return Path("results") / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S")


def plan_run(
    matrix: Matrix,
    backends: list[str],
    seeds: int | None,
    cli_settings: dict[str, Any],
    data_dir: str | None,
    cell_timeout_s: float | None,
    teacher_cache: Path | None,
    argv: list[str],
    envs: dict[str, str] | None = None,
    rounds: int | None = None,
    first_seed: int = 0,
) -> Plan:
    """Validate every cell and the data it needs; nothing is written.

    Settings are resolved once per cell: the spec's, then the matrix axis's,
    then the command line's. Order: spec, settings, seed, round, environment,
    then backend innermost, so the frameworks take turns and slow drift of the
    machine spreads over all of them. The environments of an A/B run (envs:
    label -> interpreter) take turns round by round, in the order A B, B A, A B
    ... so that neither always runs first after the other.
    """
    expanded = matrix.expand()
    specs: dict[str, Path] = {}
    for loaded, _ in expanded:
        name = loaded.path.name
        if specs.setdefault(name, loaded.path).resolve() != loaded.path.resolve():
            raise KdbenchError(
                f"two specs of this run are both named {name} ({specs[name]} and "
                f"{loaded.path}); give each spec a distinct file name"
            )
    sizes = train_sizes([loaded for loaded, _ in expanded], data_dir)
    for loaded, combo in expanded:
        where = f"{loaded.path}" + (f" ({combo.label})" if combo.label else "")
        check_phases(loaded, sizes[data_key(loaded, data_dir)], where)
    cache = str(teacher_cache.resolve()) if teacher_cache else TEACHERS_DIR
    data = str(Path(data_dir).resolve()) if data_dir else None
    jobs: list[CellJob] = []
    for loaded, combo in expanded:
        measure = loaded.spec.measure
        settings = resolve_settings(measure.settings().as_dict(), combo.runtime, cli_settings)
        count = seeds or matrix.seeds or measure.seeds
        if not 0 <= first_seed < count:
            raise KdbenchError(
                f"--first-seed {first_seed} leaves no seed of {loaded.path.name}: its seeds "
                f"are 0..{count - 1} (raise --seeds)"
            )
        order = _trainer_first(loaded, backends)
        for seed in range(first_seed, count):
            for round_, (env, python), backend in _turns(envs or {}, rounds, order):
                jobs.append(
                    CellJob(
                        spec_path=f"{SPECS_DIR}/{loaded.path.name}",
                        spec_hash=loaded.content_hash,
                        backend=backend,
                        seed=seed,
                        settings=settings,
                        run_id="",
                        data_dir=data,
                        overrides=combo.spec_overrides,
                        label=combo.label,
                        teacher_cache=_cache_for(cache, env, round_),
                        env=env,
                        python=python,
                        round=round_,
                    )
                )
    ids = [job.cell_id for job in jobs]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise KdbenchError(f"the run would hold cell {twice[0]} twice; name each spec once")
    timeout = cell_timeout_s if cell_timeout_s is not None else matrix.cell_timeout_s
    manifest = {
        "kdbench_run": MANIFEST_VERSION,
        "argv": argv,
        "matrix": matrix.name,
        "backends": backends,
        "cell_timeout_s": timeout,
        "envs": envs or {},
        "rounds": rounds,
        "executor": {"kind": "local"},  # the run command sets the one it uses
    }
    return Plan(jobs, specs, manifest, timeout)


def _cache_for(cache: str, env: str, round_: int | None) -> str:
    """Each environment and round trains and times its own teachers: a teacher
    from another environment (another framework version) would be its numbers,
    not this one's, and a cached teacher's phase is not timed again."""
    parts = (
        [cache]
        + ([f"env={env}"] if env else [])
        + ([f"round{round_}"] if round_ is not None else [])
    )
    return "/".join(parts)


def _turns(
    envs: dict[str, str], rounds: int | None, backends: list[str]
) -> list[tuple[int | None, tuple[str, str], str]]:
    """(round, (env label, interpreter), backend) in the order the cells run."""
    order = list(envs.items()) or [("", "")]
    out = []
    for round_ in range(rounds or 1):
        turn = order if round_ % 2 == 0 else order[::-1]
        out += [(None if rounds is None else round_, env, b) for env in turn for b in backends]
    return out


def _trainer_first(loaded: LoadedSpec, backends: list[str]) -> list[str]:
    """The backends of a spec's cells in run order: with teacher.shared_from, the
    backend that trains the teacher goes first, and it must be in the run."""
    trainer = loaded.spec.teacher.shared_from
    if trainer is None:
        return list(backends)
    if trainer not in backends:
        raise KdbenchError(
            f"{loaded.path}: teacher.shared_from = {trainer!r}, but this run has no {trainer} "
            f"cells (backends: {', '.join(backends)}); add it to --backend or load the teacher "
            "from a file (teacher.checkpoint)"
        )
    return [trainer, *(b for b in backends if b != trainer)]


def _copy_checkpoints(plan: Plan, out_dir: Path) -> None:
    """A teacher checkpoint named by a relative path travels with its spec copy,
    so the run folder holds everything its cells load."""
    for source in plan.specs.values():
        raw = read_toml(source)
        relative = (raw.get("teacher") or {}).get("checkpoint")
        if not isinstance(relative, str) or Path(relative).is_absolute():
            continue
        target = (out_dir / SPECS_DIR / relative).resolve()
        if not target.is_relative_to((out_dir / SPECS_DIR).resolve()):
            raise KdbenchError(
                f"{source}: teacher.checkpoint {relative!r} leaves the spec's folder; "
                "give an absolute path or a path below the spec's folder"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.parent / relative, target)


def create_run(plan: Plan, out_dir: Path) -> Run:
    """Write a plan into an empty folder (the caller holds its lock, so the folder exists)."""
    present = {p.name for p in out_dir.iterdir()} - FRESH
    if RUN_FILE in present or RESULTS_FILE in present:
        raise KdbenchError(
            f"{out_dir} already holds a run; continue it with --resume {out_dir}, "
            "or choose another --out"
        )
    if present:
        raise KdbenchError(
            f"{out_dir} is not empty ({', '.join(sorted(present)[:3])}...); a run starts in an "
            "empty or new folder: choose another --out"
        )
    run_id = out_dir.name
    try:
        for sub in (SPECS_DIR, LOGS_DIR, RECORDS_DIR):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
        for name, source in plan.specs.items():
            write_atomic(out_dir / SPECS_DIR / name, source.read_text(encoding="utf-8"))
        _copy_checkpoints(plan, out_dir)
        jobs = [replace(job, run_id=run_id) for job in plan.jobs]
        _check_copies(out_dir, jobs)
        manifest = {
            **plan.manifest,
            "run_id": run_id,
            "started_at": datetime.now().isoformat(timespec="seconds"),
            "jobs": [job.as_dict() for job in jobs],
        }
        write_atomic(out_dir / RUN_FILE, json.dumps(manifest, indent=1) + "\n")
    except OSError as exc:
        raise KdbenchError(f"cannot write the run folder {out_dir}: {exc}") from None
    return Run(out_dir, run_id, jobs, plan.cell_timeout_s)


def _check_copies(out_dir: Path, jobs: list[CellJob]) -> None:
    """Every cell's spec, as copied into the folder, has the hash it was planned with."""
    seen: dict[tuple[str, str], str] = {}
    for job in jobs:
        key = (job.spec_path, json.dumps(job.overrides, sort_keys=True))
        if key not in seen:
            seen[key] = load_spec(str(out_dir / job.spec_path), job.overrides).content_hash
        if seen[key] != job.spec_hash:
            raise KdbenchError(
                f"{out_dir / job.spec_path}: its content (hash {seen[key]}) is not the spec "
                f"this cell was planned with (hash {job.spec_hash}); the spec changed: "
                "restore it, or start a new run"
            )


def load_run(out_dir: Path) -> Run:
    """A run folder made by create_run, its specs verified against their hashes.

    For --resume: the caller holds the folder's lock.
    """
    path = out_dir / RUN_FILE
    if not path.is_file():
        raise KdbenchError(
            f"{out_dir}: no {RUN_FILE} here; --resume takes a folder made by 'kdbench run'"
        )
    try:
        manifest = json.loads(path.read_text())
        jobs = [CellJob.from_dict(job) for job in manifest["jobs"]]
        run_id = manifest["run_id"]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise KdbenchError(f"{path}: not a kdbench run manifest ({exc})") from None
    if manifest.get("kdbench_run") != MANIFEST_VERSION:
        raise KdbenchError(
            f"{path}: made by an older kdbench (no spec hashes, paths relative to where it ran); "
            "it cannot be resumed safely: start a new run"
        )
    _check_copies(out_dir, jobs)
    return Run(out_dir, run_id, jobs, manifest.get("cell_timeout_s"))


def repair(run: Run) -> list[str]:
    """Before appending (the caller holds the lock): move a torn tail and damaged
    lines aside, and merge cell records that were published but never appended
    (the runner was stopped between the two). Returns what was done."""
    notes = []
    try:
        torn = set_aside_torn_tail(run.results)
        notes += [torn] if torn else []
        notes += quarantine_damaged(run.results)
        merged = {r.attempt_id for r in run.records() if r.attempt_id}
        files = sorted(run.records_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for file in files:
            try:
                record = read_record_file(file)
            except (ValueError, KdbenchError) as exc:
                notes.append(f"{file}: unreadable cell record, left out ({exc})")
                continue
            if record.attempt_id and record.attempt_id not in merged:
                append_record(run.results, record)
                merged.add(record.attempt_id)
                notes.append(f"{file}: merged the record of {record.cell_id} into {RESULTS_FILE}")
    except OSError as exc:
        raise KdbenchError(f"cannot repair {run.results}: {exc}") from None
    return notes


def update_manifest(run: Run, key: str, value: Any) -> None:
    """Set one entry of run.json (atomically; the caller holds the folder's lock).

    Executors keep what a restarted driver must find there, such as the job
    ids of cells still running on a cluster."""
    manifest = read_manifest(run)
    manifest[key] = value
    write_atomic(run.out_dir / RUN_FILE, json.dumps(manifest, indent=1) + "\n")


def read_manifest(run: Run) -> dict[str, Any]:
    return json.loads((run.out_dir / RUN_FILE).read_text())
