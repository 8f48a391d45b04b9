"""The ``kdbench`` command line: run, show, list, validate, report, compare."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from kdbench.architectures import ARCHITECTURES
from kdbench.backends.base import backend_names, check_backend, installed_backends, is_installed
from kdbench.errors import KdbenchError
from kdbench.records import load_runs
from kdbench.spec import (
    COMPILE_MODES,
    METHODS,
    PRECISIONS,
    builtin_specs,
    load_spec,
)
from kdbench.tables import rich_table, summary

# Wide enough for the side-by-side table when stdout is a file or a pipe.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, soft_wrap=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise KdbenchError(f"{message} (see 'kdbench {self.prog.split()[-1]} --help')")


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


def cmd_run(args: argparse.Namespace) -> int:
    from kdbench.matrix import DEFAULT_MATRIX, adhoc_matrix, load_matrix
    from kdbench.runner import default_out_dir, execute, load_run, plan_run

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
        cli_settings = {
            "compile": args.compile,
            "precision": args.precision,
            "threads": args.threads,
            "deterministic": True if args.deterministic else None,
            "device": args.device,
        }
        run = plan_run(
            matrix,
            backends,
            args.seeds,
            cli_settings,
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
        err_console.print(
            f"kdbench: warning: the machine is busy (load average {load:.1f} on {cores} cores); "
            "timings will be skewed, PyTorch's most (its OpenMP threads wait for busy cores)",
            markup=False,
            highlight=False,
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

        def on_record(record: dict[str, Any]) -> None:
            nonlocal failed
            if record["status"] != "ok":
                failed += 1
                progress.console.print(
                    f"{record['cell_id']}: {record['status']}: {record['error']}",
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
    _print_table([str(run.out_dir)], f"kdbench run {run.run_id}")
    console.print(f"{len(pending)} cells in {wall:.1f} s; records: {run.results}")
    return 1 if failed else 0


def _print_table(runs: list[str], title: str) -> None:
    frame = load_runs(runs)
    if frame.empty:
        console.print("no records")
        return
    console.print(rich_table(summary(frame), title))


def cmd_show(args: argparse.Namespace) -> int:
    for run in args.runs:
        if not Path(run).exists():
            raise KdbenchError(f"run folder {run} does not exist")
    _print_table(args.runs, " + ".join(args.runs))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from kdbench.datasets import DATASETS, FILE_DATASETS

    console.print("[bold]specs[/bold] (benchmarks/specs, installed as kdbench.specs)")
    for name, path in builtin_specs().items():
        try:
            description = load_spec(str(path)).spec.description
        except KdbenchError as exc:
            description = f"INVALID: {exc}"
        console.print(f"  {name:<16} {description}")
    from kdbench.matrix import builtin_matrices, load_matrix

    console.print("[bold]matrices[/bold] (benchmarks/matrices, installed as kdbench.matrices)")
    for name, path in builtin_matrices().items():
        try:
            description = load_matrix(str(path)).description
        except KdbenchError as exc:
            description = f"INVALID: {exc}"
        console.print(f"  {name:<16} {description}", markup=False)
    console.print("[bold]datasets[/bold]")
    for name in DATASETS:
        where = "needs a folder (data.path or --data-dir)" if name in FILE_DATASETS else "built in"
        console.print(f"  {name:<16} {where}")
    console.print("[bold]architectures[/bold]")
    for name, (description, _) in ARCHITECTURES.items():
        console.print(f"  {name:<16} {description}")
    console.print("[bold]methods[/bold]")
    for name in METHODS:
        console.print(f"  {name}")
    console.print(f"[bold]compile modes[/bold]  {', '.join(COMPILE_MODES)}")
    console.print(f"[bold]precisions[/bold]     {', '.join(PRECISIONS)}")
    console.print("[bold]backends[/bold]")
    for name in backend_names():
        state = "installed" if is_installed(name) else "not installed"
        console.print(f"  {name:<16} {state}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    bad = 0
    for name in args.specs:
        try:
            loaded = load_spec(name)
        except KdbenchError as exc:
            err_console.print(
                f"kdbench: error: {exc}", highlight=False, soft_wrap=True, markup=False
            )
            bad += 1
        else:
            console.print(f"{loaded.path}: ok ({loaded.name}, hash {loaded.content_hash})")
    return 2 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kdbench", description="Knowledge-distillation benchmarks across frameworks."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run specs on backends and print the table")
    run.add_argument(
        "specs", nargs="*", help="spec names or .toml files (default: the 'default' matrix)"
    )
    run.add_argument("--matrix", help="a named matrix (kdbench list) or a matrix .toml file")
    run.add_argument(
        "--resume", metavar="RUN_DIR", help="run the cells of RUN_DIR that have no record"
    )
    run.add_argument("--teacher-cache", help="folder of trained teachers shared across runs")
    run.add_argument("--backend", help="comma-separated backends (default: every installed one)")
    run.add_argument("--seeds", type=int, help="number of seeds, 0..N-1 (default: the spec's)")
    run.add_argument("--out", help="run folder (default: results/runs/<timestamp>)")
    run.add_argument("--compile", choices=COMPILE_MODES, help="override the spec's compile mode")
    run.add_argument("--precision", choices=PRECISIONS, help="override the spec's precision")
    run.add_argument("--device", choices=("auto", "cpu", "gpu"), help="override the spec's device")
    run.add_argument("--threads", type=int, help="intra-op threads for every framework (0: all)")
    run.add_argument(
        "--deterministic", action="store_true", help="each framework's deterministic mode"
    )
    run.add_argument("--data-dir", help="folder with the dataset files (mnist, cifar...)")
    run.add_argument(
        "--cell-timeout",
        type=float,
        help="seconds before a cell is stopped (default: the matrix's)",
    )
    run.set_defaults(func=cmd_run)

    show = sub.add_parser("show", help="the table of finished runs")
    show.add_argument("runs", nargs="+", help="run folders")
    show.set_defaults(func=cmd_show)

    lst = sub.add_parser("list", help="specs, datasets, architectures, methods, backends")
    lst.set_defaults(func=cmd_list)

    val = sub.add_parser("validate", help="check spec files without running them")
    val.add_argument("specs", nargs="+", help="spec names or .toml files")
    val.set_defaults(func=cmd_validate)

    from kdbench import compare, report

    report.add_parser(sub)
    compare.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except KdbenchError as exc:
        err_console.print(f"kdbench: error: {exc}", highlight=False, soft_wrap=True, markup=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
