"""``kdbench run``: run specs or a matrix, one process per cell, and print the table."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from kdbench.backends.base import backend_names, check_backend, installed_backends
from kdbench.commands.common import console, err_console, warn
from kdbench.commands.show import print_table
from kdbench.errors import KdbenchError
from kdbench.records.schema import Record
from kdbench.runner.checks import check_seeds, check_timeout, train_sizes
from kdbench.runner.duet import check_duet
from kdbench.runner.environments import check_envs, check_rounds, parse_envs
from kdbench.runner.execute import STOP
from kdbench.runner.executors.dispatch import execute_on, preflight
from kdbench.runner.executors.options import EXECUTOR_KINDS, ExecutorOptions
from kdbench.runner.folder import (
    Run,
    create_run,
    default_out_dir,
    load_run,
    plan_run,
    read_manifest,
    repair,
)
from kdbench.runner.job import CellJob
from kdbench.runner.lock import RunLock
from kdbench.runner.matrix import DEFAULT_MATRIX, adhoc_matrix, load_matrix
from kdbench.settings import SETTING_NAMES, add_setting_flags, settings_from_args
from kdbench.spec import load_spec


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="run specs on backends and print the table")
    p.add_argument(
        "specs", nargs="*", help="spec names or .toml files (default: the 'default' matrix)"
    )
    p.add_argument("--matrix", help="a named matrix (kdbench list) or a matrix .toml file")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="run the cells of RUN_DIR that have no record"
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: also run again the cells that failed, ran out of memory, "
        "timed out or were killed (the newer record supersedes the older)",
    )
    p.add_argument("--teacher-cache", help="folder of trained teachers shared across runs")
    p.add_argument("--backend", help="comma-separated backends (default: every installed one)")
    p.add_argument("--seeds", type=int, help="number of seeds, 0..N-1 (default: the spec's)")
    p.add_argument(
        "--first-seed",
        type=int,
        help="skip the seeds below this one: more seeds for a study in another run folder "
        "(kdbench report merges runs)",
    )
    p.add_argument("--out", help="run folder (default: results/runs/<timestamp>)")
    p.add_argument(
        "--env",
        action="append",
        metavar="LABEL=PYTHON",
        help="run every cell in this Python interpreter's environment too, under LABEL "
        "(repeat for each: an A/B run; 'kdbench compare RUN --envs A B' compares them)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        help="run every cell this many times, the environments taking turns each round",
    )
    p.add_argument(
        "--duet",
        action="store_true",
        default=None,  # None, not False: --resume refuses what was given
        help="with --env: run the environments' cells of each round at the same time, each "
        "on its own share of the CPUs, so the machine's drift meets both sides alike",
    )
    add_setting_flags(p)
    p.add_argument("--data-dir", help="folder with the dataset files (mnist, cifar...)")
    p.add_argument(
        "--executor",
        choices=EXECUTOR_KINDS,
        help="where the cells run: local (one after another, here), ray (a Ray cluster) or "
        "slurm (jobs through submitit); options: the matrix file's [executor] table "
        "(default: the matrix's, else local)",
    )
    p.add_argument(
        "--cell-timeout",
        type=float,
        help="seconds before a cell is stopped (default: the matrix's)",
    )
    return p


def _names(value: str) -> list[str]:
    """--backend's comma-separated names."""
    return [n.strip() for n in value.split(",") if n.strip()]


def _backends(names: list[str] | None, elsewhere: bool = False) -> list[str]:
    """The backends a run names (checked installed here), or every installed one.

    elsewhere: the cells run in other environments (--env), which check_envs
    asks; here only the names are checked."""
    if names is None:
        names = installed_backends()
        if not names:
            raise KdbenchError(
                "no backend is installed; install one with pip install 'kdbench[torch]' "
                "(or [tensorflow], [jax], [all])"
            )
        return names
    for name in names:
        if elsewhere and name in backend_names():
            continue
        check_backend(name)
    return names


def _stop_on_signals() -> None:
    """Ctrl-C, SIGTERM and SIGHUP stop the run cleanly, whatever the parent
    process left in place (a parent may hand down SIGINT ignored)."""

    def interrupt(signum: int, frame: Any) -> None:
        STOP.set()  # seen by the runner's waits even if this exception is swallowed
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)


# Flags that would change what the planned cells are: --resume refuses them.
PLANNED = {
    "specs": "specs",
    "matrix": "--matrix",
    "seeds": "--seeds",
    "first_seed": "--first-seed",
    "out": "--out",
    "teacher_cache": "--teacher-cache",
    "env": "--env",
    "rounds": "--rounds",
    "duet": "--duet",
    **{name: f"--{name}" for name in SETTING_NAMES},
}


def run(args: argparse.Namespace) -> int:
    check_seeds(args.seeds)
    check_rounds(args.rounds)
    check_timeout(args.cell_timeout)
    _stop_on_signals()
    if args.resume:
        return _resume(args)
    if args.retry_failed:
        raise KdbenchError("--retry-failed goes with --resume RUN_DIR")
    if args.specs and args.matrix:
        raise KdbenchError("give specs or --matrix, not both")
    matrix = adhoc_matrix(args.specs) if args.specs else load_matrix(args.matrix or DEFAULT_MATRIX)
    envs = parse_envs(args.env)
    named = _names(args.backend) if args.backend else matrix.backends or None
    backends = _backends(named, elsewhere=bool(envs))
    plan = plan_run(
        matrix,
        backends,
        args.seeds,
        settings_from_args(args),
        args.data_dir,
        args.cell_timeout,
        Path(args.teacher_cache) if args.teacher_cache else None,
        sys.argv,
        envs,
        args.rounds,
        args.first_seed or 0,
    )
    check_envs(envs, backends)
    options = _executor(matrix.executor, args.executor)
    if args.duet:
        check_duet(plan.jobs, envs, options.kind)
        plan.manifest["duet"] = True
    preflight(options)
    plan.manifest["executor"] = options.model_dump()
    out = Path(args.out) if args.out else default_out_dir()
    with RunLock(out):
        created = create_run(plan, out)
        return _execute(created, created.pending(), options, resumed=False)


