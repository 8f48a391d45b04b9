"""``kdbench run``: run specs or a matrix, one process per cell, and print the table."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from kdbench.backends.base import check_backend, installed_backends
from kdbench.commands.common import console, err_console, warn
from kdbench.commands.show import print_table
from kdbench.errors import KdbenchError
from kdbench.records.schema import Record
from kdbench.runner.execute import execute
from kdbench.runner.folder import default_out_dir, load_run, plan_run
from kdbench.runner.matrix import DEFAULT_MATRIX, adhoc_matrix, load_matrix
from kdbench.settings import add_setting_flags, settings_from_args


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="run specs on backends and print the table")
    p.add_argument(
        "specs", nargs="*", help="spec names or .toml files (default: the 'default' matrix)"
    )
    p.add_argument("--matrix", help="a named matrix (kdbench list) or a matrix .toml file")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="run the cells of RUN_DIR that have no record"
    )
    p.add_argument("--teacher-cache", help="folder of trained teachers shared across runs")
    p.add_argument("--backend", help="comma-separated backends (default: every installed one)")
    p.add_argument("--seeds", type=int, help="number of seeds, 0..N-1 (default: the spec's)")
    p.add_argument("--out", help="run folder (default: results/runs/<timestamp>)")
    add_setting_flags(p)
    p.add_argument("--data-dir", help="folder with the dataset files (mnist, cifar...)")
    p.add_argument(
        "--cell-timeout",
        type=float,
        help="seconds before a cell is stopped (default: the matrix's)",
    )
    return p


def _backends(value: str | None) -> list[str]:
    if value is None:
        names = installed_backends()
        if not names:
            raise KdbenchError(
                "no backend is installed; install one with pip install 'kdbench[torch]' "
                "(or [tensorflow], [jax], [all])"
            )
        return names
    names = [n.strip() for n in value.split(",") if n.strip()]
    for name in names:
        check_backend(name)
    return names


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop the run cleanly, whatever the parent process
    left in place (a parent may hand down SIGINT ignored)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)


def run(args: argparse.Namespace) -> int:
    if args.seeds is not None and args.seeds < 1:
        raise KdbenchError(f"--seeds must be at least 1 (got {args.seeds})")
    if args.resume:
        if args.specs or args.matrix:
            raise KdbenchError(
                "--resume takes its cells from the run folder; give no specs or --matrix"
            )
        run = load_run(Path(args.resume))
    else:
        if args.specs and args.matrix:
            raise KdbenchError("give specs or --matrix, not both")
        matrix = (
            adhoc_matrix(args.specs) if args.specs else load_matrix(args.matrix or DEFAULT_MATRIX)
        )
        if args.backend or not matrix.backends:
            backends = _backends(args.backend)
        else:
            backends = matrix.backends
            for name in backends:
                check_backend(name)
        out = Path(args.out) if args.out else default_out_dir()
        if (out / "results.jsonl").exists():
            raise KdbenchError(
                f"{out} already holds a run (results.jsonl); choose another --out or --resume {out}"
            )
        run = plan_run(
            matrix,
            backends,
            args.seeds,
            settings_from_args(args),
            out,
            args.data_dir,
            args.cell_timeout,
            Path(args.teacher_cache) if args.teacher_cache else None,
            sys.argv,
        )
    pending = run.pending()
    _stop_on_signals()
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cores:
        warn(
            f"the machine is busy (load average {load:.1f} on {cores} cores); "
            "timings will be skewed, PyTorch's most (its OpenMP threads wait for busy cores)"
        )
    resumed = f" (resuming: {len(run.jobs) - len(pending)} done before)" if args.resume else ""
    console.print(
        f"kdbench: {len(pending)} of {len(run.jobs)} cells to run{resumed} -> {run.out_dir}"
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
        overall = progress.add_task("cells", total=len(pending))
        current = progress.add_task("", total=None)

        def on_event(job: Any, event: dict[str, Any]) -> None:
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

        try:
            execute(run, on_event, on_record)
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
    console.print(f"{len(pending)} cells in {wall:.1f} s; records: {run.results}")
    return 1 if failed else 0