def _executor(table: ExecutorOptions | None, kind: str | None) -> ExecutorOptions:
    """The matrix's [executor] table (or run.json's), its kind replaced by --executor."""
    options = table or ExecutorOptions()
    return options.model_copy(update={"kind": kind}) if kind else options


def _resume(args: argparse.Namespace) -> int:
    """The cells of a run folder that have no record (or, with --retry-failed, no ok one)."""
    given = [flag for name, flag in PLANNED.items() if getattr(args, name, None) not in (None, [])]
    if given:
        raise KdbenchError(
            f"--resume runs the cells its folder planned; {', '.join(given)} would change "
            "them: start a new run for that (--backend, --data-dir, --cell-timeout and "
            "--retry-failed apply to a resume)"
        )
    folder = Path(args.resume)
    if not folder.is_dir():
        raise KdbenchError(f"--resume {folder}: no such run folder")
    with RunLock(folder):
        resumed = load_run(folder)
        for note in repair(resumed):
            warn(note)
        jobs = resumed.pending(args.retry_failed)
        if args.backend:
            names = _backends(_names(args.backend))
            jobs = [job for job in jobs if job.backend in names]
        if args.cell_timeout is not None:
            resumed.cell_timeout_s = args.cell_timeout
        if args.data_dir:
            jobs = _with_data_dir(resumed, jobs, args.data_dir)
        options = _executor(_saved_executor(resumed), args.executor)
        preflight(options)
        return _execute(resumed, jobs, options, resumed=True)


def _saved_executor(run: Run) -> ExecutorOptions | None:
    """The executor a run was started with (None: a run made before executors)."""
    saved = read_manifest(run).get("executor")
    try:
        return ExecutorOptions.model_validate(saved) if saved else None
    except ValidationError as exc:
        where = ".".join(str(p) for p in exc.errors()[0]["loc"])
        raise KdbenchError(
            f"{run.out_dir}/run.json: executor.{where}: {exc.errors()[0]['msg']}; "
            "resume with --executor local|ray|slurm"
        ) from None


def _with_data_dir(run: Run, jobs: list[CellJob], data_dir: str) -> list[CellJob]:
    """The jobs reading their data from data_dir, checked before any cell starts."""
    folder = str(Path(data_dir).resolve())
    specs = {(job.spec_path, str(job.overrides)): job for job in jobs}
    loaded = [load_spec(str(run.out_dir / j.spec_path), j.overrides) for j in specs.values()]
    train_sizes(loaded, folder)
    return [dataclasses.replace(job, data_dir=folder) for job in jobs]


def _execute(run: Run, jobs: list[CellJob], options: ExecutorOptions, resumed: bool) -> int:
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cores:
        warn(
            f"the machine is busy (load average {load:.1f} on {cores} cores); "
            "timings will be skewed, PyTorch's most (its OpenMP threads wait for busy cores)"
        )
    before = f" (resuming: {len(run.jobs) - len(run.pending())} done before)" if resumed else ""
    where = f" on {options.kind}" if options.kind != "local" else ""
    console.print(
        f"kdbench: {len(jobs)} of {len(run.jobs)} cells to run{where}{before} -> {run.out_dir}"
    )
    started = time.perf_counter()
    failed = 0
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        overall = progress.add_task("cells", total=len(jobs))
        current = progress.add_task("", total=None)

        def on_event(job: Any, event: dict[str, Any]) -> None:
            if "warning" in event:
                progress.console.print(
                    f"{job.cell_id}: warning: {event['warning']}", markup=False, highlight=False
                )
                return
            text = f"{job.cell_id}: {event.get('phase', '')}"
            if "epoch" in event:
                text += f" epoch {event['epoch']}/{event['epochs']}"
            if event.get("cached"):
                text += " (from the teacher cache)"
            progress.update(current, description=text)

        def on_record(record: Record) -> None:
            nonlocal failed
            if not record.ok:
                failed += 1
                progress.console.print(
                    f"{record.cell_id}: {record.status}: {record.error}",
                    style="red",
                    markup=False,
                    highlight=False,
                )
            progress.advance(overall)

        def on_started(in_flight: int) -> None:
            progress.update(current, description=f"{in_flight} cells running on {options.kind}")

        try:
            execute_on(options, run, jobs, on_event, on_record, on_started)
        except KeyboardInterrupt:
            done = len(run.jobs) - len(run.pending())
            err_console.print(
                f"kdbench: interrupted; {done} of {len(run.jobs)} cells are saved in {run.results}; "
                f"continue with: kdbench run --resume {run.out_dir}",
                markup=False,
                highlight=False,
            )
            return 130
    wall = time.perf_counter() - started
    print_table([str(run.out_dir)], f"kdbench run {run.run_id}")
    console.print(f"{len(jobs)} cells in {wall:.1f} s; records: {run.results}")
    return 1 if failed else 0
